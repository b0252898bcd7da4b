"""slerp against the geometry of the great circle: a rotation at constant angular speed in the plane of the two
latents, the linear limit for parallel latents, and the cosine that rounding pushes outside [-1, 1]."""

import math

import pytest
import torch

from lightning_sde.flow import slerp


def plane(shape=(2, 3), seed=0):
    """Two orthonormal latents of the given shape (a random plane of R^d)."""
    d = math.prod(shape)
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q[:, 0].reshape(shape), q[:, 1].reshape(shape)


@pytest.mark.parametrize("theta", [0.5, math.pi / 2, 2.5])
def test_slerp_of_unit_latents_is_the_rotation_by_w_theta(theta):
    """z0 = e1, z1 = cos(theta) e1 + sin(theta) e2: the point at w is cos(w theta) e1 + sin(w theta) e2, i.e. the angle
    to z0 grows linearly and the norm stays 1 (theta = 0.5 < 1 rad is where a too-wide linear branch would show)."""
    e1, e2 = plane()
    z1 = math.cos(theta) * e1 + math.sin(theta) * e2
    n = 7
    path = slerp(e1, z1, n)
    assert path.shape == (n, 2, 3) and path.dtype == torch.float64
    w = torch.linspace(0, 1, n, dtype=torch.float64)[:, None, None]
    expected = torch.cos(w * theta) * e1 + torch.sin(w * theta) * e2
    torch.testing.assert_close(path, expected, rtol=0, atol=1e-13)
    torch.testing.assert_close(path.flatten(1).norm(dim=1), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-13)


def test_slerp_of_latents_of_different_norms_is_the_sine_formula():
    """Orthogonal z0 = 2 e1, z1 = 5 e2 (omega = pi/2, sin omega = 1): z(w) = cos(w pi/2) z0 + sin(w pi/2) z1."""
    e1, e2 = plane((4,), seed=1)
    z0, z1 = 2 * e1, 5 * e2
    path = slerp(z0, z1, 5)
    w = torch.linspace(0, 1, 5, dtype=torch.float64)[:, None]
    torch.testing.assert_close(path, torch.cos(w * math.pi / 2) * z0 + torch.sin(w * math.pi / 2) * z1,
                               rtol=0, atol=1e-13)


def test_parallel_latents_interpolate_linearly():
    """omega = 0: slerp's limit is the straight segment. The latents are chosen so that a @ b / (|a| |b|) rounds to
    1 + 2^-52 (for ones(3), |a|^2 = 3.0000000000000004): without the clamp arccos would return NaN."""
    z0, ones = torch.tensor([0.3, 0.7], dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for a, b in ((z0, 3 * z0), (ones, ones)):
        assert (a @ b / (a.norm() * b.norm())).item() > 1.0  # the premise of the test
    w = torch.linspace(0, 1, 5, dtype=torch.float64)[:, None]
    torch.testing.assert_close(slerp(z0, 3 * z0, 5), (1 + 2 * w) * z0, rtol=0, atol=1e-14)
    torch.testing.assert_close(slerp(ones, ones, 4), ones.expand(4, 3), rtol=0, atol=1e-15)


def test_antipodal_latents_are_refused():
    """For z1 = -z0 the cosine rounds to -1 - 2^-52 (ones(3) again): omega = pi, whose sine rounds to 1e-16, so the
    sine formula's middle points were near 1e16 (only the ends were right); and the circle between antipodes is not
    unique. Refused, naming why."""
    z0 = torch.ones(3, dtype=torch.float64)
    assert (z0 @ -z0 / (z0.norm() * z0.norm())).item() < -1.0
    for z1 in (-z0, -2 * z0):
        with pytest.raises(ValueError, match=r"^slerp: the two latents point in opposite directions \(angle pi\)"):
            slerp(z0, z1, 5)


def test_a_latent_of_norm_zero_or_not_finite_is_refused():
    """Its angle is 0 / 0: the path was NaN, with no error."""
    z = torch.ones(4, dtype=torch.float64)
    for z0, z1 in ((torch.zeros(4), z), (z, torch.zeros(4)), (z, torch.tensor([1.0, float("nan"), 0, 0])),
                   (z, torch.tensor([1.0, float("inf"), 0, 0]))):
        with pytest.raises(ValueError, match=r"^slerp: a latent of norm 0 \(or not finite\) has no direction"):
            slerp(z0.double(), z1.double(), 3)


def test_float32_latents_give_float32_paths_computed_in_float64():
    e1, e2 = plane((3, 2), seed=2)
    path = slerp(e1.float(), e2.float(), 6)
    assert path.dtype == torch.float32 and path.shape == (6, 3, 2)
    torch.testing.assert_close(path, slerp(e1.float().double(), e2.float().double(), 6).float(), rtol=0, atol=0)


def test_one_dimensional_latents_interpolate_linearly():
    """In 1-D two latents of opposite sign are pi apart and sin(pi) rounds to 1e-16: the sine formula returned
    values near 1e15 (the interpolation figure of a 1-D mixture). A 1-D line is what a 1-D prior has."""
    path = slerp(torch.tensor([0.8], dtype=torch.float64), torch.tensor([-1.2], dtype=torch.float64), 5)
    torch.testing.assert_close(path[:, 0], torch.tensor([0.8, 0.3, -0.2, -0.7, -1.2], dtype=torch.float64))


def test_latents_of_different_shapes_are_refused_by_name():
    with pytest.raises(ValueError, match=r"slerp: latents of shapes \(2,\) and \(3,\); both must be one sample's"):
        slerp(torch.ones(2), torch.ones(3), 4)


def test_the_interpolation_figure_draws_a_wide_priors_latents_inside_its_frame():
    """Under VE (prior std 50) the latents were drawn at about +-77, outside the +-6 frame, while the legend named
    them: they are drawn divided by the prior std, and the legend says so."""
    import matplotlib.pyplot as plt

    from lightning_sde.exact import eight_gaussians
    from lightning_sde.plotting.chapter import interpolation_figure
    from lightning_sde.sde import VESDE, VPSDE

    for sde, label in ((VESDE(), "latents $x_T / 50$ (slerp; prior std 50)"), (VPSDE(), "latents $x_T$ (slerp)")):
        mixture = eight_gaussians()
        fig = interpolation_figure(mixture.denoiser(sde), mixture, [0, 7], 5)
        ax = fig.axes[0]
        latents = next(line for line in ax.get_lines() if line.get_label() == label)
        x0, x1 = ax.get_xlim()
        y0, y1 = ax.get_ylim()
        xs, ys = latents.get_xdata(), latents.get_ydata()
        assert ((x0 < xs) & (xs < x1) & (y0 < ys) & (ys < y1)).all(), (sde, xs, ys)
        plt.close(fig)
