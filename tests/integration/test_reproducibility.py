"""A seed fixes a deterministic sample bit for bit, in fresh processes and whatever the batch size."""

import hashlib
import subprocess
import sys

import pytest

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
