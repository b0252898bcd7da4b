"""The Sampler contract, held by every registered sampler: the step callback and the progress bar, budgets set
through at_nfe / at_tolerance, the Gaussian start and explicit times resolved in one place, grid tuning counted as
set-up and cached per model weights, and the shared sample path's per-batch NFE."""

import dataclasses

import pytest
import torch

from helpers.convergence import GAUSSIAN
from helpers.oracles import SDES, counting_denoiser
from lightning_sde.exact import eight_gaussians
from lightning_sde.generation import generate
from lightning_sde.samplers import SAMPLERS, build_sampler, sample, time_grid
from lightning_sde.samplers import schedule as schedule_module
from lightning_sde.samplers.grids import GRIDS, start_time

MIX = eight_gaussians()
FIXED_STEPS = {name for name, cls in SAMPLERS.items() if not build_sampler(name).adaptive}


def small(name: str, **params):
    """Every sampler, cheaply: 6 steps for fixed-step ones, loose tolerances for adaptive ones."""
    if name in FIXED_STEPS or params.get("method") == "rk4":
        return build_sampler(name, **{"steps": 6, **params})
    return build_sampler(name, **{"rtol": 1e-3, "atol": 1e-3, **params})


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_reports_each_step_and_its_nfe_to_the_callback_and_bar(name, capsys):
    den = MIX.denoiser(SDES["vp"])
    seen = []
    x, info = sample(small(name), den, range(8), dtype=torch.float64, callback=seen.append, progress=True)
    assert info["nfe"] == den.nfe and torch.isfinite(x).all()
    assert [s["i"] for s in seen] == list(range(len(seen))) and len(seen) >= 1
    assert float(seen[-1]["t"]) == pytest.approx(SDES["vp"].eps)  # the last step reaches eps
    assert torch.equal(seen[-1]["x"], x)
    if name in FIXED_STEPS:
        assert len(seen) == 6
    else:
        assert len(seen) == info["n_accept"]  # one report per accepted step
    assert "nfe" in capsys.readouterr().err  # the bar counts NFE


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_budgets_come_from_the_contract(name):
    sampler = build_sampler(name)
    if sampler.adaptive:
        tuned = sampler.at_tolerance(1e-4)
        assert tuned.rtol == tuned.atol == 1e-4 and tuned is not sampler
        with pytest.raises(ValueError, match="adaptive"):
            sampler.at_nfe(10)
        with pytest.raises(ValueError, match="measured"):
            _ = sampler.nfe_per_step
    else:
        budgeted = sampler.at_nfe(12)
        assert budgeted.steps == 12 // sampler.nfe_per_step and budgeted.steps * budgeted.nfe_per_step <= 12
        assert sampler.at_nfe(sampler.nfe_per_step - 1) is None
        with pytest.raises(ValueError, match="fixed number of steps"):
            sampler.at_tolerance(1e-3)
        for denoise in (False, True):  # budget_nfe and at_nfe: one rule, each the other's inverse
            with_denoise = dataclasses.replace(sampler, denoise=denoise)
            for n in range(1, 14):
                fits = with_denoise.at_nfe(n)
                if fits is None:
                    assert with_denoise.budget_nfe(1) > n
                else:
                    assert fits.budget_nfe() <= n < fits.budget_nfe(fits.steps + 1)
            spent = sample(with_denoise.at_nfe(12), MIX.denoiser(SDES["vp"]), range(4))[1]["nfe"]  # counted
            assert spent == with_denoise.at_nfe(12).budget_nfe() and 12 - sampler.nfe_per_step < spent <= 12


def test_ode_budgets_follow_its_method():
    assert build_sampler("ode", method="rk4").at_nfe(12).steps == 3
    assert build_sampler("ode").adaptive and not build_sampler("ode", method="rk4").adaptive


def test_a_fixed_ode_method_refuses_the_knobs_it_would_ignore():
    """rtol/atol/first_step steer an adaptive method only: given to rk4 they would key result rows of one
    computation as different cells; adaptive methods refuse steps likewise."""
    with pytest.raises(ValueError, match=r"^ode: rtol=0.001, first_step=0.1 would be ignored: rtol/atol/first_step "
                                         r"apply to adaptive methods \(dopri5, .*\); fixed-grid method 'rk4' "
                                         r"takes steps$"):
        build_sampler("ode", method="rk4", rtol=1e-3, first_step=0.1)
    with pytest.raises(ValueError, match=r"^ode: atol=0.01 would be ignored"):
        build_sampler("ode", method="euler", steps=10, atol=1e-2)
    assert build_sampler("ode", method="rk4", rtol=1e-5).steps == 100
    # null is "not used" (the docs: rk4 takes no tolerance); the same parameters, so the same result keys
    assert build_sampler("ode", method="rk4", rtol=None, atol=None, first_step=None).params() == \
        build_sampler("ode", method="rk4").params()
    with pytest.raises(ValueError, match=r"^ode: rtol must be a number in \(0, 1\); got None$"):
        build_sampler("ode", rtol=None)
    with pytest.raises(ValueError, match="is adaptive and takes rtol/atol, not steps"):
        build_sampler("ode", method="dopri5", steps=10)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_takes_the_gaussian_start(name):
    sde = SDES["vp"]
    den = MIX.denoiser(sde)
    start = den.data_moments.start_time(sde, 0.15)
    calls = []
    den.net.register_forward_hook(lambda module, args, out: calls.append(float(args[1].max())))
    x, info = sample(small(name, gaussian_start=0.15), den, range(8), dtype=torch.float64)
    assert info["start_time"] == pytest.approx(start) and 0.6 < start < 0.9
    assert max(calls) <= start + 1e-12, "no evaluation before the start time"
    assert len(calls) == info["nfe"] and torch.isfinite(x).all()


@pytest.mark.parametrize("name", sorted(FIXED_STEPS | {"ode"}))
def test_explicit_times_are_followed_exactly(name):
    sde = SDES["vp"]
    den = MIX.denoiser(sde)
    times = time_grid(sde, 6, "quadratic")
    params = {"method": "euler"} if name == "ode" else {}
    queried = []
    den.net.register_forward_hook(lambda module, args, out: queried.append(float(args[1][0])))
    sample(build_sampler(name, steps=6, times=times.tolist(), **params), den, range(4), dtype=torch.float64)
    assert {round(t, 12) for t in queried} <= {round(float(t), 12) for t in times}

@pytest.mark.slow
def test_grid_tuning_is_set_up_counted_apart_and_cached_per_weights():
    sde = SDES["vp"]
    den = MIX.denoiser(sde)
    schedule_module._tuned.clear()
    sampler = build_sampler("dpmpp", steps=6, grid="optimized")
    x, info = sample(sampler, den, range(16), dtype=torch.float64)
    assert info["nfe"] == 6 and info["setup_nfe"] > 0 and den.nfe == 6 + info["setup_nfe"]
    again, info2 = sample(sampler, den, range(16), dtype=torch.float64)
    assert info2["nfe"] == 6 and "setup_nfe" not in info2 and info2["tuning"]["cached"]  # same weights: cached
    assert torch.equal(x, again)
    denoised, info4 = sample(dataclasses.replace(sampler, denoise=True), den, range(16), dtype=torch.float64)
    assert info4["tuning"]["cached"] and info4["nfe"] == 7  # its pilot runs before any denoising: the same grid
    assert torch.equal(denoised, den(x, sde.eps).x0)
    other = eight_gaussians(radius=3.0).denoiser(sde)  # other "weights": tuned anew, never the first grid
    _, info3 = sample(sampler, other, range(16), dtype=torch.float64)
    assert info3["setup_nfe"] > 0


def test_a_network_without_tensors_is_tuned_for_itself_each_time():
    """Two plain functions (two models that hold no tensors) share no cached selection: nothing tells them apart."""
    from lightning_sde.models.denoiser import Denoiser

    sde = SDES["vp"]
    schedule_module._tuned.clear()
    sampler = build_sampler("unipc", steps=6, grid="select", pilot=32)
    for mixture in (eight_gaussians(), eight_gaussians(radius=2.0)):
        den = Denoiser(lambda x, t, m=mixture: m.marginal_score(sde, x, t), sde, "score", shape=(2,))
        assert den.fingerprint() is None
        for _ in range(2):
            _, info = sample(sampler, den, range(4), dtype=torch.float64)
            assert info["setup_nfe"] > 0 and not info["selection"].get("cached")
    assert eight_gaussians().denoiser(sde).fingerprint() != eight_gaussians(radius=2.0).denoiser(sde).fingerprint()


def test_the_fingerprint_follows_the_weights():
    net = torch.nn.Linear(2, 2)
    from lightning_sde.models.denoiser import Denoiser

    den = Denoiser(lambda x, t: net(x), SDES["vp"], "eps", shape=(2,))
    module = Denoiser(net, SDES["vp"], "eps", shape=(2,))
    before = module.fingerprint()
    with torch.no_grad():
        net.weight.add_(1e-3)  # an optimiser step
    assert module.fingerprint() != before and den.fingerprint() == den.fingerprint()


def test_generate_reports_the_nfe_of_each_batch_not_their_sum():
    den = MIX.denoiser(SDES["vp"])
    whole = generate(build_sampler("ddim", steps=7), den, range(10), batch_size=10, device="cpu")
    batched = generate(build_sampler("ddim", steps=7), den, range(10), batch_size=3, device="cpu")
    assert whole.nfe_per_batch == [7] and batched.nfe_per_batch == [7, 7, 7, 7] and batched.nfe == 7
    torch.testing.assert_close(batched.x, whole.x, rtol=1e-6, atol=1e-6)
    assert batched.n_nonfinite == 0 and batched.world_size == 1


def test_params_round_trip_through_the_constructor():
    for name in SAMPLERS:
        sampler = build_sampler(name)
        fields = {f.name for f in dataclasses.fields(sampler) if f.init}
        assert type(sampler)(**{k: v for k, v in sampler.params().items() if k in fields}) == sampler


@pytest.mark.parametrize("method, iters", [("adam", 8), ("powell", 30)])
def test_a_small_grid_tuning_run_improves_its_pilot_and_reports_what_it_cost(method, iters):
    """A fast twin of the tuning tests: the grid found reproduces its reported pilot error when a sampler runs on it
    from the pilot's seeds, it is no worse than the best named grid it started from, and its cost is what the
    Denoiser counted."""
    from lightning_sde.samplers.grids import GRIDS
    from lightning_sde.samplers.tuning import PILOT_SEED, optimize_grid

    sde = SDES["vp"]
    den = MIX.denoiser(sde)
    sampler = build_sampler("dpmpp", steps=5, grid="uniform")
    times, report = optimize_grid(sampler, den, pilot=32, iters=iters, method=method)
    assert len(times) == 6 and float(times[0]) == sde.T and float(times[-1]) == sde.eps
    assert bool((times[1:] < times[:-1]).all())
    assert report["pilot"] == 32 and report["iters"] == iters and report["method"] == method
    assert report["init"] in GRIDS and report["pilot_nfe"] == den.nfe > 0
    assert report["pilot_rmse_final"] <= report["pilot_rmse_init"]
    seeds = range(PILOT_SEED, PILOT_SEED + 32)
    ref, _ = sample(build_sampler("ode", rtol=1e-6, atol=1e-6, first_step=0.01), den, seeds, dtype=torch.float64)
    x, _ = sample(build_sampler("dpmpp", steps=5, times=times.tolist()), den, seeds, dtype=torch.float64)
    assert (x - ref).pow(2).mean().sqrt().item() == pytest.approx(report["pilot_rmse_final"], rel=1e-6)
    init = time_grid(sde, 5, report["init"])
    x0, _ = sample(build_sampler("dpmpp", steps=5, times=init.tolist()), den, seeds, dtype=torch.float64)
    assert (x0 - ref).pow(2).mean().sqrt().item() == pytest.approx(report["pilot_rmse_init"], rel=1e-6)


def test_grid_tuning_from_several_starts_keeps_the_best_of_their_runs():
    """starts=k tunes from each of the k best named grids on the pilot (the loss has several basins) and returns the
    run with the lowest pilot error after tuning: each start's error is that of a one-start run from that grid, and the
    times returned are the winner's."""
    from lightning_sde.samplers.grids import GRIDS
    from lightning_sde.samplers.tuning import optimize_grid

    den = MIX.denoiser(SDES["vp"])
    sampler = build_sampler("unipc", order=3, steps=5, grid="uniform")
    times, report = optimize_grid(sampler, den, pilot=32, iters=6, starts=3)
    by_start = report["pilot_rmse_by_start"]
    named = {g: optimize_grid(sampler, den, pilot=32, iters=0, inits=(g,))[1]["pilot_rmse_init"] for g in GRIDS}
    assert set(by_start) == set(sorted(named, key=named.get)[:3])
    single = {g: optimize_grid(sampler, den, pilot=32, iters=6, inits=(g,)) for g in by_start}
    assert {g: r["pilot_rmse_final"] for g, (_, r) in single.items()} == pytest.approx(by_start, rel=1e-12)
    assert len(set(by_start.values())) == 3  # the starts end apart, so the choice below is a real one
    assert report["init"] == min(by_start, key=by_start.get) != min(named, key=named.get)  # not the first start
    assert report["pilot_rmse_final"] == min(by_start.values())
    assert torch.equal(times, single[report["init"]][0])
    with pytest.raises(ValueError, match="starts must be an integer >= 1"):
        optimize_grid(sampler, den, pilot=4, iters=1, starts=0)


def test_grid_tuning_with_a_holdout_tunes_on_some_pilot_rows_and_chooses_on_the_others():
    """holdout=h: Adam descends the error of the pilot's first rows and keeps the iterate (and the start) whose error
    on its last h of the rows is lowest: the reported errors are those rows', recomputed here through the public
    sampler, and they never rise as Adam runs longer (here the rows it descends on improve for 3 steps, the others
    for one)."""
    from lightning_sde.samplers.grids import GRIDS
    from lightning_sde.samplers.tuning import PILOT_SEED, optimize_grid

    sde = SDES["vp"]
    den = MIX.denoiser(sde)
    sampler = build_sampler("unipc", order=3, steps=5, grid="uniform")
    seeds = range(PILOT_SEED, PILOT_SEED + 32)
    ref, _ = sample(build_sampler("ode", rtol=1e-6, atol=1e-6, first_step=0.01), den, seeds, dtype=torch.float64)

    def rmse(times, rows):
        x, _ = sample(build_sampler("unipc", order=3, steps=5, times=times.tolist()), den, seeds, dtype=torch.float64)
        return (x - ref)[rows].pow(2).mean().sqrt().item()

    held = slice(24, 32)
    named = {g: rmse(time_grid(sde, 5, g), held) for g in GRIDS}
    runs = [optimize_grid(sampler, den, pilot=32, iters=k, holdout=0.25) for k in range(1, 5)]
    times, report = runs[-1]
    assert report["holdout_rows"] == 8 and report["init"] == min(named, key=named.get)
    assert report["pilot_rmse_init"] == pytest.approx(named[report["init"]], rel=1e-6)
    assert report["pilot_rmse_final"] == pytest.approx(rmse(times, held), rel=1e-6)
    finals = [r["pilot_rmse_final"] for _, r in runs]
    assert all(b <= a for a, b in zip(finals, finals[1:])) and finals[-1] < report["pilot_rmse_init"]
    times, report = optimize_grid(sampler, den, pilot=32, iters=30, method="powell", holdout=0.25)
    assert report["pilot_rmse_final"] == pytest.approx(rmse(times, held), rel=1e-6)
    assert report["pilot_rmse_final"] <= named[report["init"]]
    for bad in (True, -0.1, 1.0, "0.5"):
        with pytest.raises(ValueError, match="holdout must be a fraction in"):
            optimize_grid(sampler, den, pilot=4, iters=1, holdout=bad)
    nfe = den.nfe
    with pytest.raises(ValueError, match="leaves no row to tune or to choose with"):
        optimize_grid(sampler, den, pilot=4, iters=1, holdout=0.05)
    assert den.nfe == nfe  # refused before the pilot's reference solve


def test_grid_tuning_from_a_gaussian_start_begins_at_its_start_time_with_adam_by_default():
    """With gaussian_start the pilot starts at t* from the Gaussian's sample (not at T): the reported starting error
    is that of the best named grid from t*, recomputed here through the public sampler; Adam is the default."""
    from lightning_sde.samplers.tuning import PILOT_SEED, optimize_grid

    sde = SDES["vp"]
    den = MIX.denoiser(sde)
    t_star = den.data_moments.start_time(sde, 0.15)
    sampler = build_sampler("dpmpp", steps=5, grid="uniform", gaussian_start=0.15)
    times, report = optimize_grid(sampler, den, pilot=32, iters=3)
    assert report["method"] == "adam" and float(times[0]) == pytest.approx(t_star) and float(times[-1]) == sde.eps
    seeds = range(PILOT_SEED, PILOT_SEED + 32)
    ref, _ = sample(build_sampler("ode", rtol=1e-6, atol=1e-6, first_step=0.01), den, seeds, dtype=torch.float64)
    init = time_grid(sde, 5, report["init"], start=t_star)
    x0, _ = sample(build_sampler("dpmpp", steps=5, times=init.tolist(), gaussian_start=0.15), den, seeds,
                   dtype=torch.float64)
    assert (x0 - ref).pow(2).mean().sqrt().item() == pytest.approx(report["pilot_rmse_init"], rel=1e-6)
    assert report["pilot_rmse_final"] <= report["pilot_rmse_init"]
    with pytest.raises(ValueError, match="tunes deterministic fixed-step samplers"):
        optimize_grid(build_sampler("euler_maruyama", steps=4), den, pilot=4, iters=1)
    with pytest.raises(ValueError, match="tunes deterministic fixed-step samplers"):
        optimize_grid(build_sampler("ode", method="dopri5"), den, pilot=4, iters=1)


def test_the_tuned_grid_cache_holds_one_grid_per_weights_and_settings_and_stays_bounded(monkeypatch):
    from lightning_sde.samplers import schedule

    calls = []
    monkeypatch.setattr(schedule, "optimize_grid", lambda s, d: (calls.append((s.name, s.steps)) or (
        time_grid(d.sde, s.steps, "uniform"), {"pilot_nfe": 7})))
    monkeypatch.setattr(schedule, "TUNED_CACHE_SIZE", 2)
    schedule._tuned.clear()
    den = MIX.denoiser(SDES["vp"])
    a, b = build_sampler("ddim", steps=4, grid="optimized"), build_sampler("ddim", steps=5, grid="optimized")
    times, report = schedule.tuned(a, den, schedule.optimize_grid)
    assert report.keys() == {"pilot_nfe", "wall_s"} and report["pilot_nfe"] == 7 and len(times) == 5
    assert schedule.tuned(a, den, schedule.optimize_grid)[1] == {**report, "cached": True}  # what it cost then
    schedule.tuned(b, den, schedule.optimize_grid)
    sampler6 = build_sampler("ddim", steps=6, grid="optimized")
    schedule.tuned(sampler6, den, schedule.optimize_grid)  # evicts the oldest (a)
    schedule.tuned(a, den, schedule.optimize_grid)
    assert calls == [("ddim", 4), ("ddim", 5), ("ddim", 6), ("ddim", 4)] and len(schedule._tuned) == 2
    info = sample(a, den, range(3))[1]
    assert info["nfe"] == 4 and "setup_nfe" not in info and info["tuning"]["cached"]


def test_select_over_chooses_other_knobs_on_the_pilot_and_runs_the_chosen_variant():
    """select_over={"order": [1, 3], "gaussian_start": [None, 0.15]}: 4 grids x 4 variants on the pilot; the sampler
    then runs the winner (its order, its start), exactly as that sampler configured by hand would."""
    from lightning_sde.samplers.tuning import select_schedule

    sde = SDES["vp"]
    den = MIX.denoiser(sde)
    over = {"order": [1, 3], "gaussian_start": [None, 0.15]}
    sampler = build_sampler("unipc", steps=6, order=3, grid="select", select_over=over)
    assert sampler.select_over == {"order": (1, 3), "gaussian_start": (None, 0.15)}
    _, _, knobs, report = select_schedule(sampler, den, pilot=64)
    choices = report["pilot_rmse_by_choice"]
    assert len(choices) == 4 * (len(GRIDS) - 1) and len(set(choices.values())) == len(choices)  # trailing, not uniform
    assert report["pilot_rmse"] == min(choices.values()) and set(knobs) == {"order", "gaussian_start"}
    x, info = sample(sampler, den, range(8), dtype=torch.float64)
    chosen = info["selection"]
    t0 = info.get("start_time", sde.T)
    explicit = build_sampler("unipc", steps=6, order=chosen["order"], gaussian_start=chosen["gaussian_start"],
                             times=time_grid(sde, 6, chosen["grid"], start=t0).tolist())
    torch.testing.assert_close(x, sample(explicit, den, range(8), dtype=torch.float64)[0])
    # forcing each order through select_over alone: the runs differ, so the chosen order is the one that ran
    runs = [sample(build_sampler("unipc", steps=6, order=3, grid="select", select_over={"order": [k]}), den,
                   range(8), dtype=torch.float64)[0] for k in (1, 3)]
    assert (runs[0] - runs[1]).abs().max() > 1e-3


def test_select_over_from_steps_sets_the_candidates_per_budget():
    """select_over_from_steps={6: ...}: below 6 steps select compares select_over's variants, from 6 on the entry's
    (the largest key <= steps), and the run is the chosen candidate of that set; at_nfe moves between them."""
    from lightning_sde.samplers.tuning import select_schedule

    den = MIX.denoiser(SDES["vp"])
    wide, narrow = {"order": [1, 2, 3]}, {"order": [1]}
    sampler = build_sampler("unipc", steps=4, order=3, grid="select", select_over=wide,
                            select_over_from_steps={6: narrow, 9: {"order": [1, 3]}})

    def knobs_of(sampler):
        return {tuple(c.split(", ")[1:]) for c in select_schedule(sampler, den, pilot=32)[3]["pilot_rmse_by_choice"]}

    assert knobs_of(sampler) == {("order=1",), ("order=2",), ("order=3",)}
    assert knobs_of(sampler.at_nfe(6)) == knobs_of(sampler.at_nfe(8)) == {("order=1",)}
    assert knobs_of(sampler.at_nfe(12)) == {("order=1",), ("order=3",)}
    x = sample(sampler.at_nfe(7), den, range(8), dtype=torch.float64)[0]
    by_hand = build_sampler("unipc", steps=7, order=1, grid="select")
    torch.testing.assert_close(x, sample(by_hand, den, range(8), dtype=torch.float64)[0])


@pytest.mark.parametrize("name, params, message", [
    ("unipc", {"grid": "logsnr", "select_over": {"order": [2]}}, "select_over needs grid='select'"),
    ("unipc", {"grid": "logsnr", "select_over_from_steps": {8: {"order": [2]}}},
     "select_over_from_steps needs grid='select'"),
    ("unipc", {"grid": "select", "select_over_from_steps": {0: {"order": [2]}}}, "keys must be step counts"),
    ("unipc", {"grid": "select", "select_over_from_steps": {"8": {"order": [2]}}}, "keys must be step counts"),
    ("unipc", {"grid": "select", "select_over_from_steps": {}}, "must be a non-empty mapping {least steps"),
    ("unipc", {"grid": "select", "select_over_from_steps": {8: {"order": [2, 9]}}},
     "select_over_from_steps\\[8\\] candidate {'order': 9}: unipc: order must be one of"),
    ("unipc", {"grid": "select", "select_over": {}}, "select_over must be a non-empty mapping"),
    ("unipc", {"grid": "select", "select_over": {"steps": [4, 5]}}, "select_over cannot vary 'steps'"),
    ("unipc", {"grid": "select", "select_over": {"order": []}}, "select_over\\['order'\\] must be a non-empty list"),
    ("unipc", {"grid": "select", "select_over": {"order": 2}}, "must be a non-empty list"),
    ("unipc", {"grid": "select", "select_over": {"order": [2, 7]}}, "order must be one of"),
    ("unipc", {"grid": "select", "select_over": {"gaussian_start": [None, -1]}},
     "candidate {'gaussian_start': -1}: unipc: gaussian_start must be a ratio > 0"),
    ("unipc", {"grid": "select", "select_over": {"order": [2, 2]}}, "select_over\\['order'\\] lists a value twice"),
    ("ddim", {"grid": "select", "select_over": {"eta": [0.0, 1.0]}},
     "candidate {'eta': 1.0}: ddim: grid='select' tunes deterministic samplers against the ODE's solution; this one "
     "draws noise"),
    ("ode", {"method": "euler", "grid": "select", "select_over": {"method": ["euler", "rk4"]}},
     "candidate {'method': 'rk4'} costs 4 NFE a step, not 1"),
])
def test_select_over_is_checked_on_construction(name, params, message):
    with pytest.raises(ValueError, match=message):
        build_sampler(name, steps=6, **params)


def test_select_over_needs_a_fixed_step_sampler_and_a_start_it_can_take():
    with pytest.raises(ValueError, match="^ode: select_over chooses among fixed-step runs"):
        build_sampler("ode", method="dopri5", select_over={"rtol": [1e-3, 1e-4]})
    with pytest.raises(ValueError, match="^ode: select_over_from_steps chooses among fixed-step runs"):
        build_sampler("ode", method="dopri5", select_over_from_steps={8: {"rtol": [1e-3, 1e-4]}})
    from lightning_sde.samplers.tuning import select_variants

    den = counting_denoiser(GAUSSIAN, "vp")[0]  # no data_moments: Gaussian starts are left out
    sampler = build_sampler("unipc", steps=6, grid="select", select_over={"gaussian_start": [None, 0.15]})
    assert [knobs for knobs, _ in select_variants(sampler, den)] == [{"gaussian_start": None}]
    with pytest.raises(ValueError, match="every select_over candidate starts from a Gaussian start"):
        select_variants(dataclasses.replace(sampler, select_over={"gaussian_start": (0.15, 0.3)}), den)


def test_grid_select_runs_the_named_grid_and_start_that_did_best_on_the_pilot():
    from lightning_sde.samplers.tuning import PILOT_SEED, select_schedule

    sde = SDES["vp"]
    den = MIX.denoiser(sde)
    sampler = build_sampler("unipc", steps=6, order=3, grid="select", gaussian_start=0.15)
    start, times, knobs, report = select_schedule(sampler, den, pilot=64)
    choices = report["pilot_rmse_by_choice"]
    assert len(choices) == 2 * (len(GRIDS) - 1) and report["pilot_rmse"] == min(choices.values())
    assert len(set(choices.values())) == len(choices)  # every candidate was really run
    assert (start < sde.T) == (knobs["gaussian_start"] == 0.15) and report["gaussian_start"] == knobs["gaussian_start"]
    named = time_grid(sde, 6, report["grid"], start=start)
    torch.testing.assert_close(times, named)
    # the reported pilot errors are the candidates' own, measured here apart against dopri5 on the pilot seeds
    seeds = range(PILOT_SEED, PILOT_SEED + 64)
    ref, _ = sample(build_sampler("ode", rtol=1e-6, atol=1e-6, first_step=0.01), den, seeds, dtype=torch.float64)
    for grid, gs in (("trailing", None), ("karras", 0.15)):
        t0 = start_time(build_sampler("unipc", steps=6, gaussian_start=gs), den)
        x, _ = sample(build_sampler("unipc", steps=6, order=3, gaussian_start=gs,
                                    times=time_grid(sde, 6, grid, start=t0).tolist()), den, seeds, dtype=torch.float64)
        key = f"{grid}, gaussian_start={gs}"
        assert (x - ref).pow(2).mean().sqrt().item() == pytest.approx(choices[key], rel=1e-6)
    # from T only, without gaussian_start
    assert len(select_schedule(build_sampler("ddim", steps=4, grid="select"), den, pilot=8)[3][
        "pilot_rmse_by_choice"]) == len(GRIDS) - 1
    # without data moments the Gaussian start is no candidate
    bare = type(den)(den.net, sde, den.parameterization, den.shape)
    assert all(key.endswith("=None") for key in select_schedule(sampler, bare, pilot=8)[3]["pilot_rmse_by_choice"])
    # the sampler runs that choice, reports its set-up NFE apart, and matches explicit times
    x, info = sample(sampler, den, range(8), dtype=torch.float64)
    chosen = info["selection"]
    assert info["nfe"] == 6 and (info.get("setup_nfe", 0) > 0) != bool(chosen.get("cached"))
    t0 = info.get("start_time", sde.T)
    explicit = build_sampler("unipc", steps=6, order=3, times=time_grid(sde, 6, chosen["grid"], start=t0).tolist(),
                             gaussian_start=chosen["gaussian_start"])
    torch.testing.assert_close(x, sample(explicit, den, range(8), dtype=torch.float64)[0])
    # the sampler's pilot knob sets the pilot's rows: the same candidates, scored on 16 rows instead of 64
    small = select_schedule(dataclasses.replace(sampler, pilot=16), den)[3]
    assert small["pilot"] == 16 and set(small["pilot_rmse_by_choice"]) == set(choices)
    assert small["pilot_rmse_by_choice"] != choices
    with pytest.raises(ValueError, match="tunes deterministic fixed-step samplers"):
        select_schedule(build_sampler("euler_maruyama", steps=4), den, pilot=4)


def test_pilot_batch_bounds_the_rows_of_each_network_call_and_keeps_the_choice():
    """pilot_batch=24 on a 64-row pilot: the network sees 24 + 24 + 16 rows where it saw 64, with the same candidates'
    errors, the same choice and the same set-up NFE (one evaluation over all rows is one NFE); the tuning cache
    treats the two as one setting."""
    from lightning_sde.models.denoiser import Denoiser
    from lightning_sde.samplers.tuning import select_schedule

    class RowsSeen(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.rows = net, []

        def forward(self, x, t):
            self.rows.append(len(x))
            return self.net(x, t)

    exact = MIX.denoiser(SDES["vp"])
    den = Denoiser(RowsSeen(exact.net), exact.sde, "score", exact.shape, data_moments=exact.data_moments)
    sampler = build_sampler("unipc", steps=6, order=3, grid="select", gaussian_start=0.15, pilot=64)
    whole = select_schedule(sampler, den)[3]
    assert set(den.net.rows) == {64}
    den.net.rows.clear()
    chunked = select_schedule(dataclasses.replace(sampler, pilot_batch=24), den)[3]
    assert set(den.net.rows) == {24, 16} and den.net.rows.count(24) == 2 * den.net.rows.count(16)
    assert chunked["choice"] == whole["choice"] and chunked["pilot_nfe"] == whole["pilot_nfe"]
    assert chunked["pilot_rmse_by_choice"] == pytest.approx(whole["pilot_rmse_by_choice"], rel=1e-9)
    assert den.net_batch is None  # the caller's denoiser is left as it was
    schedule_module._tuned.clear()
    sample(sampler, den, range(4))
    assert sample(dataclasses.replace(sampler, pilot_batch=24), den, range(4))[1]["selection"]["cached"]


def test_select_leaves_out_a_grid_the_sde_cannot_hold():
    """The trailing grid needs start / steps > eps: with eps = 0.25, 4 steps from T = 1 would put its last two
    points on 0.25; select runs the other grids, uniform in its place (and a named trailing grid fails, naming the
    limit). Where trailing fits, uniform is left out (grids.select_grids)."""
    from lightning_sde.samplers.tuning import select_schedule
    from lightning_sde.sde import VPSDE

    den = MIX.denoiser(VPSDE(eps=0.25))
    grids_run = lambda steps: {label.split(",")[0] for label in select_schedule(  # noqa: E731
        build_sampler("ddim", steps=steps, grid="select"), den, pilot=8)[3]["pilot_rmse_by_choice"]}
    assert grids_run(4) == set(GRIDS) - {"trailing"} and grids_run(3) == set(GRIDS) - {"uniform"}
    with pytest.raises(ValueError, match=r"trailing grid needs start / steps > eps; got 1\.0 / 4 <= 0\.25"):
        sample(build_sampler("ddim", steps=4, grid="trailing"), den, range(2))


def test_a_users_sampler_cannot_set_the_measured_nfe_and_its_step_cost_is_checked(caplog):
    """A run() returning {"nfe": 1} for 5 network calls replaced the counted NFE in the rows; one calling the network
    twice a step while declaring one NFE a step ran a sweep's 'nfe 10' cell at 20, silently; a run() returning x
    alone failed in an unpacking error naming nothing."""
    from lightning_sde.samplers.ddim import DDIM
    from lightning_sde.sde import VPSDE

    @dataclasses.dataclass
    class Liar(DDIM):
        def run(self, denoiser, x, plan, noise, on_step):
            x, info = super().run(denoiser, x, plan, noise, on_step)
            return x, {**info, "nfe": 1}

    @dataclasses.dataclass
    class Bare(DDIM):
        def run(self, denoiser, x, plan, noise, on_step):
            return super().run(denoiser, x, plan, noise, on_step)[0]

    @dataclasses.dataclass
    class Twice(DDIM):
        def step(self, denoiser, x, t, s, noise, last, state):
            super().step(denoiser, x, t, s, noise, last, state)
            return super().step(denoiser, x, t, s, noise, last, state)

    den = eight_gaussians().denoiser(VPSDE())
    with pytest.raises(ValueError, match=r"^sampler 'ddim': run\(\) returned \['nfe'\], which the framework measures"):
        sample(Liar(steps=5), den, range(4))
    with pytest.raises(TypeError, match=r"^sampler 'ddim': run\(\) must return \(x, info dict\); got Tensor"):
        sample(Bare(steps=5), den, range(4))
    x, info = sample(Twice(steps=5), den, range(4))
    assert info["nfe"] == 10
    assert "took 10 NFE for 5 steps, not the 5 of 1 NFE a step: its NFE budget (nfe=5" in caplog.text
    caplog.clear()
    sample(Twice(steps=5), den, range(4))
    assert "nfe_per_step" not in caplog.text  # once, not at every batch
    assert sample(DDIM(steps=5), den, range(4))[1]["nfe"] == 5 and "nfe_per_step" not in caplog.text


def test_a_sampler_class_missing_what_running_it_needs_fails_when_built():
    """No step(): a 23-frame NotImplementedError at the first evaluation, after training; no @register: "no attribute
    'name'"; a Sampler of fixed steps not a FixedStepSampler: "no attribute 'steps'"."""
    from lightning_sde.samplers.base import FixedStepSampler, Sampler

    @dataclasses.dataclass
    class NoStep(FixedStepSampler):
        name = "nostep"

    @dataclasses.dataclass
    class Unnamed(FixedStepSampler):
        def step(self, denoiser, x, t, s, noise, last, state):
            return x

    @dataclasses.dataclass
    class OneShot(Sampler):
        name = "oneshot"

        def run(self, denoiser, x, plan, noise, on_step):
            return x, {}

    with pytest.raises(TypeError, match=r"^sampler class .*NoStep defines no step\(denoiser, x, t, s, noise, last"):
        NoStep()
    with pytest.raises(TypeError, match=r"^sampler class .*Unnamed has no name: decorate it with @register"):
        Unnamed()
    with pytest.raises(TypeError, match=r"OneShot: a sampler of fixed steps subclasses FixedStepSampler"):
        OneShot()
