"""Fixtures shared by the unit and integration tests; plain helpers live in tests/helpers/."""

from __future__ import annotations

import os

import pytest
import torch

from helpers.oracles import SDES
from lightning_sde.exact import eight_gaussians as make_eight_gaussians


def pytest_configure(config):
    """Under pytest-xdist (`make test`: 2 workers), the cores are shared out: each worker and the processes its tests
    start get cores / workers threads. Two workers with a full thread pool each would oversubscribe the cores, and
    OpenMP's spin-waiting then slows both (see one_thread)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


@pytest.fixture(params=sorted(SDES), ids=sorted(SDES))
def sde(request):
    """Each standard SDE in turn: VP and sub-VP (beta 0.1..20, eps 1e-3) and VE (sigma 0.01..50, eps 1e-5)."""
    return SDES[request.param]


@pytest.fixture
def vp():
    return SDES["vp"]


@pytest.fixture(scope="session")
def eight_gaussians():
    """The 8 Gaussians: means on a circle of radius 4, std_k = 0.1 + 0.4 k / 7."""
    return make_eight_gaussians()


@pytest.fixture
def one_thread():
    """Small batches: intra-op threads only add overhead, and on a busy 2-core runner OpenMP's spin-waiting made
    each evaluation 20-80x slower. Restored after the test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
