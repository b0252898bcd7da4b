"""Why grid="select" chose what it did on one problem of family.py, and where the chosen run loses on the samples.

For the recommended sampler (recommend.py's RECOMMENDED) at one NFE:
  pilot     the pilot RMSE of every candidate select compares (512 pilot rows against dopri5 at 1e-6, as select runs
            it), and of the uniform and trailing grids apart with the chosen knobs (select compares only one of them)
  samples   on --starts evaluation starts (the endpoint protocol: VP, float64, dopri5 1e-10 reference from the same
            x_T), the per-row endpoint error of the chosen run and of the best public solver on these starts:
            RMSE, quantiles, and the rows whose error is above --far (ended elsewhere: another mode)

    .venv/bin/python benchmarks/select_diagnosis.py --seed 9030 --nfe 20   # a tail of rows the pilot did not see
    .venv/bin/python benchmarks/select_diagnosis.py --seed 9003 --nfe 10 --pilot-only  # uniform against trailing

Needs the `peers` extra. Writes results/select_diagnosis_<seed>_nfe<nfe>.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from endpoint_protocol import vp_sde  # noqa: E402
from family import describe, draw  # noqa: E402
from recommend import FROZEN, RECOMMENDED, public  # noqa: E402

from lightning_sde.samplers import SeededNoise, build_sampler  # noqa: E402
from lightning_sde.samplers.tuning import pilot_errors, select_schedule  # noqa: E402

OUT = ROOT / "benchmarks/results"
QUANTILES = (0.5, 0.9, 0.99, 0.999)


def row_errors(x, ref):
    return (x - ref).pow(2).mean(1).sqrt()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--nfe", type=int, required=True)
    parser.add_argument("--starts", type=int, default=2048)
    parser.add_argument("--far", type=float, default=0.5, help="a row error above this counts as ending elsewhere")
    parser.add_argument("--pilot-only", action="store_true", help="the pilot tables only (minutes less at 256-D)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    mixture, info = draw(args.seed)
    sde = vp_sde()
    den = mixture.denoiser(sde)
    params = {**FROZEN[RECOMMENDED], "steps": args.nfe}
    sampler = build_sampler(params.pop("name"), **params)
    lines = [f"# Select on {describe(info)}, NFE {args.nfe}", "",
             f"Command: `.venv/bin/python benchmarks/select_diagnosis.py --seed {args.seed} --nfe {args.nfe}"
             + (f" --starts {args.starts}" if args.starts != 2048 else "")
             + (" --pilot-only" if args.pilot_only else "") + "`", "",
             "## The pilot (512 rows, as select runs it)", "", "| candidate | pilot RMSE |", "|---|---:|"]
    _, _, knobs, report = select_schedule(sampler, den)
    for label, score in sorted(report["pilot_rmse_by_choice"].items(), key=lambda kv: kv[1]):
        lines.append(f"| {label}{' (chosen)' if label == report['choice'] else ''} | {score:.5g} |")
    lines += ["", "Uniform and trailing apart, with the chosen knobs:", "", "| candidate | pilot RMSE |", "|---|---:|"]
    chosen_variant = dataclasses.replace(sampler, select_over={k: [v] for k, v in knobs.items()})
    for grid in ("uniform", "trailing"):
        errors, _ = pilot_errors(chosen_variant, den, grids=(grid,))
        for label, candidate in errors.items():
            lines.append(f"| {label} | {float(candidate[-1].pow(2).mean().sqrt()):.5g} |")

    if not args.pilot_only:
        lines += samples_table(sampler, report, den, args)
    text = "\n".join(lines) + "\n"
    (OUT / f"select_diagnosis_{args.seed}_nfe{args.nfe}.md").write_text(text)
    print(text)


def samples_table(sampler, report, den, args) -> list[str]:
    sde = den.sde
    x_T = sde.prior_sample(SeededNoise(range(args.starts), den.shape, dtype=torch.float64).prior())
    ref, _ = build_sampler("ode", method="dopri5", rtol=1e-10, atol=1e-10)(den, x_T)
    runs = {f"recommended ({report['choice']})": row_errors(sampler(den, x_T)[0], ref)}
    best = None
    for name, (fn, spec) in public(args.nfe).items():
        out = fn(spec, den, x_T, args.nfe)
        if out is None or out[1] > args.nfe:
            continue
        errors = row_errors(out[0], ref)
        if torch.isfinite(errors).all() and (best is None or errors.pow(2).mean() < best[1].pow(2).mean()):
            best = (name, errors)
    runs[f"best public: {best[0]}"] = best[1]
    lines = ["", f"## On {args.starts} evaluation starts: per-row endpoint error", "",
             "| run | RMSE | " + " | ".join(f"q{q:g}" for q in QUANTILES) + f" | rows > {args.far:g} |",
             "|---|---:|" + "---:|" * (len(QUANTILES) + 1)]
    for name, errors in runs.items():
        q = torch.quantile(errors, torch.tensor(QUANTILES, dtype=errors.dtype))
        lines.append(f"| {name} | {float(errors.pow(2).mean().sqrt()):.4g} | "
                     + " | ".join(f"{v:.3g}" for v in q.tolist()) + f" | {int((errors > args.far).sum())} |")
    return lines


if __name__ == "__main__":
    main()
