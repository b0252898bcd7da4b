"""Probability-flow ODE as a bijection, against the exact mixture: likelihoods, Hutchinson, encode/decode, slerp,
and reproducibility of deterministic sampling across processes and batch sizes."""

import hashlib
import math
import subprocess
import sys

import pytest
import torch

from lightning_sde.exact import GaussianMixture, eight_gaussians, random_mixture
from lightning_sde.flow import ODEOptions, bits_per_dim, decode, encode, log_likelihood, slerp
from lightning_sde.sde import build_sde

TIGHT = ODEOptions("dopri5", rtol=1e-9, atol=1e-9)
SDES = {"vp": {}, "subvp": {}, "ve": {"sigma_max": 30.0}}


def points(mixture, n=48, seed=0):
    """Exact samples plus points off the data (between modes, far out): the identity must hold everywhere."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([mixture.sample(n, g), 3 * torch.randn(16, mixture.dim, generator=g, dtype=torch.float64)])


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_exact_divergence_likelihood_is_the_true_log_density(sde_name):
    sde = build_sde(sde_name, **SDES[sde_name])
    mixture = eight_gaussians()
    x = points(mixture)
    out = log_likelihood(mixture.denoiser(sde), x, TIGHT)
    T = torch.tensor(sde.T, dtype=torch.float64)
    truth = mixture.marginal_log_prob(sde, x, torch.tensor(sde.eps, dtype=torch.float64))
    # the only approximation besides the solver: the prior stands in for p_T at x_T
    mismatch = out["prior_logp"] - mixture.marginal_log_prob(sde, out["x_T"], T)
    assert torch.allclose(out["logp"] - mismatch, truth, atol=2e-5, rtol=0)
    assert (out["logp"] - truth).abs().max() <= mismatch.abs().max() + 2e-5  # the tolerance the prior sets
    assert out["nfe"] > 0 and torch.all(out["logp_se"] == 0)


def test_hutchinson_agrees_with_the_exact_divergence_within_its_standard_error():
    sde = build_sde("vp")
    mixture = random_mixture(dim=8, n_components=4, seed=0)
    x = points(mixture, n=16)
    opts = ODEOptions("dopri5", rtol=1e-6, atol=1e-6)
    exact = log_likelihood(mixture.denoiser(sde), x, opts)["logp"]
    for probe in ("rademacher", "gaussian"):
        hutch = log_likelihood(mixture.denoiser(sde), x, opts, divergence="hutchinson", probes=8, probe=probe,
                               generator=torch.Generator().manual_seed(1))
        # z ~ Student t with k - 1 = 7 degrees of freedom (the SE is itself estimated from the 8 probes)
        z = (hutch["logp"] - exact) / hutch["logp_se"]
        assert (z.abs() < 3.5).float().mean() >= 0.9, (probe, z)  # P(|t_7| > 3.5) = 1 %
        assert 0.3 < z.abs().median() < 1.5, (probe, z)  # median |t_7| = 0.71: the SE is the error's actual size


def test_encode_is_the_closed_form_flow_of_a_gaussian_and_decode_inverts_it():
    # one Gaussian N(m, s^2): p_t = N(alpha m, alpha^2 s^2 + sigma^2), and the flow keeps the standardised value
    sde = build_sde("vp")
    m, s = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.3
    gauss = GaussianMixture(m[None], stds=torch.full((1, 2), s, dtype=torch.float64), weights=torch.ones(1, dtype=torch.float64))
    x = m + s * torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps, T = (torch.tensor(v, dtype=torch.float64) for v in (sde.eps, sde.T))
    scale = lambda t: torch.sqrt(sde.alpha(t) ** 2 * s**2 + sde.sigma(t) ** 2)  # noqa: E731
    expected = sde.alpha(T) * m + scale(T) * (x - sde.alpha(eps) * m) / scale(eps)
    z = encode(gauss.denoiser(sde), x, TIGHT)
    assert torch.allclose(z, expected, atol=1e-7)
    # on the data (off it, e.g. between modes, the backward flow is exponentially sensitive near the separatrices)
    mixture = eight_gaussians()
    x = mixture.sample(64, torch.Generator().manual_seed(1))
    roundtrip = decode(mixture.denoiser(sde), encode(mixture.denoiser(sde), x, TIGHT), TIGHT)
    assert (roundtrip - x).abs().max() < 1e-5


def test_slerp_keeps_the_norm_of_equal_norm_latents_and_hits_both_ends():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    z1 = z1 * z0.norm() / z1.norm()
    path = slerp(z0, z1, 9)
    assert path.shape == (9, 3, 4, 4)
    assert torch.allclose(path[0], z0) and torch.allclose(path[-1], z1)
    assert torch.allclose(path.flatten(1).norm(dim=1), z0.norm().expand(9))


def test_bits_per_dim_of_a_known_density():
    # uniform density on [-1, 1]^D: log p = -D log 2, i.e. 1 bit/dim in x; + log2(256/2) for 8-bit data = 8 bits
    D = 3072
    logp = torch.tensor([-D * math.log(2)])
    assert torch.allclose(bits_per_dim(logp, D), torch.tensor([1.0]))
    assert torch.allclose(bits_per_dim(logp, D, offset=math.log2(128)), torch.tensor([8.0]))


@pytest.mark.parametrize("bad, message", [
    ({"divergence": "trace"}, "divergence must be one of"),
    ({"divergence": "hutchinson", "probes": 0}, "probes must be an integer >= 1"),
    ({"divergence": "hutchinson", "probe": "uniform"}, "probe must be one of"),
])
def test_bad_likelihood_options_are_rejected(bad, message):
    mixture = eight_gaussians()
    with pytest.raises(ValueError, match=message):
        log_likelihood(mixture.denoiser(build_sde("vp")), points(mixture), **bad)
    with pytest.raises(ValueError, match="unknown ODE method"):
        ODEOptions("rk45")


SAMPLE_SCRIPT = """
import hashlib, sys, torch
from lightning_sde.exact import eight_gaussians
from lightning_sde.samplers import build_sampler, sample
from lightning_sde.sde import build_sde
denoiser = eight_gaussians().denoiser(build_sde("vp"))
xs = [sample(build_sampler(sys.argv[1], steps=20), denoiser, range(s, min(s + int(sys.argv[2]), 100)))[0]
      for s in range(0, 100, int(sys.argv[2]))]
print(hashlib.sha256(torch.cat(xs).numpy().tobytes()).hexdigest())
"""


@pytest.mark.parametrize("sampler", ["ddim", "heun"])
def test_deterministic_samples_are_identical_across_runs_and_batch_sizes(sampler):
    digests = {subprocess.run([sys.executable, "-c", SAMPLE_SCRIPT, sampler, str(batch)], capture_output=True,
                              text=True, check=True, timeout=120).stdout.strip() for batch in (100, 100, 7, 33)}
    assert len(digests) == 1 and len(next(iter(digests))) == len(hashlib.sha256().hexdigest())


ENV = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(__import__("pathlib").Path.home())}


def _cli(module, *args, timeout=300):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV, check=False)
    return proc


@pytest.mark.slow
def test_lsde_figures_writes_every_figure_as_png_and_pdf(tmp_path):
    proc = _cli("lightning_sde.cli.figures", f"out={tmp_path}", "paths=4", "interpolation.n=9",
                f"hydra.run.dir={tmp_path}/hydra")
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {"schematic_vp_gaussians_1d", "trajectories_vp_gaussians_1d", "noise_schedules", "interpolation_vp_gaussians_1d"}
    for name in names:
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000 and (tmp_path / f"{name}.pdf").exists()
    bad = _cli("lightning_sde.cli.figures", "figures=[schematic,heatmap]", f"out={tmp_path}/bad",
               f"hydra.run.dir={tmp_path}/hydra")
    assert bad.returncode != 0 and "config figures: unknown ['heatmap']" in bad.stderr


@pytest.mark.slow
def test_lsde_likelihood_on_the_mixture_matches_the_truth_and_two_processes_agree(tmp_path):
    import json

    common = ["n=40", "batch_size=16", "ode.rtol=1e-8", "ode.atol=1e-8"]
    one = _cli("lightning_sde.cli.likelihood", *common, f"out={tmp_path}/one", f"hydra.run.dir={tmp_path}/h1")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _cli("lightning_sde.cli.likelihood", *common, "ddp.devices=2", f"out={tmp_path}/two",
               f"hydra.run.dir={tmp_path}/h2")
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["n"] == 40 and summary["divergence"] == "exact" and summary["max_abs_error"] < 1e-3
    rows = [[json.loads(line) for line in (tmp_path / d / "samples.jsonl").read_text().splitlines()] for d in ("one", "two")]
    assert [r["index"] for r in rows[1]] == list(range(40))  # shards merged in order, none lost or repeated
    assert max(abs(a["logp"] - b["logp"]) for a, b in zip(*rows)) < 1e-5  # batches differ, the answer does not
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2
