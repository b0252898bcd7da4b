"""Why grid="select" chose what it did on one problem of family.py, and where the chosen run loses on the samples.

For the recommended sampler (recommend.py's RECOMMENDED) at one NFE:
  pilot     the pilot RMSE of every candidate select compares (--pilot rows, the sampler's pilot knob, against dopri5
            at 1e-6, as select runs it), and of the uniform and trailing grids apart with the chosen knobs (select
            compares only one of them)
  samples   on --starts evaluation starts (the endpoint protocol: VP, float64, dopri5 1e-10 reference from the same
            x_T), the per-row endpoint error of the chosen run and of the best public solver on these starts:
            RMSE, quantiles, and the rows whose error is above --far (ended elsewhere: another mode); with
            --every-candidate, also every candidate select compares and every public run, on the same starts

    .venv/bin/python benchmarks/select_diagnosis.py --seed 9030 --nfe 20   # a tail of rows the pilot did not see
    .venv/bin/python benchmarks/select_diagnosis.py --seed 9003 --nfe 10 --pilot-only  # uniform against trailing
    .venv/bin/python benchmarks/select_diagnosis.py --seed 9030 --nfe 20 --pilot 2048  # a 4x larger pilot
    .venv/bin/python benchmarks/select_diagnosis.py --seed 9030 --nfe 20 --starts 16384 --every-candidate

Needs the `peers` extra. Writes results/select_diagnosis_<seed>_nfe<nfe>[_pilot<rows>][_every].md.
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
from lightning_sde.samplers.grids import GRIDS  # noqa: E402
from lightning_sde.samplers.tuning import candidate_runs, pilot_errors, select_schedule  # noqa: E402

OUT = ROOT / "benchmarks/results"
QUANTILES = (0.5, 0.9, 0.99, 0.999)


def row_errors(x, ref):
    return (x - ref).pow(2).mean(1).sqrt()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--nfe", type=int, required=True)
    parser.add_argument("--starts", type=int, default=2048)
    parser.add_argument("--pilot", type=int, help="the sampler's pilot rows (default: the recommended sampler's)")
    parser.add_argument("--far", type=float, default=0.5, help="a row error above this counts as ending elsewhere")
    parser.add_argument("--every-candidate", action="store_true", help="also every candidate of select and every "
                        "public run on the evaluation starts: was the choice or the candidate set short?")
    parser.add_argument("--pilot-only", action="store_true", help="the pilot tables only (minutes less at 256-D)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    mixture, info = draw(args.seed)
    sde = vp_sde()
    den = mixture.denoiser(sde)
    params = {**FROZEN[RECOMMENDED], "steps": args.nfe, **({"pilot": args.pilot} if args.pilot else {})}
    sampler = build_sampler(params.pop("name"), **params)
    lines = [f"# Select on {describe(info)}, NFE {args.nfe}", "",
             f"Command: `.venv/bin/python benchmarks/select_diagnosis.py --seed {args.seed} --nfe {args.nfe}"
             + (f" --starts {args.starts}" if args.starts != 2048 else "")
             + (f" --pilot {args.pilot}" if args.pilot else "") + (" --every-candidate" if args.every_candidate else "")
             + (" --pilot-only" if args.pilot_only else "") + "`"]
    _, _, knobs, report = select_schedule(sampler, den)
    lines += ["", f"## The pilot ({report['pilot']} rows, as select runs it)", "", "| candidate | pilot RMSE |",
              "|---|---:|"]
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
    name = (f"select_diagnosis_{args.seed}_nfe{args.nfe}" + (f"_pilot{args.pilot}" if args.pilot else "")
            + ("_every" if args.every_candidate else ""))
    (OUT / f"{name}.md").write_text(text)
    print(text)


def samples_table(sampler, report, den, args) -> list[str]:
    sde = den.sde
    x_T = sde.prior_sample(SeededNoise(range(args.starts), den.shape, dtype=torch.float64).prior())
    ref, _ = build_sampler("ode", method="dopri5", rtol=1e-10, atol=1e-10)(den, x_T)
    runs = {f"recommended ({report['choice']})": row_errors(sampler(den, x_T)[0], ref)}
    public_runs = {}
    for name, (fn, spec) in public(args.nfe).items():
        out = fn(spec, den, x_T, args.nfe)
        if out is not None and out[1] <= args.nfe and torch.isfinite(errors := row_errors(out[0], ref)).all():
            public_runs[name] = errors
    best = min(public_runs, key=lambda name: public_runs[name].pow(2).mean())
    runs[f"best public: {best}"] = public_runs[best]
    if args.every_candidate:
        others = {f"public: {name}": errors for name, errors in public_runs.items() if name != best}
        with torch.no_grad():
            for grids in (GRIDS, ("uniform",)):  # select's candidates, and uniform where it keeps trailing
                for label, *_, x in candidate_runs(sampler, den, x_T, grids=grids):
                    others.setdefault(f"candidate: {label}", row_errors(x, ref))
        runs.update(sorted(others.items(), key=lambda kv: float(kv[1].pow(2).mean())))
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
