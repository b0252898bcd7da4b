"""`lsde-<app> --help`: what the app does in a line, how to call it, its own config groups (read from the app's
config, with the default marked), the keys users change most, and examples. Hydra's generic help lists every group
of the tree; this one lists the app's. `--hydra-help` still shows Hydra's."""

from __future__ import annotations

import sys

import yaml

from lightning_sde.configuration import config_root

NOT_GROUPS = {"_self_", "paths", "hydra"}

# Each app's help: what it does, how to call it, the keys users change most, examples.
APPS = {
    "train": dict(
        summary=("fit a score model by denoising score matching (EMA, DDP), comparing samplers during fit"),
        usage=[
            "[KEY=VALUE ...]",
            "-m [KEY=A,B ...]        (a multirun: one run per combination)",
            "check [--planned] [KEY=VALUE ...]  (checks a command line before a job runs it: slurm/submit.sh)",
        ],
        keys=[
            ("experiment=<name>", "an overlay of everything below (toy2d, digits, cifar10_vp_ddpmpp, ...)"),
            ("samplers=<set>", "the samplers compared at each evaluation (configs/samplers/)"),
            ("trainer.max_steps=N", "training steps; trainer.val_check_interval=N between evaluations"),
            ("trainer=ddp_cpu|ddp", "DDP processes (trainer.devices, trainer.num_nodes)"),
            ("optim.lr=X", "AdamW learning rate (optim.warmup_steps, optim.weight_decay)"),
            ("callbacks.sampler.n_samples=N", "samples per sampler and evaluation"),
            ("run_name=<name>", "the run directory outputs/train/<name>; rerun it to resume (ckpt_path=last)"),
            ("init_from=<ckpt>", "a new run from a checkpoint's weights (fine-tuning; another run's data or optim)"),
            ("logger=csv", "no W&B (default: W&B, offline unless configured, and CSV)"),
        ],
        examples="""lsde-train experiment=toy2d
          lsde-train experiment=digits trainer=ddp_cpu
          lsde-train -m experiment=toy2d sde=vp,ve""",
    ),
    "bench": dict(
        summary=("sweep samplers x NFE x seeds, score them, keep one row per cell (resumable, shardable); "
                 "`lsde-bench report` redraws the views"),
        usage=[
            "[KEY=VALUE ...]",
            "report RESULTS.jsonl [--out DIR] [--wandb] [--project P] [--name N]",
            "cells [KEY=VALUE ...]      (prints the sweep's number of cells: the size of its job array)",
        ],
        keys=[
            ("samplers=<set>", "the samplers swept (configs/samplers/); +sampler@samplers.<label>=<sampler> adds one"),
            ("nfe=[10,20,50]", "the NFE grid of fixed-step samplers (null: as configured)"),
            ("tolerances=[1e-3,1e-5]", "the rtol = atol grid of adaptive samplers (null: as configured)"),
            ("checkpoint=<path> data=<name>", "a trained model and its data, instead of an exact problem"),
            ("seeds.count=N", "samples per cell (seeds.start=S)"),
            ("metrics=[fid,kid,is,precision,recall]", "default auto: what fits the target"),
            ("name=<name>", "the sweep's folder outputs/bench/<name> (results=<path> for another file)"),
            ("ddp.devices=N", "processes that split every cell's seeds"),
        ],
        examples="""lsde-bench 'nfe=[10,20,50,100]' seeds.count=2000
          lsde-bench samplers=fast 'nfe=[5,10,20]' problem=random_mixture
          lsde-bench name=digits checkpoint=outputs/train/<run>/checkpoints/last.ckpt data=digits
          lsde-bench report outputs/bench/default/results.jsonl --wandb""",
    ),
    "compare": dict(
        summary=("compare samplers at their own settings on an exact Gaussian mixture, with the exact-sample noise "
                 "floor"),
        usage=[
            "[KEY=VALUE ...]",
        ],
        keys=[
            ("samplers=<set>", "the samplers compared (default: compare)"),
            ("problem=<name>", "the exact mixture (configs/problem/)"),
            ("sde=<name>", "vp, subvp or ve"),
            ("seeds.count=N", "samples per sampler"),
            ("samplers.<label>.<knob>=V", "e.g. samplers.ddim_50.eta=1.0; ~samplers.<label> drops one"),
        ],
        examples="""lsde-compare
          lsde-compare sde=ve problem=swiss_roll seeds.count=2000""",
    ),
    "likelihood": dict(
        summary=("exact log-likelihoods and bits/dim through the probability-flow ODE"),
        usage=[
            "[KEY=VALUE ...]",
        ],
        keys=[
            ("checkpoint=<path> data=<name>", "a trained model and its data (data.dequantize=true for bits/dim)"),
            ("n=N", "samples evaluated (default: up to 500, the validation set's)"),
            ("eps=X", "the time the flow starts at (default: the model's sde.eps; score_sde's bits/dim: 1e-5)"),
            ("divergence=exact|hutchinson", "default auto: exact up to exact_max_dim dimensions"),
            ("probes=K", "Hutchinson probes per sample"),
            ("ode.rtol=X ode.atol=X", "the solver's tolerances"),
            ("ode.method=rk4 ode.steps=N", "a fixed-step method instead (N steps uniform in t)"),
            ("ddp.devices=N", "processes that split the samples"),
        ],
        examples="""lsde-likelihood n=200
          lsde-likelihood checkpoint=outputs/train/<run>/checkpoints/last.ckpt data=digits data.dequantize=true""",
    ),
    "sample": dict(
        summary=("draw samples of a model with one sampler and write them to disk (samples.npz, one PNG per image), "
                 "resumable"),
        usage=[
            "[KEY=VALUE ...]",
        ],
        keys=[
            ("checkpoint=<path>", "a trained model (or diffusers:<folder>); default: the exact 8 Gaussians"),
            ("sampler=<name>", "one sampler of configs/sampler/ (default recommended); sampler.<knob>=V sets one"),
            ("nfe=N | tolerance=X", "a fixed-step sampler's budget, or an adaptive one's rtol = atol"),
            ("seeds.count=N seeds.start=S", "sample i from seed S + i: the same seed, the same sample"),
            ("guidance=<w> labels=<class>|cycle", "a class-conditional model: classifier-free guidance"),
            ("name=<name>", "the folder outputs/samples/<name>; rerun it to go on, or with more seeds"),
            ("device=cuda ddp.devices=N", "processes that split each chunk's seeds"),
        ],
        examples="""lsde-sample checkpoint=outputs/train/<run>/checkpoints/last.ckpt nfe=10 seeds.count=10000
          lsde-sample sampler=ode tolerance=1e-5 seeds.count=2000""",
    ),
    "figures": dict(
        summary=("draw the SDE chapter's figures (schematic, trajectories, schedules, interpolation) as PNG and PDF"),
        usage=[
            "[KEY=VALUE ...]",
        ],
        keys=[
            ("figures=[schematic,trajectories]", "which figures"),
            ("problem=<name>", "a 1-D or 2-D exact mixture"),
            ("checkpoint=<path>", "a trained model drives the trajectories and interpolation"),
            ("guidance=<w> label=<class>", "a class-conditional checkpoint: that class, at that guidance weight"),
            ("out=<folder>", "where the files go (default outputs/figures; out=docs/figures: the docs' own)"),
        ],
        examples="""lsde-figures
          lsde-figures problem=eight_gaussians 'figures=[trajectories,interpolation]'""",
    ),
}


def app_groups(app: str) -> list[tuple[str, str | None, list[str]]]:
    """(group, its default in the app's config, every option) for each config group the app composes."""
    root = config_root()
    config = yaml.safe_load((root / f"{app}.yaml").read_text()) or {}
    out, seen = [], set()
    for entry in config.get("defaults", []):
        if isinstance(entry, str):  # a base config (compare.yaml extends bench.yaml)
            if entry not in NOT_GROUPS and (root / f"{entry}.yaml").is_file():
                out += [g for g in app_groups(entry) if g[0] not in seen]
                seen.update(g[0] for g in out)
            continue
        key, default = next(iter(entry.items()))
        group = key.removeprefix("override ").lstrip("/")
        if group in NOT_GROUPS or "@" in group or not (root / group).is_dir():
            continue
        options = sorted(p.stem for p in (root / group).glob("*.yaml"))
        out = [g for g in out if g[0] != group] + [(group, default, options)]
        seen.add(group)
    return out


def render(app: str, summary: str, usage: list[str], keys: list[tuple[str, str]], examples: str) -> str:
    name = f"lsde-{app}"
    lines = [f"{name}: {summary}", "", "Usage:"]
    lines += [f"  {name} {u}" for u in usage]
    lines += ["", "Config groups (group=option; * is the default):"]
    for group, default, options in app_groups(app):
        marked = ", ".join(f"{o}*" if o == default else o for o in options)
        lines.append(f"  {group:<11} {marked}" + ("   (none by default)" if default is None else ""))
    lines += ["", "Keys users change most:"]
    width = max(len(k) for k, _ in keys)
    lines += [f"  {k:<{width}}  {what}" for k, what in keys]
    lines += ["", "Examples:", *[f"  {line.strip()}" for line in examples.strip().splitlines() if line.strip()]]
    lines += ["", f"The composed config: {name} --cfg job [overrides]. Hydra's own options: {name} --hydra-help."]
    return "\n".join(lines)


def subcommands(app: str) -> list[str]:
    """The app's subcommands, as its usage lines name them (`lsde-bench report ...`)."""
    return [usage.split()[0] for usage in APPS[app]["usage"] if usage[0].isalpha()]


def print_help_if_asked(app: str, argv: list[str] | None = None) -> bool:
    """Print the app's help and return True when argv asks for it (--help or -h)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(render(app, **APPS[app]))
        return True
    return False
