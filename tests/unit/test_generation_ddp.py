"""generate under two real gloo processes: a solve that diverges on one of them stops both with its error (the other
process waited for it in the gather: a timeout under NCCL, a traceback under gloo)."""

import os
import socket

import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_sde.generation import generate
from lightning_sde.models.denoiser import Denoiser
from lightning_sde.samplers import build_sampler
from lightning_sde.sde import VPSDE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        bad_rank = 1  # its network answers NaN: its dopri5 step size underflows; rank 0's solves are fine
        net = (lambda x, t: x * float("nan")) if rank == bad_rank else (lambda x, t: 0.1 * x)
        den = Denoiser(net, VPSDE(), "eps", (2,))
        try:
            generate(build_sampler("ode", rtol=1e-3, atol=1e-3), den, range(8), 4, "cpu")
            result = "returned"
        except FloatingPointError as err:
            result = f"FloatingPointError: {err}"
        with open(f"{out}.{rank}", "w") as fh:
            fh.write(result)
    finally:
        dist.destroy_process_group()


def test_a_solve_that_diverges_on_one_process_stops_both_with_its_error(tmp_path):
    out = str(tmp_path / "result")
    mp.start_processes(_run, args=(_free_port(), out), nprocs=2, start_method="fork", join=True)
    results = [open(f"{out}.{rank}").read() for rank in (0, 1)]
    assert all(r.startswith("FloatingPointError: ") and "step size underflowed" in r for r in results), results
    assert results[0] == results[1]


def _run_stop_and_wall(rank: int, port: int, out: str) -> None:
    import time

    from lightning_sde.generation import GenerationStopped

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        pause = 0.02 if rank == 0 else 0.04  # rank 1 is the slower process

        def net(x, t):
            time.sleep(pause)
            return 0.1 * x

        den = Denoiser(net, VPSDE(), "eps", (2,))
        started = time.perf_counter()
        samples = generate(build_sampler("ddim", steps=5), den, range(8), 4, "cpu")
        own = time.perf_counter() - started
        try:
            generate(build_sampler("ddim", steps=5), den, range(8), 4, "cpu", stop=lambda: rank == 1)
            stopped = "returned"
        except GenerationStopped:
            stopped = "stopped"
        with open(f"{out}.{rank}", "w") as fh:
            fh.write(f"{own} {samples.wall_s if samples is not None else -1} {stopped}")
    finally:
        dist.destroy_process_group()


def test_a_stop_on_one_process_stops_every_one_and_the_time_is_the_slowest_processs():
    """A stop answered on rank 1 only left rank 0 returning samples with rank 1's seeds unsampled (uninitialised
    memory, scored as samples); the wall time is the slowest process's, not the sum."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "result")
        mp.start_processes(_run_stop_and_wall, args=(_free_port(), out), nprocs=2, start_method="fork", join=True)
        (own0, wall, stop0), (own1, _, stop1) = (open(f"{out}.{rank}").read().split() for rank in (0, 1))
    assert (stop0, stop1) == ("stopped", "stopped")
    assert 5 * 0.04 <= float(wall) <= float(own1), (wall, own0, own1)  # its batch: 5 NFE at 40 ms (own1: it waited)
