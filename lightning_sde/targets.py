"""What the apps sample or evaluate: an exact Gaussian mixture under an SDE (the oracle), or a trained checkpoint
with the datamodule of its data. One reading of the config for lsde-bench, lsde-compare and lsde-likelihood:
`checkpoint` (a lightning-sde checkpoint or a `diffusers:` model) + `data` when a checkpoint is given (the default
`problem` is then not used), else `problem` + `sde`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import get_class, get_object
from omegaconf import DictConfig

from lightning_sde.configuration import (
    CONFIG_PACKAGE,
    EVALUATION_FREE_KEYS,
    LOADING_KEYS,
    build,
    check_same_data,
    overridden,
    plain,
)
from lightning_sde.exact import GaussianMixture
from lightning_sde.loading import load_denoiser, read_checkpoint
from lightning_sde.models.pretrained import is_diffusers_spec, locate
from lightning_sde.samplers.base import floats_as_declared
from lightning_sde.sde import sde_from_config

log = logging.getLogger(__name__)


@dataclass
class Target:
    id: str  # keys result rows: a different model, step or problem never matches
    kind: str  # "points" | "images"
    denoiser: object = None
    mixture: object = None  # mixture targets: the exact GaussianMixture samples are scored against
    cycled: bool = False  # guided with labels=cycle: seed i draws class i mod C (its noise floor draws alike)
    datamodule: object = None  # for checkpoint targets
    protocol: dict = field(default_factory=dict)  # constant fields of every result row


def check_one_target(cfg: DictConfig) -> bool:
    """A checkpoint or an exact problem, not both (nor a checkpoint under another SDE), nor neither: whether it is a
    checkpoint. Read from the config alone (a planned checkpoint need not exist yet)."""
    has_ckpt, has_problem = cfg.get("checkpoint") is not None, cfg.get("problem") is not None
    if has_ckpt and overridden("problem"):
        raise ValueError("config checkpoint/problem: both set; a target is a checkpoint (with data=<its data>) or "
                         "an exact problem (problem=<name> with sde=<name>), not both")
    if has_ckpt and overridden("sde"):
        raise ValueError("config checkpoint/sde: both set; a checkpoint samples under the SDE it was trained with "
                         "(sde=<name> goes with an exact problem)")
    if not (has_ckpt or has_problem):
        raise ValueError("config checkpoint/problem: no target; set checkpoint=<path.ckpt> data=<its data>, or "
                         "problem=<name> (configs/problem/) with sde=<name>")
    if not has_ckpt and cfg.get("data") is not None:  # it would be ignored: the exact problem is the data
        problem = str(cfg.problem.get("_target_", "")).rsplit(".", 1)[-1]
        raise ValueError(f"config data: goes with a checkpoint (the data it was trained on); the target here is the "
                         f"exact problem {problem}, whose samples are its own: pick another with problem=<name> "
                         f"(configs/problem/), or give checkpoint=<path.ckpt>")
    return has_ckpt


def target_kind(cfg: DictConfig, needs_data: bool = True, free_data_keys=EVALUATION_FREE_KEYS) -> tuple[str, str]:
    """("mixture" | "checkpoint", id), checked without loading weights or data; ValueError naming the key.
    `free_data_keys`: the data settings that may differ from the checkpoint's training data."""
    has_ckpt = check_one_target(cfg)
    if has_ckpt and is_diffusers_spec(cfg.checkpoint):
        if needs_data and cfg.get("data") is None:
            raise ValueError("config data: a model needs the config of its data for reference samples, e.g. "
                             "data=cifar10 (shape and range must match the model's)")
        try:
            return "checkpoint", locate(cfg.checkpoint).id() + _data_id(cfg)
        except ValueError as err:
            raise ValueError(f"config checkpoint: {err}") from None
    if has_ckpt:
        path = Path(cfg.checkpoint)
        if not path.is_file():
            raise ValueError(f"config checkpoint: no checkpoint file at {str(path)!r}")
        if needs_data and cfg.get("data") is None:
            raise ValueError(f"config data: a checkpoint needs the config of its data, {its_data(path)}")
        # step and content are part of the id: a checkpoint overwritten by further training (last.ckpt), or by
        # another run at the same step, is a new target; so is other reference data
        try:
            ckpt = read_checkpoint(path)
        except ValueError as err:
            raise ValueError(f"config checkpoint: {err}") from None
        step = ckpt.get("global_step")
        if cfg.get("data") is not None:
            check_same_data(path, ckpt.get("data_config"), plain(cfg.data), "score it against the data it was "
                            "trained on (its run's data config)", free_data_keys)
        from lightning_sde.loading import file_sha256

        return "checkpoint", f"{path.resolve()}@step{step}#{file_sha256(path)[:16]}" + _data_id(cfg)
    if cfg.get("sde") is None:
        raise ValueError("config sde: a mixture target needs an SDE, e.g. sde=vp")
    build(cfg.problem, "problem")
    sde_from_config(plain(cfg.sde))
    return "mixture", f"mixture:{_identity(cfg.problem)}|sde:{_identity(cfg.sde)}"


def its_data(path) -> str:
    """How to name a checkpoint's training data: `data=<the shipped config that builds its data class>` (with the
    settings that differ from that config's), or the generic example where the checkpoint does not say."""
    try:
        data = read_checkpoint(path).get("data_config") or {}
        name, defaults = shipped_data_config(data.get("_target_"))
        if name is not None:
            import inspect

            from hydra.utils import get_class

            built = {k: p.default for k, p in inspect.signature(get_class(data["_target_"])).parameters.items()
                     if p.default is not inspect.Parameter.empty}
            # a key the shipped config lacks is added (+data.seed=1); left out where it is the class's default
            changed = [f"{'' if k in defaults else '+'}data.{k}={v if isinstance(v, str) else json.dumps(v)}"
                       for k, v in data.items() if k not in ("_target_", *LOADING_KEYS) and v is not None
                       and defaults.get(k, built.get(k)) != v]
            return "as it was trained: " + " ".join([f"data={name}", *changed])
    except Exception:  # noqa: BLE001  (an unreadable checkpoint is reported by the caller's own read)
        pass
    return "e.g. data=toy2d or data=digits"


def shipped_data_config(target) -> tuple[str | None, dict]:
    """(the name of the shipped data config that builds the class `target`, its values), or (None, {})."""
    from importlib.resources import files

    import yaml

    for config in sorted(files(CONFIG_PACKAGE).joinpath("data").iterdir(), key=lambda f: f.name):
        values = yaml.safe_load(config.read_text()) if config.name.endswith(".yaml") else None
        if isinstance(values, dict) and target is not None and values.get("_target_") == target:
            return config.name[:-5], values
    return None, {}


def data_name(data: DictConfig) -> str:
    """The data a checkpoint is scored against, as its sweep's rows and W&B run name it: the shipped config of its
    class (digits) or the class, and the dataset's own name where it has one (toy2d/swiss_roll)."""
    target = str(data._target_)
    choice = shipped_data_config(target)[0] or target.rsplit(".", 1)[-1]
    name = data.get("name")
    return f"{choice}/{name}" if isinstance(name, str) else choice


def _identity(node) -> str:
    """A built config node as JSON, an integer given to a float parameter as that float: `sde.beta_max=20` on a
    command line names the SDE of the file's `beta_max: 20.0`."""
    values = plain(node)
    if "_target_" in values:
        parameters = inspect.signature(get_object(values["_target_"])).parameters
        values = floats_as_declared(values, {k: p.annotation for k, p in parameters.items()})
    return json.dumps(values, sort_keys=True)


def _data_id(cfg: DictConfig) -> str:
    """The part of a checkpoint target's id that names its reference data (empty without data)."""
    if cfg.get("data") is None:
        return ""
    data = {k: v for k, v in plain(cfg.data).items() if k not in LOADING_KEYS}
    return f"|data:{hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]}"


def target_classes(cfg: DictConfig, kind: str) -> int | None:
    """The number of classes of a class-conditional target (None: unconditional), read without loading weights."""
    if kind == "mixture":
        return build(cfg.problem, "problem").num_classes
    if is_diffusers_spec(cfg.checkpoint):
        return None  # imported models are unconditional (the loader refuses class-conditional ones)
    net = read_checkpoint(cfg.checkpoint)["hyper_parameters"]["net"]
    return net.get("num_classes") if isinstance(net, dict) else None


class UnconditionalNotLearned(ValueError):
    """A class-conditional checkpoint trained with model.p_uncond=0 asked for its unconditional prediction."""


def check_guidance_learned(cfg: DictConfig, kind: str, weights,
                           instead: str = "sample it at guidance=0 (seed i of class i mod num_classes, or "
                                          "labels=<class>)") -> None:
    """Guidance weights other than 0, and no guidance (None: a class-conditional network's unconditional samples),
    use the unconditional prediction: refused, before any work, for a class-conditional checkpoint trained without
    label dropout (model.p_uncond=0), whose unconditional prediction was never trained. `instead`: what to run in
    this app (at w = 0, which needs no unconditional prediction)."""
    if kind == "mixture" or is_diffusers_spec(cfg.checkpoint) or all(w == 0 for w in weights):
        return
    if target_classes(cfg, kind) is None:
        return
    if read_checkpoint(cfg.checkpoint)["hyper_parameters"].get("p_uncond", 0.1) == 0:
        wanted = "unconditional samples (guidance=null)" if None in weights else "guidance"
        raise UnconditionalNotLearned(
            f"config guidance: the checkpoint was trained with model.p_uncond=0: it never learned the unconditional "
            f"prediction {wanted} use; {instead}")


def data_kind(cfg: DictConfig) -> str:
    """The datamodule class's `kind` ("points" | "images"), read off the class: no data is loaded yet."""
    try:
        return get_class(cfg.data._target_).kind
    except Exception as err:  # noqa: BLE001  (an import error or a typo in the class path: name the key)
        raise ValueError(f"config data._target_: {type(err).__name__}: {err}") from None


PRIOR_GAP_WARNING = 0.01  # nats per dimension (SDE.prior_gap): the default SDEs are at 2e-5 (VP) and 2e-4 (VE)


def warn_if_prior_far(sde, moments) -> None:
    """Say so when p_T is far from the prior the samplers start from (VP with a small beta_max, a short T): every
    sampler's samples are then biased, even with the exact score. `moments`: the data's (DataMoments), or None (unit
    scale assumed)."""
    mean_square = moments.mean_square() if moments is not None else 1.0
    gap = sde.prior_gap(mean_square)
    if gap > PRIOR_GAP_WARNING:
        log.warning("the %s SDE leaves p_T far from its prior N(0, %.3g^2): KL up to %.2g nats per dimension at T=%g "
                    "(data of mean square %.3g); samples drawn from the prior are biased whatever the sampler (a "
                    "Gaussian start too: it carries a draw of the prior). Raise beta_max / sigma_max or T", sde.name,
                    sde.prior_std, gap, sde.T, mean_square)


SMALL_DATA_RATIO = 10  # the data's largest std over the noise level at eps below which samples are blurred by it


def warn_if_data_below_eps(sde, moments) -> None:
    """Say so when the noise level at eps is not small against the data's spread (its largest std; 0.02 under the
    default VP SDE, whose sigma(eps) is 0.01): every sampler's samples are the data blurred by it, and grids uniform
    in t (DDIM's and Euler-Maruyama's defaults) lose most of their accuracy there (DDIM-50: 37 % relative endpoint
    error, against 2 % on unit-scale data)."""
    if moments is None:
        return
    spread, noise = moments.max_std, float(sde.sigma(torch.tensor(sde.eps, dtype=torch.float64)))
    if spread < SMALL_DATA_RATIO * noise:
        log.warning("the %s SDE's noise level at eps=%g is %.3g, %.2g of the data's largest std %.3g: samples are the "
                    "data blurred by it, and grids uniform in t put few steps where data this small is resolved; "
                    "rescale the data (unit std), lower sde.eps (sde.sigma_min for VE), or use a logsnr or karras grid",
                    sde.name, sde.eps, noise, noise / spread, spread)


CHECKPOINT_TARGET = re.compile(r"(?P<path>.+)(?P<rest>@step[^#]*#[0-9a-f]{16}.*)", re.DOTALL)  # target_kind's


def as_recorded(target_id: str, recorded) -> str:
    """A checkpoint's target id under the path a results folder records it at, where the checkpoint there is this
    one moved (the same step, content and data at another path: a run rsynced, a project renamed), so that its
    results are this target's; else target_id. `recorded`: the target ids the folder holds (a bench file's may
    carry more of the protocol after them)."""
    mine = CHECKPOINT_TARGET.fullmatch(target_id)
    recorded = list(dict.fromkeys(r for r in recorded if isinstance(r, str)))
    if mine is None or any(r == target_id or r.startswith(target_id + "|") for r in recorded):
        return target_id  # its own rows are there (written here before): they go on
    for other in recorded:
        theirs = CHECKPOINT_TARGET.fullmatch(other)
        if theirs and theirs["path"] != mine["path"] and (
                theirs["rest"] == mine["rest"] or theirs["rest"].startswith(mine["rest"] + "|")):
            log.info("the checkpoint %s is the one these results name at %s (the same step and content): its results "
                     "go on", mine["path"], theirs["path"])
            return theirs["path"] + mine["rest"]
    return target_id


def load_target(cfg: DictConfig, kind: str, target_id: str, device) -> Target:
    """The target `target_kind` checked: the exact mixture and its Denoiser, or the checkpoint's and its data."""
    if kind == "mixture":
        mixture = build(cfg.problem, "problem")
        sde = sde_from_config(plain(cfg.sde))
        protocol = {"problem": cfg.problem._target_.rsplit(".", 1)[-1], "sde": sde.name}
        scored = mixture if cfg.get("guidance") is None else scored_distribution(mixture, cfg.get("labels", "cycle"))
        denoiser = mixture.denoiser(sde).to(device)
        warn_if_prior_far(sde, denoiser.data_moments)
        warn_if_data_below_eps(sde, denoiser.data_moments)
        cycled = cfg.get("guidance") is not None and cfg.get("labels", "cycle") == "cycle"
        return Target(target_id, "points", denoiser, mixture=scored, cycled=cycled, protocol=protocol)
    denoiser = load_denoiser(cfg.checkpoint, map_location=device)
    warn_if_prior_far(denoiser.sde, denoiser.data_moments)
    warn_if_data_below_eps(denoiser.sde, denoiser.data_moments)
    if is_diffusers_spec(cfg.checkpoint):
        protocol = {"checkpoint": cfg.checkpoint, "model_id": target_id}
    else:
        ckpt = read_checkpoint(cfg.checkpoint)
        protocol = {"checkpoint": str(Path(cfg.checkpoint).resolve()), "global_step": ckpt.get("global_step"),
                    "ema": "current_model_state" in ckpt}
    protocol["sde"] = denoiser.sde.name
    datamodule = build(cfg.data, "data") if cfg.get("data") is not None else None
    if datamodule is not None:
        protocol["data"] = data_name(cfg.data)
    kind = getattr(datamodule, "kind", "points")
    if datamodule is not None and tuple(datamodule.shape) != tuple(denoiser.shape):
        raise ValueError(f"config data: shape {tuple(datamodule.shape)} != the checkpoint's {denoiser.shape}")
    return Target(target_id, kind, denoiser, datamodule=datamodule, protocol=protocol)


def with_data_moments(target: Target) -> None:
    """A checkpoint target whose model carries no data moments (an imported diffusers model, or a checkpoint without
    them) gets its data's, measured as training measures them: Gaussian starts need them (the fast set's
    recommended_sde, select's candidates). The data is part of the target's id."""
    if target.datamodule is not None and target.denoiser.data_moments is None:
        from lightning_sde.data.base import MOMENT_SAMPLES, training_moments  # Lightning: not for mixture targets

        target.denoiser.data_moments = training_moments(target.datamodule)
        log.info("the model has no data moments: Gaussian starts use its data's (up to %d training samples)",
                 MOMENT_SAMPLES)


def scored_distribution(mixture, labels):
    """What samples drawn with `labels` are scored against (their reference, noise floor and log-likelihood): p(x | y)
    for one class; for labels='cycle' (seed i: class i mod C) the classes in equal parts, whatever p(y)."""
    if labels != "cycle":
        return mixture.conditional(labels)
    per_class = mixture.class_weights()
    weights = mixture.log_weights.exp() / (len(per_class) * per_class[mixture.labels])
    return GaussianMixture(mixture.means, covs=mixture.covs, weights=weights, labels=mixture.labels,
                           dtype=mixture.means.dtype)


def reference_samples(target: Target, n: int, start: int, label: int | None = None) -> torch.Tensor:
    """n real samples to score against: exact ones from a seed stream disjoint from the sampler seeds, or the
    datamodule's reference set (with `label`: that class's training samples)."""
    if target.mixture is not None:
        return target.mixture.sample(n, torch.Generator().manual_seed(10**9 + start)).float()
    try:
        return target.datamodule.reference(n) if label is None else target.datamodule.reference(n, label=label)
    except Exception as err:  # noqa: BLE001  (whatever the datamodule raises, report it against its config key)
        raise ValueError(f"config data: {type(err).__name__}: {err}") from None


def floor_samples(target: Target, n: int, start: int, reference_n: int,
                  label: int | None = None) -> tuple[torch.Tensor | None, str]:
    """A second real sample set of n samples (a cell's size), disjoint from the reference set of reference_n: what a
    perfect sampler scores (the noise floor). Exact draws of a mixture; for a checkpoint, the data's training
    samples after the reference's. None, and why, when the data holds too few. Where the samplers' classes cycle
    over the seeds (seed i: class i mod C, exactly balanced), the floor's are the seeds' classes too: random draws'
    class counts vary, and their floor sat above a perfect sampler's score."""
    if target.mixture is not None:
        generator = torch.Generator().manual_seed(2 * 10**9 + start)
        if not target.cycled:
            return target.mixture.sample(n, generator).float(), ""
        from lightning_sde.generation import seed_labels

        classes = seed_labels(range(start, start + n), "cycle", target.mixture.num_classes)
        x = torch.empty(n, target.mixture.dim, dtype=target.mixture.means.dtype)
        for label in classes.unique().tolist():
            rows = classes == label
            x[rows] = target.mixture.conditional(label).sample(int(rows.sum()), generator)
        return x.float(), ""
    from lightning_sde.data.base import floor_or_reason  # a datamodule is loaded by now (lsde-compare needs none)

    try:
        return floor_or_reason(target.datamodule, n, reference_n, label)
    except Exception as err:  # noqa: BLE001  (whatever the datamodule raises, report it against its config key)
        raise ValueError(f"config data: {type(err).__name__}: {err}") from None
