"""Fixtures shared by the unit and integration tests; plain helpers live in tests/helpers/."""

from __future__ import annotations

import os
import shutil
import tempfile

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
    # the suite runs in an environment of its own: a user's site file, run name, trusted modules or W&B account (set
    # in their shell for their own runs) would change what the tests and the apps they start do
    for key in [k for k in os.environ if k.startswith(("LSDE_", "WANDB_"))]:
        del os.environ[key]
    # the apps' caches, for tests and the apps they start (set before the test modules copy the environment): not the
    # checkout's ./outputs/cache or ~/.cache/wandb
    config.lsde_caches = tempfile.mkdtemp(prefix="lsde-test-caches-")
    os.environ["LSDE_CACHE"] = os.path.join(config.lsde_caches, "lsde")
    os.environ["WANDB_CACHE_DIR"] = os.path.join(config.lsde_caches, "wandb")


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "lsde_caches", ""), ignore_errors=True)


# The files that take minutes, longest first (seconds summed over their tests, `make test PYTEST_ARGS=--durations=0`
# on 2 cores: 509, 306, 254, 217, 214, 158, 57, 50, 46, 40, 37, 36, 32; no other over 30). `make test` hands whole
# files to its two workers in collection order (--dist loadfile --no-loadscope-reorder): started first, they leave the
# short files to fill the end. A long file left off this list runs last, alone: test_sample_app.py (313 s) did, and
# one worker finished 6 minutes after the other (28 min in all, 50 of work).
LONGEST_FIRST = ("test_slurm.py", "test_reliability.py", "test_train.py", "test_sample_app.py", "test_cli_apps.py",
                 "test_bench.py", "test_flow.py", "test_conditional_train.py", "test_pretrained_apps.py",
                 "test_samplers.py", "test_inpainting.py", "test_pretrained.py", "test_configs.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


@pytest.fixture(autouse=True)
def own_environment():
    """Each test leaves the environment as it found it: Lightning's seed_everything sets PL_GLOBAL_SEED, which seeds
    every later fit in the process."""
    environment = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(environment)


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
