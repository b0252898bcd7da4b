"""lsde-likelihood: exact log-likelihoods and bits/dim through the probability-flow ODE.

    lsde-likelihood                                                   # exact 8 Gaussians: also the true log p
    lsde-likelihood checkpoint=outputs/train/X/checkpoints/last.ckpt data=digits data.dequantize=true
    lsde-likelihood checkpoint=... data=cifar10 data.dequantize=true data.n_val=10000 n=10000 device=cuda ddp.devices=4

Samples are the first `n` of the validation set (or exact samples of the mixture). The divergence is exact up to
`exact_max_dim` dimensions, else Hutchinson's with `probes` fixed probes (standard error reported per sample).
Bits/dim: -log p / (D ln 2) + log2(levels / 2) for uniformly dequantised data in [-1, 1] (7 for 8-bit images), a
bound on the discrete data's bits/dim; without dequantisation only the continuous density is reported.
Under DDP (`ddp.devices`, or srun / torchrun) process r takes samples r, r + world, ...; rank 0 writes
`out/samples.jsonl` (one row per sample) and `out/summary.json` (out: outputs/likelihood/<name>). Rows are appended to
`out/partial/` batch by batch: a killed run's rerun goes on from them. A result of other settings already there is
refused at start-up, not replaced (give each target its own name=); so is a second run of the name while one runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from lightning_sde.cli.errors import (
    another_folder,
    fails_cleanly,
    folder_key,
    job_folder_note,
    own_folder_per_job,
)
from lightning_sde.cli.help import print_help_if_asked
from lightning_sde.configuration import (
    CONFIG_PATH,
    LIKELIHOOD_FREE_KEYS,
    check_folder_name,
    checked,
    overridden,
    plain,
    require_device,
)
from lightning_sde.configuration import device as parse_device
from lightning_sde.configuration import dtype as parse_dtype
from lightning_sde.distributed import (
    broadcast_from_zero,
    check_launcher_world,
    gather_to_zero,
    launched,
    launched_first,
    rank_world,
)
from lightning_sde.files import FolderLock, appending, write_text
from lightning_sde.flow import DIVERGENCES, PROBES, bits_per_dim, log_likelihood
from lightning_sde.probability_flow import ADAPTIVE_METHODS, ADAPTIVE_OPTIONS, DEFAULT_FIXED_STEPS, ODEOptions
from lightning_sde.targets import (
    UnconditionalNotLearned,
    as_recorded,
    check_guidance_learned,
    load_target,
    target_kind,
)
from lightning_sde.tracking import Progress, source_revision

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> tuple[ODEOptions, str, str]:
    """(ODE options, target kind, target id); fails fast, naming the config key."""
    check_folder_name("likelihood", cfg)
    kind, target_id = target_kind(cfg, free_data_keys=LIKELIHOOD_FREE_KEYS)
    target_id = as_recorded(target_id, [(recorded_settings(path) or {}).get("target_id") for path, _ in
                                        result_files(Path(cfg.out))])
    for key, least in (("n", 1), ("batch_size", 1), ("probes", 1), ("exact_max_dim", 1), ("seed", 0),
                       ("ddp.devices", 1), ("ddp.num_nodes", 1)):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"config {key}: must be an integer >= {least}; got {value!r}")
    check_launcher_world(cfg.ddp.devices, cfg.ddp.num_nodes)
    if cfg.divergence not in ("auto", *DIVERGENCES):
        raise ValueError(f"config divergence: {cfg.divergence!r} is not one of auto, {', '.join(DIVERGENCES)}")
    if cfg.probe not in PROBES:
        raise ValueError(f"config probe: {cfg.probe!r} is not one of {PROBES}")
    if cfg.divergence == "exact":
        check_probes_used(cfg, "divergence=exact")
    parse_dtype(cfg.dtype)
    parse_device(cfg.device)
    try:
        options = ODEOptions(**OmegaConf.to_container(cfg.ode, resolve=True))
    except (TypeError, ValueError) as err:
        raise ValueError(f"config ode: {err}") from None
    if cfg.get("eps") is not None:
        check_eps(cfg, kind)
    if kind == "checkpoint":  # its log p(x) is the unconditional prediction's: a p_uncond=0 network never learned it
        try:
            check_guidance_learned(cfg, kind, [None])
        except UnconditionalNotLearned:
            raise ValueError("config checkpoint: a class-conditional model trained with model.p_uncond=0 never "
                             "learned the unconditional prediction its log p(x) is computed with; lsde-likelihood "
                             "scores unconditional densities (train with model.p_uncond > 0)") from None
    check_out(cfg, target_id)
    return options, kind, target_id


def check_eps(cfg: DictConfig, kind: str) -> None:
    """eps against the SDE the flow would run on (a published model's is known once loaded: evaluation_set checks it
    there, before any integration)."""
    sde = model_sde(cfg)
    if sde is not None:
        checked("eps", sde.with_eps, cfg.eps)


def model_sde(cfg: DictConfig):
    """The SDE the flow runs on, as the config or the checkpoint records it: the problem's, or the checkpoint's
    (None for a published model: known once loaded)."""
    from lightning_sde.loading import read_checkpoint
    from lightning_sde.models.pretrained import is_diffusers_spec
    from lightning_sde.sde import sde_from_config

    if cfg.get("checkpoint") is None:
        return sde_from_config(plain(cfg.sde))
    if is_diffusers_spec(cfg.checkpoint):
        return None
    return sde_from_config(read_checkpoint(cfg.checkpoint)["hyper_parameters"]["sde"])


def check_probes_used(cfg: DictConfig, why: str) -> None:
    """probe=/probes= given where the divergence is exact (`why`) would be ignored: refused."""
    given = [key for key in ("probe", "probes") if overridden(key)]
    if given:
        raise ValueError(f"config {'/'.join(given)}: {why} computes the divergence exactly; probe and probes apply to "
                         "divergence=hutchinson: set it, or leave them out")


def settings(cfg: DictConfig, target_id: str) -> dict:
    """What a result of this app is of: the target (and its data) and every setting that changes the numbers. The
    model's own eps, given or not, is recorded as no eps (as results from before the option). An adaptive solve's steps
    are its batch's (a sample's value moves within the tolerance with the batch it is solved in), so its batch size
    and processes are settings too."""
    eps = cfg.get("eps")
    own_eps = eps is None or eps == getattr(model_sde(cfg), "eps", None)
    return {"target_id": target_id, **{k: ode_settings(OmegaConf.to_container(cfg[k])) if k == "ode" else cfg[k]
                                        for k in ("n", "divergence", "exact_max_dim", "probes", "probe", "ode", "seed",
                                                  "dtype")},
            **({} if own_eps else {"eps": eps}), **batch_settings(cfg)}


def batch_settings(cfg: DictConfig) -> dict:
    """An adaptive solve's batch size (the samples a batch takes: batch_size, or a process's share of n where fewer) and
    processes; {} for a fixed-step one (each sample's value its own)."""
    if cfg.ode.method not in ADAPTIVE_METHODS:
        return {}
    world = int(cfg.ddp.devices) * int(cfg.ddp.num_nodes)
    return {"batch_size": min(int(cfg.batch_size), -(-int(cfg.n) // world)), "world_size": world}


def ode_settings(ode) -> dict:
    """The ODE settings a solve uses: an adaptive method's tolerances and error norm, a fixed one's steps (null: 100);
    not the other's (a record from before the refusal of unused settings held steps: 100 for dopri5)."""
    if not isinstance(ode, dict):
        return ode
    if ode.get("method") in ADAPTIVE_METHODS:
        return {k: ode.get(k) for k in ("method", *ADAPTIVE_OPTIONS)}
    return {"method": ode.get("method"), "steps": ode.get("steps") or DEFAULT_FIXED_STEPS}


def result_files(out: Path) -> tuple[tuple[Path, str], ...]:
    """(file, what it holds) of a result in `out`: its summary, its partial rows' settings."""
    return (out / "summary.json", "the result"), (out / PARTIAL / "settings.json", "a partial result")


def recorded_settings(path: Path):
    """The settings a result file records (None where it cannot be read: check_out says so)."""
    try:
        settings = json.loads(path.read_text()).get("settings")
    except (OSError, ValueError, AttributeError):
        return None
    return settings if isinstance(settings, dict) else None


def check_out(cfg: DictConfig, target_id: str) -> None:
    """Refuse, before any work, to replace the result of other settings in `out` (two targets under the default
    name=default), or to go on from another's partial rows: a rerun of the same settings replaces its own result, and
    goes on from its own partial rows."""
    for path, what in result_files(Path(cfg.out)):
        if not path.is_file():
            continue
        try:
            before = recorded_settings(path)
            before = {**before, "ode": ode_settings(before.get("ode"))}
            if "eps" in before and before["eps"] == getattr(model_sde(cfg), "eps", None):
                before.pop("eps")  # the model's own, recorded before it was recorded as no eps
            if "batch_size" not in before:  # recorded before the batch was a setting: taken as this run's
                before.update(batch_settings(cfg))
        except (OSError, ValueError, AttributeError, TypeError):
            before = None
        ours = settings(cfg, target_id)
        if before != ours:
            differ = sorted(k for k in {*ours, *before} if json.dumps(before.get(k)) != json.dumps(ours.get(k))) \
                if isinstance(before, dict) else []
            said = f" ({', '.join(differ)} differ" + (": an adaptive solve's steps are its batch's"
                                                       if {"batch_size", "world_size"} & set(differ) else "") + ")"
            raise ValueError(f"config {folder_key()}: {path} holds {what} of other settings"
                             f"{said if differ else ' (or of another version)'}; give {another_folder()} to keep both, "
                             "or delete it" + job_folder_note())


PARTIAL = "partial"  # under out: each process's rows as they are computed, read back by a rerun; gone once written


def partial_rows(folder: Path, n: int, truth: bool = False) -> dict[int, dict]:
    """The rows of samples 0..n-1 (with their true_logp where `truth`) computed so far by earlier runs of these
    settings ({index: row}). A line that is not such a row (torn by a kill, or edited: a value not a finite number)
    is left out, and its sample computed again."""
    rows, skipped = {}, 0
    for path in sorted(folder.glob("rows-*.jsonl")) if folder.is_dir() else []:
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if usable_row(row, n, truth):
                rows.setdefault(row["index"], row)
            else:
                skipped += 1
    if skipped:
        log.warning("%d line(s) of %s are not rows of this run (a kill tears the last line; others were edited): "
                    "their samples are computed again", skipped, folder)
    return rows


def usable_row(row, n: int, truth: bool) -> bool:
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not isinstance(row, dict) or isinstance(row.get("index"), bool) or not isinstance(row.get("index"), int):
        return False
    se = row.get("logp_se")
    keys = ("logp", "bpd", "prior_logp", "nfe_batch", *(("true_logp",) if truth else ()))
    return 0 <= row["index"] < n and all(number(row.get(k)) for k in keys) and (se is None or (number(se) and se >= 0))


def evaluation_set(cfg: DictConfig, kind: str, target_id: str, device, dtype):
    """(denoiser, samples (n, *shape), bits/dim offset or None, the mixture or None)."""
    target = load_target(cfg, kind, target_id, device)
    if cfg.get("eps") is not None:  # before any integration: an eps this SDE cannot start from fails now
        sde = checked("eps", target.denoiser.sde.with_eps, cfg.eps)
        target.denoiser.sde = sde
    if target.mixture is not None:
        x = target.mixture.sample(cfg.n, torch.Generator().manual_seed(cfg.seed))  # the oracle computes in float64
        return target.denoiser, x, None, target.mixture
    denoiser, datamodule = target.denoiser.to(dtype), target.datamodule
    check_held_out(cfg, datamodule)
    batches, count = [], 0
    for batch in datamodule.val_dataloader():
        batch = batch[0] if isinstance(batch, (tuple, list)) else batch
        batches.append(batch)
        count += len(batch)
        if count >= cfg.n:
            break
    x = torch.cat(batches)[: cfg.n]
    if len(x) < cfg.n and overridden("n"):  # before any integration: fewer samples than asked would read as n's
        raise ValueError(f"config n: the validation set has {len(x)} samples, fewer than n = {cfg.n}; set n={len(x)}"
                         + ("" if getattr(datamodule, "validation_from_training", False) else
                            " (or a larger data.n_val)"))
    if len(x) < cfg.n:  # the default n: up to that many
        log.info("the validation set has %d samples (< the default n = %d): scoring all of them", len(x), cfg.n)
    return denoiser, x.to(dtype), getattr(datamodule, "bits_per_dim_offset", None), None


def check_held_out(cfg: DictConfig, datamodule) -> None:
    """The scored images are the checkpoint's held-out ones (the datamodule's check_scored_held_out: digits and image
    folders hold out validation from the training data). Checkpoints without a record of their data, published
    models and datamodules without the check are not checked."""
    from lightning_sde.loading import read_checkpoint
    from lightning_sde.models.pretrained import is_diffusers_spec

    if not getattr(datamodule, "validation_from_training", False) or is_diffusers_spec(cfg.checkpoint):
        return
    ckpt = read_checkpoint(cfg.checkpoint)
    theirs = ckpt.get("data_config")
    if isinstance(theirs, dict):
        datamodule.check_scored_held_out(theirs, ckpt.get(type(datamodule).__qualname__), cfg.checkpoint,
                                         seed_key=f"{'++' if 'seed' in cfg.data else '+'}data.seed")  # set: replaced


def run(cfg: DictConfig) -> dict | None:
    """validate, then evaluate; from the check of `out` on, the first process holds `out`'s lock (another run of the
    same name is refused while this one lives, so what is in `out` is this run's alone)."""
    options, kind, target_id = validate(cfg)  # a bad value fails before `out` exists
    device, dtype = parse_device(cfg.device), parse_dtype(cfg.dtype)
    require_device(device)
    with FolderLock(cfg.out, "lsde-likelihood") if launched_first() else contextlib.nullcontext():
        check_out(cfg, target_id)  # again under the lock: validate's ran before it
        with launched(cfg.ddp.devices, cfg.ddp.num_nodes, device) as fabric:
            return evaluate(cfg, options, kind, target_id, fabric.device if fabric else device, dtype)


def evaluate(cfg: DictConfig, options, kind, target_id, device, dtype) -> dict | None:
    """Each process's share of the samples; rank 0 gathers and writes them (None elsewhere)."""
    rank, world = rank_world()
    denoiser, x, offset, mixture = evaluation_set(cfg, kind, target_id, device, dtype)
    dim = math.prod(denoiser.shape)
    divergence = cfg.divergence if cfg.divergence != "auto" else ("exact" if dim <= cfg.exact_max_dim else "hutchinson")
    if divergence == "exact" and cfg.divergence == "auto":
        check_probes_used(cfg, f"divergence=auto on {dim} dimensions (<= exact_max_dim {cfg.exact_max_dim})")
    if divergence == "exact" and dim > cfg.exact_max_dim and rank == 0:
        log.warning("divergence=exact on %d dimensions: one backward pass per dimension at every ODE evaluation, "
                    "up to %.3g times the backward work of divergence=hutchinson with probes=%d", dim, dim / cfg.probes,
                    cfg.probes)
    partial = Path(cfg.out) / PARTIAL
    done = partial_rows(partial, len(x), truth=mixture is not None) if rank == 0 else {}
    if done:
        log.info("%d of %d samples computed by an earlier run (%s): going on from there", len(done), len(x), partial)
    skip = set(broadcast_from_zero(sorted(done)))  # read by rank 0 before any process appends: one split for all
    mine = torch.tensor([k for k in range(len(x)) if k not in skip][rank::world], dtype=torch.long)
    partial.mkdir(parents=True, exist_ok=True)
    write_text(partial / "settings.json", json.dumps({"settings": settings(cfg, target_id)}) + "\n")
    with appending(partial / f"rows-{rank}-{os.getpid()}.jsonl") as record:
        rows = compute_rows(cfg, options, denoiser, x, mine, mixture, divergence, offset, device, record)
    gathered = gather_to_zero(rows)
    if rank != 0:
        return None
    rows = sorted({**done, **{r["index"]: r for part in gathered for r in part}}.values(), key=lambda r: r["index"])
    summary = write(cfg, target_id, rows, dim, divergence, offset, world, denoiser.sde.eps, len(done))
    shutil.rmtree(partial, ignore_errors=True)
    return summary


def compute_rows(cfg, options, denoiser, x, mine, mixture, divergence, offset, device, record) -> list[dict]:
    """One row per sample of `mine` (indices into x), each batch's appended to `record` as soon as it is done."""
    rows, dim = [], math.prod(denoiser.shape)
    with Progress(len(mine), "log-likelihood", "samples", enabled=rank_world()[0] == 0) as bar:
        for i in range(0, len(mine), cfg.batch_size):
            rows += likelihood_batch(cfg, options, denoiser, x, mine[i : i + cfg.batch_size], mixture, divergence,
                                     offset, device, record, dim)
            bar.update(min(i + cfg.batch_size, len(mine)))
    return rows


def probe_generators(seed: int, indices: list[int]) -> list[torch.Generator]:
    """Hutchinson's probes of each sample, seeded by the run's seed and the sample's index: any batch size or world
    size draws the same for a sample, and no two samples share them (their errors would not average out)."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + k) for k in indices]


def likelihood_batch(cfg, options, denoiser, x, idx, mixture, divergence, offset, device, record, dim) -> list[dict]:
    """The rows of one batch (indices idx into x), appended by `record` at once (all or none: a resume goes on
    from whole batches, so that its batches are those of an uninterrupted run)."""
    rows = []
    gens = probe_generators(cfg.seed, idx.tolist())
    out = log_likelihood(denoiser, x[idx].to(device), options, divergence, cfg.probes, cfg.probe, gens)
    truth = (mixture.marginal_log_prob(denoiser.sde, x[idx].double(),
                                       torch.tensor(denoiser.sde.eps, dtype=torch.float64))
             if mixture else None)
    for j, k in enumerate(idx.tolist()):
        se = float(out["logp_se"][j])  # NaN for one probe: no spread to estimate it from
        row = {"index": k, "logp": float(out["logp"][j]), "logp_se": se if math.isfinite(se) else None,
               "prior_logp": float(out["prior_logp"][j]), "nfe_batch": out["nfe"]}
        row["bpd"] = float(bits_per_dim(out["logp"][j], dim, offset or 0.0))
        if truth is not None:
            row["true_logp"] = float(truth[j])
        rows.append(row)
    record("".join(json.dumps(r) + "\n" for r in rows).encode())
    return rows


def write(cfg, target_id, rows, dim, divergence, offset, world, eps: float, earlier: int = 0) -> dict:
    """summary.json and samples.jsonl of every row; `earlier`: how many of them an earlier run computed (under its
    own world size and batches)."""
    n = len(rows)
    logp = torch.tensor([r["logp"] for r in rows], dtype=torch.float64)
    bpd = torch.tensor([r["bpd"] for r in rows], dtype=torch.float64)
    summary = {
        "target": cfg.checkpoint or f"mixture:{cfg.problem._target_.rsplit('.', 1)[-1]}", "n": n, "dim": dim,
        "divergence": divergence, "probes": cfg.probes if divergence == "hutchinson" else None,
        "ode": ode_settings(OmegaConf.to_container(cfg.ode)),
        "probe": cfg.probe if divergence == "hutchinson" else None, "seed": cfg.seed, "dtype": cfg.dtype,
        "mean_logp": float(logp.mean()), "mean_logp_se": float(logp.std() / math.sqrt(n)) if n > 1 else None,
        "bpd": float(bpd.mean()), "bpd_se": float(bpd.std() / math.sqrt(n)) if n > 1 else None,
        "bpd_offset": offset, "dequantized": offset is not None,
        "mean_hutchinson_se": (float(torch.tensor([r["logp_se"] for r in rows], dtype=torch.float64).mean())
                               if divergence == "hutchinson" and cfg.probes > 1 else None),
        "world_size_this_run": world, "n_from_earlier_runs": earlier, "settings": settings(cfg, target_id),
        "eps": eps, "batch_size": int(cfg.batch_size), "device": str(cfg.device), "git_commit": source_revision(),
    }
    if "true_logp" in rows[0]:
        err = torch.tensor([r["logp"] - r["true_logp"] for r in rows], dtype=torch.float64)
        summary.update(mean_true_logp=float(torch.tensor([r["true_logp"] for r in rows], dtype=torch.float64).mean()),
                       max_abs_error=float(err.abs().max()))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows)),
                       ("summary.json", json.dumps(summary, indent=2) + "\n")):
        write_text(out / name, text)
    unit = "bits/dim" + (f" (dequantised, offset {offset:.3f})" if offset is not None else " (continuous density)")
    print(f"{summary['target']}: {n} samples, {divergence} divergence; mean log p = {summary['mean_logp']:.4f} nats"
          + (f" (true {summary['mean_true_logp']:.4f}, max |error| {summary['max_abs_error']:.2e})"
             if "true_logp" in rows[0] else "")
          + f"; {summary['bpd']:.4f} ± "
          + (f"{summary['bpd_se']:.4f}" if summary["bpd_se"] is not None else "n/a (one sample)") + f" {unit}\n"
            f"written: {out / 'summary.json'}, {out / 'samples.jsonl'}")
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="likelihood")
@fails_cleanly("lsde-likelihood", goes_on=lambda cfg: "the same command goes on from it")
def run_app(cfg: DictConfig) -> None:
    own_folder_per_job(cfg)
    run(cfg)


def main() -> None:
    if not print_help_if_asked("likelihood"):
        run_app()


if __name__ == "__main__":
    from lightning_sde.cli import apps  # not `run`: a name the app may have

    apps.run("likelihood", main)
