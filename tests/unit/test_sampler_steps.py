"""One step of every stochastic update against its closed form, with a noise source that records its calls: the mean,
the noise coefficient, and when noise is (not) added. Comparing samplers with each other would miss all of these."""

import math

import pytest
import torch

from helpers.oracles import SDES, rmse, wide_circle
from lightning_sde.exact import GaussianMixture, eight_gaussians
from lightning_sde.models.denoiser import Denoiser
from lightning_sde.samplers import build_sampler, sample, time_grid
from lightning_sde.samplers.sde_solvers import langevin_correct

GAUSS = GaussianMixture(torch.tensor([[0.7, -1.2]], dtype=torch.float64), stds=torch.tensor([[0.5, 1.3]],
                                                                                           dtype=torch.float64))
T, S = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.45, dtype=torch.float64)


class RecordingNoise:
    """Returns a fixed draw z (and counts its calls): a step's output is then an exact function of z."""

    def __init__(self, z: torch.Tensor):
        self.z, self.calls = z, 0

    def __call__(self):
        self.calls += 1
        return self.z


def setting(sde_name: str):
    sde = SDES[sde_name]
    den = GAUSS.denoiser(sde)
    x = sde.prior_std * torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = sde.alpha(T) * GAUSS.means + sde.sigma(T) * x / sde.prior_std
    z = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return sde, den, x, z


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_is_the_posterior_with_variance_eta_squared(sde_name, eta):
    """x_s = alpha_s x0 + sqrt(sigma_s^2 - v) eps + sqrt(v) z, v = eta^2 sigma_s^2 (1 - (alpha_t sigma_s /
    (alpha_s sigma_t))^2) (Song, Meng & Ermon 2021, eq. 12 with their sigma_t(eta))."""
    sde, den, x, z = setting(sde_name)
    pred = den(x, T)
    a_t, s_t, a_s, s_s = (float(f(u)) for u in (T, S) for f in (sde.alpha, sde.sigma))
    v = eta**2 * s_s**2 * (1 - (a_t * s_s / (a_s * s_t)) ** 2)
    expected = a_s * pred.x0 + math.sqrt(s_s**2 - v) * pred.eps + math.sqrt(v) * z
    noise = RecordingNoise(z)
    out = build_sampler("ddim", eta=eta).step(den, x, T, S, noise, last=False, state={})
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert noise.calls == (1 if eta > 0 else 0)
    last = build_sampler("ddim", eta=eta).step(den, x, T, S, RecordingNoise(z), last=True, state={})
    torch.testing.assert_close(last, a_s * pred.x0 + math.sqrt(s_s**2 - v) * pred.eps, rtol=1e-12, atol=1e-12,
                               msg="no noise on the last step")


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_reverse_diffusion_step_reverses_the_exact_transition(sde_name):
    """x_s = x_t - (a - 1) x_t + G^2 score + G z, where x_t = a x_s + G z' is the exact forward transition."""
    sde, den, x, z = setting(sde_name)
    a = float(sde.alpha(T) / sde.alpha(S))
    G2 = float(sde.sigma(T) ** 2 - a**2 * sde.sigma(S) ** 2)
    expected = x - (a - 1) * x + G2 * den(x, T).score + math.sqrt(G2) * z
    noise = RecordingNoise(z)
    torch.testing.assert_close(build_sampler("reverse_diffusion").step(den, x, T, S, noise, False, {}), expected,
                               rtol=1e-12, atol=1e-12)
    assert noise.calls == 1


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_euler_maruyama_step(sde_name):
    """x_s = x_t - [f(t) x_t - g(t)^2 score] (t - s) + g(t) sqrt(t - s) z."""
    sde, den, x, z = setting(sde_name)
    dt = float(T - S)
    f, g2 = float(sde.f(T)), float(sde.g2(T))
    expected = x - (f * x - g2 * den(x, T).score) * dt + math.sqrt(g2 * dt) * z
    torch.testing.assert_close(build_sampler("euler_maruyama").step(den, x, T, S, RecordingNoise(z), False, {}),
                               expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_langevin_step_and_its_vp_scale(sde_name):
    """x += e score + sqrt(2e) z, e = 2 r (snr sigma_t)^2 with score_sde's r = alpha_i = 1 - beta_i on VP, which
    is (alpha_t / alpha_s)^2 = exp(-(B(t) - B(s))) of the continuous SDE, and 1 elsewhere."""
    sde, den, x, z = setting(sde_name)
    B = lambda u: 0.1 * u + 0.5 * (20.0 - 0.1) * u**2  # noqa: E731  (beta 0.1..20, written out)
    r = math.exp(-(B(float(T)) - B(float(S)))) if sde_name == "vp" else 1.0
    assert float(sde.langevin_scale(T, S)) == pytest.approx(r, rel=1e-12)
    e = 2 * r * (0.16 * float(sde.sigma(T))) ** 2
    expected = x + e * den(x, T).score + math.sqrt(2 * e) * z
    noise = RecordingNoise(z)
    torch.testing.assert_close(langevin_correct(den, x, T, S, noise, 1, 0.16), expected, rtol=1e-12, atol=1e-12)
    assert noise.calls == 1
    # score_sde's rule: e = 2 r (snr |z| / |score|)^2, the per-sample norms averaged over the batch
    e = 2 * r * (0.16 * z.norm(dim=1).mean() / den(x, T).score.norm(dim=1).mean()) ** 2
    expected = x + e * den(x, T).score + (2 * e).sqrt() * z
    torch.testing.assert_close(langevin_correct(den, x, T, S, noise, 1, 0.16, step_size="score_sde"), expected,
                               rtol=1e-12, atol=1e-12)
    assert noise.calls == 2


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("t", [0.05, 0.3, 0.9])
def test_score_sdes_langevin_step_is_sigma_t_only_where_the_noise_dwarfs_the_data(sde_name, t):
    """On d-dimensional data of variance v in every direction, |z|^2 / |score|^2 -> a_t^2 v + sigma_t^2 (the marginal's
    variance) as d grows: score_sde's step is 2 r snr^2 (a_t^2 v + sigma_t^2); "sigma" keeps 2 r snr^2 sigma_t^2."""
    sde, d, v = SDES[sde_name], 256, 0.25
    data = GaussianMixture(torch.zeros(1, d, dtype=torch.float64), stds=torch.full((1,), v ** 0.5,
                                                                                  dtype=torch.float64))
    den = data.denoiser(sde)
    t, gen = torch.tensor(t, dtype=torch.float64), torch.Generator().manual_seed(3)
    a, sigma = sde.alpha(t), sde.sigma(t)
    x = (a**2 * v + sigma**2).sqrt() * torch.randn(32, d, dtype=torch.float64, generator=gen)  # from p_t
    z = torch.randn(32, d, dtype=torch.float64, generator=gen)
    r = sde.langevin_scale(t, t - 0.01)
    for rule, variance in (("score_sde", a**2 * v + sigma**2), ("sigma", sigma**2)):
        noise = RecordingNoise(z)
        moved = langevin_correct(den, x, t, t - 0.01, noise, 1, 0.16, mean_last=True, step_size=rule) - x
        score = den(x, t).score  # mean_last: the move is e score alone; its z was drawn for the norm
        e = (moved * score).sum() / (score * score).sum()
        assert float(e) == pytest.approx(float(2 * r * 0.16**2 * variance), rel=0.03)
        assert noise.calls == (rule == "score_sde")


@pytest.mark.parametrize("name, params, corrector", [
    ("euler_maruyama", {}, 0), ("reverse_diffusion", {}, 0), ("ancestral", {}, 0), ("sde_dpmpp", {}, 0),
    ("pc", {}, 6), ("pc", {"predictor": "none", "corrector_steps": 2}, 6)])  # 12 Langevin steps, the last without
def test_stochastic_samplers_add_no_noise_on_their_last_step(name, params, corrector):
    """N steps draw the prior once (not through __call__) and N - 1 noises (PC: + one per corrector step; without a
    predictor its Langevin steps are the steps, and the last one at eps adds none)."""
    den = GAUSS.denoiser(SDES["vp"])
    sampler = build_sampler(name, steps=6, **params)
    noise = RecordingNoise(torch.zeros(4, 2, dtype=torch.float64))
    x_T = torch.randn(4, 2, dtype=torch.float64)
    noise.seeds = range(4)
    sampler(den, x_T, noise)
    assert noise.calls == 6 - 1 + corrector


def test_the_denoiser_counts_every_forward_whatever_t_looks_like():
    den = GAUSS.denoiser(SDES["vp"])
    x = torch.zeros(3, 2, dtype=torch.float64)
    den(x, 0.5)
    den(x, torch.tensor(0.5, dtype=torch.float64))
    den(x, torch.full((3,), 0.5, dtype=torch.float64))
    den(x, torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64))
    assert den.nfe == 4


def test_unipc_3_on_a_uniform_grid_is_accurate_at_10_steps():
    """An absolute bound, not a comparison: lower-order final steps keep the long last log-SNR steps of a t-uniform
    grid stable (measured RMSE 0.16; without them 5.4)."""
    den = eight_gaussians().denoiser(SDES["vp"])
    seeds = range(512)
    ref, _ = sample(build_sampler("ode", rtol=1e-9, atol=1e-9), den, seeds, dtype=torch.float64)
    x, _ = sample(build_sampler("unipc", steps=10, order=3, grid="uniform"), den, seeds, dtype=torch.float64)
    assert (x - ref).pow(2).mean().sqrt() < 0.3


def test_a_denoiser_must_be_given_real_moments():
    with pytest.raises(TypeError, match="data_moments must be a DataMoments"):
        Denoiser(lambda x, t: x, SDES["vp"], "eps", shape=(2,), data_moments={"mean": 0})


# (sampler, params, order p, measured RMSE at 32 log-SNR steps on VP, on VE) against the closed-form Gaussian flow
ACCURACY = [
    ("ddim", {}, 1, 1.184e-01, 1.058e-01),
    ("heun", {}, 2, 1.988e-02, 1.557e-02),
    ("ode", {"method": "euler"}, 1, 7.901e-02, 7.825e-01),
    ("ode", {"method": "midpoint"}, 2, 2.872e-03, 8.518e-02),
    ("ode", {"method": "rk4"}, 4, 2.877e-06, 1.737e-04),
    ("ode", {"method": "heun3"}, 3, 1.579e-04, 5.043e-03),
    ("dpmpp", {"order": 2}, 2, 8.911e-03, 7.079e-03),
    ("dpmpp", {"order": 3}, 3, 6.930e-04, 3.591e-04),
    ("unipc", {"order": 1}, 2, 2.701e-02, 2.148e-02),
    ("unipc", {"order": 2}, 3, 3.490e-03, 2.478e-03),
    ("unipc", {"order": 3}, 4, 1.798e-04, 1.433e-04),
]


@pytest.mark.parametrize("name, params, order, vp_error, ve_error", ACCURACY,
                         ids=[f"{n}-{p.get('method', p.get('order', ''))}" for n, p, *_ in ACCURACY])
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_every_deterministic_sampler_is_accurate_against_the_closed_form_gaussian_flow(
        sde_name, name, params, order, vp_error, ve_error):
    """The fast twin of test_convergence.py: 64 starts, the exact flow of a Gaussian as the truth (no reference
    solve), the error at 32 steps within 25 % of its measured value and falling at (nearly) the method's order from
    16 steps. A wrong coefficient, a lost correction or a step at the wrong time moves one or the other."""
    from helpers.convergence import GAUSSIAN, gaussian_flow, gaussian_x_T
    from helpers.oracles import rmse

    x_T = gaussian_x_T(sde_name)[:64]
    truth = gaussian_flow(sde_name, x_T)
    den = GAUSSIAN.denoiser(SDES[sde_name])
    errors = [rmse(build_sampler(name, steps=n, grid="logsnr", **params)(den, x_T)[0], truth) for n in (16, 32)]
    assert errors[1] <= 1.25 * (vp_error if sde_name == "vp" else ve_error), errors
    assert math.log2(errors[0] / errors[1]) >= order - 0.5, errors


@pytest.mark.parametrize("name, tol, bound", [("ode", 1e-6, 1e-5), ("unipc_adaptive", 1e-5, 1e-4)])
@pytest.mark.parametrize("sde_name", ["vp", "ve", "subvp"])
def test_adaptive_samplers_reach_their_tolerance_on_the_closed_form_gaussian_flow(sde_name, name, tol, bound):
    from helpers.convergence import GAUSSIAN, gaussian_flow, gaussian_x_T
    from helpers.oracles import rmse

    x_T = gaussian_x_T(sde_name)[:64]
    x, info = build_sampler(name, rtol=tol, atol=tol)(GAUSSIAN.denoiser(SDES[sde_name]), x_T)
    assert rmse(x, gaussian_flow(sde_name, x_T)) < bound and info["n_accept"] > 3


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_sde_dpmpp_steps_against_their_closed_form(sde_name):
    """First step (order 1): x_s = (sigma_s / sigma_t) e^{-h} x + alpha_s (1 - e^{-2h}) D + sigma_s sqrt(1 - e^{-2h}) z
    with h = lambda_s - lambda_t; the second step (order 2) uses D + (D - D_prev) / (2 r), r = h_prev / h."""
    sde, den, x, z = setting(sde_name)
    U = torch.tensor(0.3, dtype=torch.float64)
    lam = lambda u: float(sde.log_snr(u))  # noqa: E731
    sampler = build_sampler("sde_dpmpp", steps=2, lower_order_final=False, max_step_ratio=math.inf)
    state, noise = sampler.initial_state(den, torch.stack([T, S, U]).double()), RecordingNoise(z)
    d_t = den(x, T).x0
    h = lam(S) - lam(T)
    one = 1 - math.exp(-2 * h)
    first = (float(sde.sigma(S)) / float(sde.sigma(T))) * math.exp(-h) * x + float(sde.alpha(S)) * one * d_t \
        + float(sde.sigma(S)) * math.sqrt(one) * z
    x_s = sampler.step(den, x, T, S, noise, False, state)
    torch.testing.assert_close(x_s, first, rtol=1e-12, atol=1e-12)
    d_s = den(x_s, S).x0
    h2 = lam(U) - lam(S)
    d = d_s + 0.5 * (d_s - d_t) / (h / h2)
    one = 1 - math.exp(-2 * h2)
    second = (float(sde.sigma(U)) / float(sde.sigma(S))) * math.exp(-h2) * x_s + float(sde.alpha(U)) * one * d
    torch.testing.assert_close(sampler.step(den, x_s, S, U, noise, True, state), second, rtol=1e-12, atol=1e-12)
    assert noise.calls == 1  # the last step adds none


def test_the_adaptive_unipc_controller_spends_what_its_tolerance_needs():
    """The step-size control itself: pinned NFE on the closed-form Gaussian (a changed safety factor, growth cap or
    error norm changes them), each tolerance's error below it, and fewer NFE than dopri5 at a tighter error."""
    from helpers.convergence import GAUSSIAN, gaussian_flow, gaussian_x_T
    from helpers.oracles import rmse

    x_T = gaussian_x_T("vp")[:64]
    truth, den = gaussian_flow("vp", x_T), GAUSSIAN.denoiser(SDES["vp"])
    measured = {1e-3: 25, 1e-4: 34, 1e-5: 51}
    for tol, nfe in measured.items():
        x, info = build_sampler("unipc_adaptive", rtol=tol, atol=tol)(den, x_T)
        assert info["nfe"] == 1 + info["n_accept"] + info["n_reject"]
        assert abs(info["nfe"] - nfe) <= 2, (tol, info)
        assert rmse(x, truth) < 3 * tol
    with pytest.raises(RuntimeError, match="no convergence in 3 steps .*: a larger tolerance or more max_steps$"):
        build_sampler("unipc_adaptive", rtol=1e-9, atol=1e-9, max_steps=3)(den, x_T)


def test_a_tolerance_the_dtype_cannot_resolve_is_warned_about_and_a_failed_solve_is_one_line(caplog, capsys):
    """float32 dopri5 at 1e-10 ended 6e-6 off (float64: 2e-10) for twice the NFE, unsaid; unipc_adaptive at 1e-9 in
    float32 failed a whole lsde-bench sweep with a traceback, and again at every rerun."""
    from helpers.convergence import GAUSSIAN, gaussian_x_T
    from lightning_sde.cli.errors import fails_cleanly

    den = GAUSSIAN.denoiser(SDES["vp"])
    sample(build_sampler("ode", rtol=1e-7, atol=1e-7), den, range(4), dtype=torch.float32)
    assert "tolerance 1e-07 is below what float32 samples resolve (~1e-06)" in caplog.text
    caplog.clear()
    sample(build_sampler("ode", rtol=1e-7, atol=1e-7), den, range(4), dtype=torch.float64)
    sample(build_sampler("ode", rtol=1e-5, atol=1e-5), den, range(4), dtype=torch.float32)
    assert "resolve" not in caplog.text

    @fails_cleanly("lsde-x")
    def app(cfg):
        build_sampler("unipc_adaptive", rtol=1e-9, atol=1e-9, max_steps=3)(den, gaussian_x_T("vp")[:4].float())

    with pytest.raises(SystemExit) as ended:
        app(None)
    assert ended.value.code == 1
    assert capsys.readouterr().err.startswith("lsde-x: error: unipc_adaptive: no convergence in 3 steps")
    with pytest.raises(RuntimeError, match="below what torch.float32 samples resolve\\? Use dtype=float64"):
        build_sampler("unipc_adaptive", rtol=1e-9, atol=1e-9, max_steps=3)(den, gaussian_x_T("vp")[:4].float())


def _adaptive_attempts(sampler, sde_name: str = "vp"):
    """Run `sampler` on the 8 Gaussians from the seeds of helpers.convergence; read its attempted steps off the times
    the network was queried at (log-SNR rises along accepted steps; a retry after a rejection lands below the rejected
    attempt). Returns (x, info, [(step in log-SNR, accepted, whether the attempt before it was rejected)])."""
    from helpers.convergence import SEEDS
    from helpers.oracles import counting_denoiser

    den, net = counting_denoiser(wide_circle(), sde_name)
    x, info = sample(sampler, den, seeds=SEEDS, dtype=torch.float64)
    lam = [float(SDES[sde_name].log_snr(t.double().flatten()[0])) for t in net.times]
    attempts, base, after_rejection = [], lam[0], False
    for i in range(1, len(lam)):
        accepted = i == len(lam) - 1 or lam[i + 1] > lam[i]
        attempts.append((lam[i] - base, accepted, after_rejection))
        base, after_rejection = (lam[i], False) if accepted else (base, True)
    assert sum(a for _, a, _ in attempts) == info["n_accept"] and info["nfe"] == len(lam)
    return x, info, attempts


def test_the_pi_controller_of_the_adaptive_unipc_spares_rejected_steps():
    """On the 8 Gaussians at rtol = atol = 1e-3, where the error per step climbs as the modes emerge (measured
    rejected steps: plain controller 4, icoeff 0.7 alone 3, PI icoeff 0.7 / pcoeff 0.4 1): the trend term pcoeff is
    what spares them, and the PI run ends within its tolerance of the converged reference."""
    from helpers.convergence import mixture_reference

    ref = mixture_reference("vp")[0]
    runs = {name: _adaptive_attempts(build_sampler("unipc_adaptive", rtol=1e-3, atol=1e-3, **kw))
            for name, kw in {"plain": {}, "icoeff": {"icoeff": 0.7}, "pi": {"icoeff": 0.7, "pcoeff": 0.4}}.items()}
    rejected = {name: run[1]["n_reject"] for name, run in runs.items()}
    assert rejected["pi"] < rejected["icoeff"] <= rejected["plain"], rejected
    assert rmse(runs["pi"][0], ref) < 1e-3


def test_no_step_of_the_adaptive_unipc_grows_right_after_a_rejected_one():
    """With max_growth 10 the plain controller would grow the step after a retried one where the retry ends well
    inside the tolerance (it does on the 8 Gaussians at 1e-3); that step is held to the retry's size instead, as in
    Hairer's codes, so an error that climbs fast does not cost a second rejection."""
    attempts = _adaptive_attempts(build_sampler("unipc_adaptive", rtol=1e-3, atol=1e-3, max_growth=10.0))[2]
    after_retry = [h_next / h for (h, accepted, retried), (h_next, _, _) in zip(attempts, attempts[1:])
                   if accepted and retried]
    assert after_retry and max(after_retry) <= 1 + 1e-9, after_retry
    assert any(abs(r - 1) < 1e-9 for r in after_retry), after_retry  # the rule bound, not just the controller


def test_higher_predictor_orders_of_the_adaptive_unipc_need_fewer_steps_for_a_tight_tolerance():
    """Orders 2..6 end to end on the closed-form Gaussian at 1e-6 (measured NFE 201, 105, 76, 64, 63): each stays
    within a few tolerances of the truth, and each order up to 5 takes fewer steps than the one below (a predictor
    that fell back to a lower order would not)."""
    from helpers.convergence import GAUSSIAN, gaussian_flow, gaussian_x_T
    from helpers.oracles import rmse

    x_T = gaussian_x_T("vp")[:64]
    truth, den = gaussian_flow("vp", x_T), GAUSSIAN.denoiser(SDES["vp"])
    nfe = {}
    for order in range(2, 7):
        x, info = build_sampler("unipc_adaptive", rtol=1e-6, atol=1e-6, order=order)(den, x_T)
        nfe[order] = info["nfe"]
        assert rmse(x, truth) < 5e-6, (order, rmse(x, truth))
    assert all(nfe[k] < 0.9 * nfe[k - 1] for k in range(3, 6)) and nfe[6] <= nfe[5] + 2, nfe


def test_corrector_only_pc_runs_its_langevin_steps_at_each_steps_end_down_to_eps():
    """pc with predictor="none" (annealed Langevin): step t -> s corrects at s, so the sample is one of p_eps (the
    last level), not of p at the grid's second-to-last time."""
    sde = SDES["vp"]
    den = GAUSS.denoiser(sde)
    times = []
    real = den.forward
    den.forward = lambda x, t, *rest: (times.append(float(torch.as_tensor(t).flatten()[0])), real(x, t, *rest))[1]
    sampler = build_sampler("pc", steps=4, predictor="none", corrector_steps=2)
    sample(sampler, den, seeds=range(3), dtype=torch.float64)
    ends = [float(t) for t in time_grid(sde, 4, sampler.grid)[1:]]  # t_1 .. t_4 = eps
    assert times == pytest.approx([t for t in ends for _ in range(2)], rel=1e-12)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_the_adaptive_unipc_error_is_scaled_by_the_larger_of_the_old_and_new_state(sde_name, monkeypatch):
    """torchdiffeq's scale atol + rtol max(|x_new|, |x_old|) at every accepted step: either alone is smaller where the
    state shrinks or grows (VE's shrinks by ~50), and only moves the NFE by one here, so the scale is read directly."""
    from helpers.convergence import gaussian_x_T
    from lightning_sde.samplers.multistep import AdaptiveUniPC

    calls, accepted = [], []
    error = AdaptiveUniPC._error

    def recorded(self, diff, scale):
        calls.append((scale.clone(), float(error(self, diff, scale))))
        return error(self, diff, scale)

    monkeypatch.setattr(AdaptiveUniPC, "_error", recorded)
    x_T = gaussian_x_T(sde_name)[:16]
    sampler = build_sampler("unipc_adaptive", rtol=1e-3, atol=1e-4)
    sampler(GAUSS.denoiser(SDES[sde_name]), x_T, callback=lambda step: accepted.append(step["x"].clone()))
    scales = [scale for scale, err in calls if err <= 1]
    assert len(scales) == len(accepted) > 5
    for scale, old, new in zip(scales, [x_T] + accepted, accepted):
        torch.testing.assert_close(scale, 1e-4 + 1e-3 * torch.maximum(old.abs(), new.abs()), rtol=1e-12, atol=0)
