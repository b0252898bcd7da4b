"""The published defaults of the SDEs (Song et al. 2021: VP beta 0.1..20, eps 1e-3; VE sigma 0.01..50, eps 1e-5;
T = 1), their boundaries, and DataMoments against torch.cov on the boundaries of its exact and low-rank paths."""

import pytest
import torch

from lightning_sde.models.moments import DataMoments
from lightning_sde.sde import VESDE, VPSDE, SubVPSDE


def test_the_sdes_default_to_the_papers_settings():
    for cls in (VPSDE, SubVPSDE):
        sde = cls()
        assert (sde.beta_min, sde.beta_max, sde.eps, sde.T) == (0.1, 20.0, 1e-3, 1.0)
    ve = VESDE()
    assert (ve.sigma_min, ve.sigma_max, ve.eps, ve.T) == (0.01, 50.0, 1e-5, 1.0)
    assert VESDE(T=2.0).T == 2.0


def test_a_ve_sde_needs_sigma_min_strictly_below_sigma_max():
    with pytest.raises(ValueError, match="VE SDE needs 0 < sigma_min < sigma_max"):
        VESDE(sigma_min=1.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="VE SDE needs"):
        VESDE(sigma_min=0.0)
    assert VESDE(sigma_min=0.5, sigma_max=0.5000001).sigma_max == 0.5000001


def test_moments_of_two_samples_are_their_mean_and_covariance():
    x = torch.tensor([[1.0, 10.0], [3.0, 14.0]])
    m = DataMoments.of_samples(x)
    assert m.mean.tolist() == [2.0, 12.0]  # per dimension
    cov = m.eigvecs @ torch.diag(m.eigvals) @ m.eigvecs.T
    torch.testing.assert_close(cov, torch.cov(x.T.double()))
    with pytest.raises(ValueError, match="at least 2 samples; got 1"):
        DataMoments.of_samples(x[:1])


@pytest.mark.parametrize("mean, cov, message", [
    ([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]], r"positive semi-definite; its smallest eigenvalue is -1$"),
    ([0.0, 0.0], [[1.0, 0.5], [0.0, 1.0]], "must be symmetric"),
    ([0.0, float("nan")], [[1.0, 0.0], [0.0, 1.0]], "must be finite"),
    ([0.0, 0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], r"got shapes \(3,\) and \(2, 2\)"),
])
def test_what_is_no_covariance_is_refused_not_clamped(mean, cov, message):
    """of_gaussian symmetrised the covariance and clamped negative eigenvalues to 0 without a word: a Gaussian start
    from moments of another distribution than the one given."""
    with pytest.raises(ValueError, match=f"^DataMoments.of_gaussian: .*{message}"):
        DataMoments.of_gaussian(torch.tensor(mean), torch.tensor(cov))


def test_a_sample_covariance_of_fewer_samples_than_dimensions_is_taken_with_its_rounding():
    x = torch.randn(5, 40, generator=torch.Generator().manual_seed(0))
    m = DataMoments.of_samples(x)  # rank 4: 36 eigenvalues are 0 up to rounding, some of them negative
    assert (m.eigvals >= 0).all() and (m.eigvals > 1e-6).sum() == 4


@pytest.mark.parametrize("d", [4, 5])  # rank 4: d == rank is still the exact path; d > rank the leading pairs
def test_the_exact_path_holds_up_to_d_equal_to_rank(d):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, d, generator=gen) * torch.arange(1, d + 1) + torch.arange(d)
    torch.manual_seed(0)  # the low-rank path is a randomized SVD
    m = DataMoments.of_samples(x, rank=4)
    truth = torch.linalg.eigvalsh(torch.cov(x.T.double())).flip(0)
    if d == 4:
        assert len(m.eigvals) == 4 and m.residual_var == 0
        torch.testing.assert_close(m.eigvals.sort(descending=True).values, truth)
    else:
        assert len(m.eigvals) == 4 and m.residual_var > 0
        torch.testing.assert_close(m.eigvals.sort(descending=True).values, truth[:4], rtol=0.05, atol=0)
        assert m.residual_var == pytest.approx(float(truth[4]), rel=1e-3)  # the one direction left out


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_sigma_data_scales_the_network_input_by_the_edm_c_in(sde):
    """c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2) at each sample's own time (Karras et al. 2022, Table 1 with
    alpha); without sigma_data the network sees x itself."""
    from lightning_sde.models.denoiser import Denoiser

    seen = []

    def net(x, t):
        seen.append(x.clone())
        return torch.zeros_like(x)

    x = torch.tensor([[1.0, -2.0], [3.0, 0.5]], dtype=torch.float64)
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)
    Denoiser(net, sde, "eps", shape=(2,), sigma_data=0.5)(x, t)
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    c_in = 1 / torch.sqrt(alpha**2 * 0.25 + sigma**2)
    torch.testing.assert_close(seen[-1], x * c_in[:, None])
    Denoiser(net, sde, "eps", shape=(2,))(x, 0.2)
    torch.testing.assert_close(seen[-1], x)


@pytest.mark.parametrize("sde", [VPSDE(), VPSDE(beta_max=5.0), SubVPSDE(T=0.5), VESDE(sigma_min=0.01, sigma_max=2.0)])
def test_the_prior_gap_is_the_exact_kl_for_a_point_and_bounds_it_for_a_gaussian(sde):
    """Data at one point x_0: p_T is N(alpha_T x_0, sigma_T^2) exactly, and the gap is its KL to the prior. Data
    N(0, s^2): p_T = N(0, alpha_T^2 s^2 + sigma_T^2), whose KL to the prior the gap (at mean square s^2) bounds."""
    import math

    T = torch.tensor(sde.T, dtype=torch.float64)
    a, s, p = float(sde.alpha(T)), float(sde.sigma(T)), sde.prior_std

    def kl(mean, var):  # KL(N(mean, var) || N(0, p^2)), one dimension
        return 0.5 * (var + mean**2) / p**2 - 0.5 - 0.5 * math.log(var / p**2)

    assert sde.prior_gap(2.25) == pytest.approx(kl(a * 1.5, s**2), rel=1e-12)
    assert kl(0.0, a * a * 2.25 + s * s) <= sde.prior_gap(2.25) + 1e-15


def test_a_target_whose_sde_leaves_p_T_far_from_the_prior_is_named_at_start_up(tmp_path, caplog):
    """VP with beta_max=5 ends at alpha_T = 0.28: every sampler starts from a prior 0.04 nats a dimension from p_T
    (on unit data; the 8 Gaussians' mean square is 8), and nothing said so."""
    from hydra import compose, initialize_config_module

    from lightning_sde.configuration import CONFIG_PACKAGE
    from lightning_sde.targets import load_target, target_kind

    for beta_max, warned in ((5.0, True), (20.0, False)):
        caplog.clear()
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            cfg = compose("compare", overrides=[f"results={tmp_path}/r.jsonl", f"sde.beta_max={beta_max}"])
        kind, target_id = target_kind(cfg)
        load_target(cfg, kind, target_id, torch.device("cpu"))
        assert ("leaves p_T far from its prior" in caplog.text) == warned, caplog.text


def test_data_small_against_the_noise_at_eps_is_named(caplog):
    """Modes of std 0.005 on a circle of radius 0.02 under the default VP SDE (sigma(eps) = 0.01): DDIM-50 on its
    uniform grid ended 37 % off (2 % on unit data), and nothing said so."""
    from lightning_sde.sde import VESDE, VPSDE
    from lightning_sde.targets import warn_if_data_below_eps

    def warned(sde, std: float) -> bool:
        caplog.clear()
        eye = torch.eye(2, dtype=torch.float64)
        moments = DataMoments.of_gaussian(torch.zeros(2, dtype=torch.float64), std**2 * eye)
        warn_if_data_below_eps(sde, moments)
        return "of the data's largest std" in caplog.text

    assert warned(VPSDE(), 0.02) and not warned(VPSDE(), 0.2) and not warned(VPSDE(), 1.0)
    assert not warned(VESDE(sigma_min=5e-4, sigma_max=1.0), 0.02) and warned(VESDE(), 0.05)
    said = warned(VPSDE(), 0.02) and caplog.text
    assert "the vp SDE's noise level at eps=0.001 is 0.0105, 0.52 of the data's largest std 0.02" in said


def test_the_mean_square_counts_the_mean_the_leading_variances_and_the_shared_rest():
    moments = DataMoments(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([4.0]), torch.eye(3)[:, :1], residual_var=0.5)
    assert moments.mean_square() == pytest.approx((1 + 4 + 2 * 0.5) / 3)
    x = torch.randn(4000, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 + 1
    exact = DataMoments.of_gaussian(x.mean(0), torch.cov(x.T, correction=0))
    assert exact.mean_square() == pytest.approx(float(x.pow(2).mean()), rel=1e-9)
