"""How grid="select" should choose, studied on the tuning family only: by which pilot criterion, among which
candidates.

grid="select" (lightning_sde/samplers/tuning.py) runs every named grid x the variants of `select_over` (by default
the start: T, or the Gaussian start) on a 512-row pilot and keeps the candidate closest to the ODE's solution. Each
study runs select's own pilot on every tuning problem at NFE 10 and 20 and scores what a rule picks by the pick's
RMSE over the best public solver's in results/recommend_tuning.csv (256 starts); `oracle`: the best on those starts.

  criterion   UniPC-3 x {T, Gaussian start 0.15} x 4 grids, the per-row pilot errors summarised by several criteria
              (the RMSE; robust ones). Ranked by the RMSE, a few rows in a rare component can decide the choice
              (held-out #1008: pilot RMSE uniform 0.19 < quadratic 0.35, scored 0.10 vs 0.019 on 256 starts).
  candidates  the widest set, UniPC order 2 or 3 x start T, 0.15 or 0.3 x 4 grids (24), and each smaller set
              picking by pilot RMSE within it.
  final       UniPC's final corrector (the last NFE corrects the last step at eps instead of taking one more step,
              as diffusers' UniPC on its Karras and exponential sigmas) as one more knob of select: every candidate of
              the widest set with and without it, pilot RMSE and scored RMSE on recommend.py's 256 starts against
              its dopri5 1e-10 reference (over the best public RMSE in results/recommend_tuning.csv, or
              recommend_tuning2.csv on the second tuning set). The rule for the second tuning set, written down
              before its run (2026-12-03): the corrector joins select's candidates at a budget only if there,
              "recommended + final corrector" lowers the worst ratio and raises the median by at most 2 %; then,
              and only then, the fourteenth held-out family is scored with it
  kinds       a candidate of another sampler kind at the same NFE: torchdiffeq's midpoint method (2 NFE a step) on
              the uniform and trailing grids, whose endpoint errors are light-tailed (the best public run on
              held-out #9030 at NFE 20, where no UniPC candidate matched it), on the recommended sampler's pilot:
              would the pilot ever pick it?

    .venv/bin/python benchmarks/select_study.py criterion     # 24 tuning problems (about 10 min, 2 cores)
    .venv/bin/python benchmarks/select_study.py candidates    # about 10 min
    .venv/bin/python benchmarks/select_study.py candidates --replot   # the table only
    .venv/bin/python benchmarks/select_study.py kinds         # about 5 min
    .venv/bin/python benchmarks/select_study.py final         # about 20 min
    .venv/bin/python benchmarks/select_study.py final --family tuning-2  # the second tuning set (16 problems
                                # of 64-256 D, overlapping; needs results/recommend_tuning2.csv), about 30 min

Results: results/select_<study>.csv (one problem at a time: a rerun continues), results/select_<study>.md.
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from endpoint_protocol import vp_sde  # noqa: E402
from family import TUNING_FAMILIES, draw, file_tag, oracle, tuning_family_of, tuning_study  # noqa: E402
from recommend import FROZEN, NFES, RECOMMENDED_BEFORE, TUNED_GAUSSIAN_START, config_tag, ratios  # noqa: E402

from lightning_sde.samplers import build_sampler  # noqa: E402
from lightning_sde.samplers.tuning import _pilot, candidate_runs, pilot_errors  # noqa: E402

OUT = ROOT / "benchmarks/results"


def pilot_and_scores(csv_path: Path):
    """(the study's pilot rows, {(config, budget): {seed: scored RMSE / best public's}}, the seeds it covers)."""
    with open(csv_path) as fh:
        pilot = list(csv.DictReader(fh))
    with open(OUT / "recommend_tuning.csv") as fh:
        scored, _ = ratios(list(csv.DictReader(fh)))
    return pilot, scored, sorted({r["seed"] for r in pilot}, key=int)


# --- criterion ---------------------------------------------------------------------------------------------------
SUMMARIES = {  # criterion: per-row errors -> one number (lower is better)
    "rms": lambda e: e.pow(2).mean().sqrt(),
    "rms trimmed 1%": lambda e: e.sort().values[: int(0.99 * len(e))].pow(2).mean().sqrt(),
    "rms trimmed 5%": lambda e: e.sort().values[: int(0.95 * len(e))].pow(2).mean().sqrt(),
    "mean": lambda e: e.mean(),
    "geometric mean": lambda e: e.log().mean().exp(),
    "median": lambda e: e.median(),
    "90th percentile": lambda e: e.quantile(0.9),
}
CRITERION_FIELDS = ["seed", "budget", "config", "pilot_nfe", *SUMMARIES]


def pilot_rows(seed: int, select: dict, fields_of) -> list[dict]:
    """One row per candidate of UniPC-3 grid="select" with `select`'s knobs, per NFE, on tuning problem `seed`:
    its name in recommend.py's tables, the pilot's NFE and fields_of(knobs, per-row pilot errors)."""
    den = draw(seed)[0].denoiser(vp_sde())
    rows = []
    for nfe in NFES:
        sampler = build_sampler("unipc", order=3, steps=nfe, grid="select", **select)
        candidates, pilot_nfe = pilot_errors(sampler, den)
        for grid, knobs, _, _, errors in candidates.values():
            config = config_tag(f"unipc-{knobs.get('order', 3)}", grid, knobs["gaussian_start"])
            rows.append({"seed": seed, "budget": nfe, "config": config, "pilot_nfe": pilot_nfe,
                         **fields_of(knobs, errors)})
    return rows


def criterion_problem(seed: int) -> list[dict]:
    return pilot_rows(seed, {"gaussian_start": TUNED_GAUSSIAN_START},
                      lambda knobs, errors: {name: float(f(errors)) for name, f in SUMMARIES.items()})


def criterion_summary(csv_path: Path) -> None:
    pilot, scored, seeds = pilot_and_scores(csv_path)
    lines = [f"# grid=select's pilot criterion on the tuning family ({len(seeds)} problems)", "",
             "Per criterion, the scored RMSE / best public solver's of the candidate it picks on each problem "
             "(results/recommend_tuning.csv, 256 starts); `oracle`: the best of the 8 candidates on the scored "
             "starts themselves.", ""]
    for budget in NFES:
        lines += [f"## NFE {budget}", "", "| criterion | median | worst | problems > 1 | picks = oracle's |",
                  "|---|---:|---:|---:|---:|"]
        oracle = {}
        picks = {}
        for seed in seeds:
            cands = [r for r in pilot if r["seed"] == seed and int(r["budget"]) == budget]
            oracle[seed] = min(cands, key=lambda r: scored[(r["config"], budget)][seed])["config"]
            for name in SUMMARIES:
                picks.setdefault(name, {})[seed] = min(cands, key=lambda r: float(r[name]))["config"]
        for name, chosen in [*picks.items(), ("oracle", oracle)]:
            got = [scored[(chosen[s], budget)][s] for s in seeds]
            same = sum(chosen[s] == oracle[s] for s in seeds)
            lines.append(f"| {name} | {statistics.median(got):.3f} | {max(got):.3f} | {sum(g > 1 for g in got)} | "
                         f"{same}/{len(seeds)} |")
        lines.append("")
    csv_path.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


# --- candidates --------------------------------------------------------------------------------------------------
WIDEST = {"order": (2, 3), "gaussian_start": (None, 0.15, 0.3)}
SETS = {  # label: (orders, starts)
    "UniPC-3; T, 0.15 (select before)": ((3,), (None, 0.15)),
    "UniPC-3; T, 0.15, 0.3": ((3,), (None, 0.15, 0.3)),
    "UniPC-2/3; T, 0.15": ((2, 3), (None, 0.15)),
    "UniPC-2/3; T, 0.15, 0.3": ((2, 3), (None, 0.15, 0.3)),
}
CANDIDATE_FIELDS = ["seed", "budget", "config", "order", "gaussian_start", "pilot_nfe", "pilot_rmse"]


def candidates_problem(seed: int) -> list[dict]:
    return pilot_rows(seed, {"select_over": WIDEST}, lambda knobs, errors: {
        "order": knobs["order"], "gaussian_start": knobs["gaussian_start"] or 0,
        "pilot_rmse": float(errors.pow(2).mean().sqrt())})


def candidates_summary(csv_path: Path) -> None:
    pilot, scored, seeds = pilot_and_scores(csv_path)
    lines = [f"# grid=select's candidates on the tuning family ({len(seeds)} problems)", "",
             "Per candidate set, the scored RMSE / best public solver's of the candidate the pilot RMSE picks on "
             "each problem (results/recommend_tuning.csv, 256 starts); oracle: the best of the set on the scored "
             "starts.", "", "Command: `.venv/bin/python benchmarks/select_study.py candidates`", ""]
    for budget in NFES:
        lines += [f"## NFE {budget}", "", "| candidates | pilot NFE (median) | median | worst | problems > 1 | "
                  "oracle: median, worst |", "|---|---:|---:|---:|---:|---:|"]
        for label, (orders, starts) in SETS.items():
            picks, best = [], []
            for seed in seeds:
                cands = [r for r in pilot if r["seed"] == seed and int(r["budget"]) == budget
                         and int(r["order"]) in orders and (float(r["gaussian_start"]) or None) in starts]
                pick = min(cands, key=lambda r: float(r["pilot_rmse"]))
                picks.append(scored[(pick["config"], budget)][seed])
                best.append(min(scored[(r["config"], budget)][seed] for r in cands))
            runs = len(orders) * len(starts) * 4
            widest = len(WIDEST["order"]) * len(WIDEST["gaussian_start"]) * 4
            reference = statistics.median(int(r["pilot_nfe"]) - widest * budget
                                          for r in pilot if int(r["budget"]) == budget)
            lines.append(f"| {label} ({runs}) | {reference + runs * budget:.0f} | {statistics.median(picks):.3f} | "
                         f"{max(picks):.3f} | {sum(p > 1 for p in picks)} | {statistics.median(best):.3f}, "
                         f"{max(best):.3f} |")
        lines.append("")
    csv_path.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


# --- final corrector ---------------------------------------------------------------------------------------------
FINAL_FIELDS = ["seed", "budget", "config", "order", "gaussian_start", "final_corrector", "pilot_nfe", "pilot_rmse",
                "scored_rmse", "best_public_rmse"]
FINAL_SETS = {  # label: {budget: (orders, starts, final_corrector values)}
    "recommended (select_over, and UniPC-3 from T / 0.15 from 20 steps)": {
        10: ((2, 3), (None, 0.15, 0.3), (False,)), 20: ((3,), (None, 0.15), (False,))},
    "recommended + final corrector": {10: ((2, 3), (None, 0.15, 0.3), (False, True)),
                                      20: ((3,), (None, 0.15), (False, True))},
    "recommended + final corrector, UniPC-3 only": {10: ((3,), (None, 0.15, 0.3), (False, True)),
                                                    20: ((3,), (None, 0.15), (False, True))},
    "final corrector only": {10: ((2, 3), (None, 0.15, 0.3), (True,)), 20: ((3,), (None, 0.15), (True,))},
}


def final_problem(seed: int) -> list[dict]:
    scored = OUT / f"recommend_{file_tag(tuning_family_of(seed))}.csv"
    with open(scored) as fh:
        _, best_name = ratios(list(csv.DictReader(fh)))
    with open(scored) as fh:
        best_rmse = {int(r["budget"]): float(r["rmse"]) for r in csv.DictReader(fh)
                     if r["seed"] == str(seed) and r["config"] == best_name.get((str(seed), r["budget"]))}
    den, x_T, ref, _ = oracle(seed, 256)
    rows = []
    for nfe in NFES:
        sampler = build_sampler("unipc", order=3, steps=nfe, grid="select",
                                select_over={**WIDEST, "final_corrector": (False, True)})
        candidates, pilot_nfe = pilot_errors(sampler, den)
        for grid, knobs, _, _, errors in candidates.values():
            run = build_sampler("unipc", steps=nfe, grid=grid, **knobs)
            with torch.no_grad():
                x, info = run(den, x_T)
            assert info["nfe"] == nfe, info
            config = config_tag(f"unipc-{knobs['order']}", grid, knobs["gaussian_start"])
            rows.append({"seed": seed, "budget": nfe, "config": config + " fc" * knobs["final_corrector"],
                         "order": knobs["order"], "gaussian_start": knobs["gaussian_start"] or 0,
                         "final_corrector": int(knobs["final_corrector"]), "pilot_nfe": pilot_nfe,
                         "pilot_rmse": float(errors.pow(2).mean().sqrt()),
                         "scored_rmse": float((x - ref).pow(2).mean().sqrt()), "best_public_rmse": best_rmse[nfe]})
    return rows


def final_summary(csv_path: Path) -> None:
    with open(csv_path) as fh:
        pilot = list(csv.DictReader(fh))
    seeds = sorted({r["seed"] for r in pilot}, key=int)
    family = tuning_family_of(int(seeds[0]))
    lines = [f"# UniPC's final corrector as a knob of select, on the {family} family ({len(seeds)} problems)", "",
             "Per candidate set, the scored RMSE (256 starts, dopri5 1e-10 reference) / the best public solver's "
             f"(results/recommend_{file_tag(family)}.csv, same starts) of the candidate the pilot RMSE picks on "
             "each problem; oracle: the best of the set on the scored starts.", "",
             f"Command: `.venv/bin/python benchmarks/select_study.py final --family {family}`", ""]
    for budget in NFES:
        lines += [f"## NFE {budget}", "", "| candidates | pilot NFE (median) | median | worst | problems > 1 | "
                  "picks with the final corrector | oracle: median, worst |", "|---|---:|---:|---:|---:|---:|---:|"]
        rows = [r for r in pilot if int(r["budget"]) == budget]
        ratio = lambda r: float(r["scored_rmse"]) / float(r["best_public_rmse"])  # noqa: E731
        for label, by_budget in FINAL_SETS.items():
            orders, starts, finals = by_budget[budget]
            picks, best, cost, fc = [], [], [], 0
            for seed in seeds:
                runs = [r for r in rows if r["seed"] == seed]
                cands = [r for r in runs if int(r["order"]) in orders and (float(r["gaussian_start"]) or None) in starts
                         and bool(int(r["final_corrector"])) in finals]
                pick = min(cands, key=lambda r: float(r["pilot_rmse"]))
                picks.append(ratio(pick))
                fc += int(pick["final_corrector"])
                best.append(min(map(ratio, cands)))
                reference = int(runs[0]["pilot_nfe"]) - len(runs) * budget  # the widest set's pilot ran every run
                cost.append(reference + len(cands) * budget)
            lines.append(f"| {label} | {statistics.median(cost):.0f} | {statistics.median(picks):.3f} | "
                         f"{max(picks):.3f} | {sum(p > 1 for p in picks)} | {fc} / {len(seeds)} | "
                         f"{statistics.median(best):.3f}, {max(best):.3f} |")
        lines.append("")
    csv_path.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


# --- kinds -------------------------------------------------------------------------------------------------------
KINDS_SELECT = RECOMMENDED_BEFORE[0]  # the recommended sampler when the kinds study ran (24 candidates at both NFE)
OTHER_KINDS = {f"midpoint {grid}": dict(name="ode", method="midpoint", grid=grid) for grid in ("uniform", "trailing")}
KINDS_FIELDS = ["seed", "budget", "best_candidate", "best_pilot_rmse", *OTHER_KINDS]


def kinds_problem(seed: int) -> list[dict]:
    den = draw(seed)[0].denoiser(vp_sde())
    rows = []
    for nfe in NFES:
        params = {**FROZEN[KINDS_SELECT], "steps": nfe}
        sampler = build_sampler(params.pop("name"), **params)
        rows_den, noise, x_T, ref, _ = _pilot(sampler, den, None, 1e-6)
        rmse = lambda x: float((x - ref).pow(2).mean().sqrt())  # noqa: E731
        with torch.no_grad():
            pilot = {label: rmse(x) for label, *_, x in candidate_runs(sampler, rows_den, x_T, noise)}
            others = {}
            for label, spec in OTHER_KINDS.items():
                other = build_sampler(**spec).at_nfe(nfe)
                others[label] = rmse(other(rows_den, x_T)[0])
        best = min(pilot, key=pilot.get)
        rows.append({"seed": seed, "budget": nfe, "best_candidate": best, "best_pilot_rmse": pilot[best], **others})
    return rows


def kinds_summary(csv_path: Path) -> None:
    with open(csv_path) as fh:
        pilot = list(csv.DictReader(fh))
    lines = [f"# Another sampler kind as a candidate of select, on the tuning family ({len(pilot) // len(NFES)} "
             "problems)", "", f"{KINDS_SELECT}'s pilot (512 rows): its best candidate's pilot RMSE against the "
             "midpoint method's at the same NFE on the same rows.", "",
             "Command: `.venv/bin/python benchmarks/select_study.py kinds`", ""]
    for budget in NFES:
        rows = [r for r in pilot if int(r["budget"]) == budget]
        lines += [f"## NFE {budget}", "", "| other kind | pilot RMSE / select's best: median | lowest | "
                  "problems where it would be picked |", "|---|---:|---:|---:|"]
        for label in OTHER_KINDS:
            over = [float(r[label]) / float(r["best_pilot_rmse"]) for r in rows]
            lines.append(f"| {label} | {statistics.median(over):.2f} | {min(over):.2f} | "
                         f"{sum(v < 1 for v in over)} / {len(over)} |")
        lines.append("")
    csv_path.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


STUDIES = {"criterion": (CRITERION_FIELDS, criterion_problem, criterion_summary),
           "candidates": (CANDIDATE_FIELDS, candidates_problem, candidates_summary),
           "kinds": (KINDS_FIELDS, kinds_problem, kinds_summary),
           "final": (FINAL_FIELDS, final_problem, final_summary)}


if __name__ == "__main__":
    study = sys.argv.pop(1) if len(sys.argv) > 1 and sys.argv[1] in STUDIES else None
    if study is None:
        print(f"usage: select_study.py {{{','.join(STUDIES)}}} [--family NAME] [--replot]\n\n{__doc__}")
        sys.exit(0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2)
    fields, problem, summary = STUDIES[study]
    tuning_study(__doc__, OUT / f"select_{study}.csv", fields, problem, summary,
                 TUNING_FAMILIES if study == "final" else ("tuning",))
