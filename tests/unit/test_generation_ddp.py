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
