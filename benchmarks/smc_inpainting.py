"""Sequential Monte Carlo inpainting against the exact conditional, by number of particles.

Three exact mixtures with part of x known, each against samples of GaussianMixture.given (the exact
p(x_unknown | x_known)) by sliced W2 on the unknown part, beside the floor (two exact sample sets, seeds 1 and 2):
  8 Gaussians, x = 1.5 known (p(y | x) has its modes at y < 0 only; replacement puts ~half on those above)
  16-D mixture (seed 0), the first 8 coordinates known;  16-D mixture (seed 1), every other coordinate known
One particle is replacement with ancestral steps (no reweighting). VP SDE, uniform grid, float64. The problems,
particle counts and steps were fixed before the run.

    .venv/bin/python benchmarks/smc_inpainting.py        # ~35 min on 2 cores; writes results/smc_inpainting.{csv,md}
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_sde.exact import eight_gaussians, random_mixture  # noqa: E402
from lightning_sde.files import write_csv  # noqa: E402
from lightning_sde.metrics.sliced import sliced_wasserstein  # noqa: E402
from lightning_sde.models.inpainting import inpainting  # noqa: E402
from lightning_sde.samplers.smc import smc_inpainting  # noqa: E402
from lightning_sde.sde import VPSDE  # noqa: E402

OUT = ROOT / "benchmarks/results/smc_inpainting"
F64 = torch.float64


def cases():
    two = eight_gaussians()
    yield "8 Gaussians, x = 1.5 known", two, torch.tensor([True, False]), torch.tensor([1.5], dtype=F64), 2000
    for seed, known in ((0, torch.arange(16) < 8), (1, torch.arange(16) % 2 == 0)):
        mix = random_mixture(dim=16, n_components=10, seed=seed)
        which = "first 8" if seed == 0 else "every other"
        yield (f"16-D mixture (seed {seed}), {which} known", mix, known,
               mix.sample(1, torch.Generator().manual_seed(5))[0, known], 1000)


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    for name, mix, known, vals, n in cases():
        exact = mix.given(known, vals)
        ref = exact.sample(n, torch.Generator().manual_seed(1))
        floor = float(sliced_wasserstein(exact.sample(n, torch.Generator().manual_seed(2)), ref))
        values = torch.zeros(n, mix.dim, dtype=F64)
        values[:, known] = vals
        den = inpainting(mix.denoiser(VPSDE()), known, values)
        for particles in (1, 8, 32, 128):
            start = time.perf_counter()
            x, info = smc_inpainting(den, range(n), particles=particles, steps=400, dtype=F64)
            rows.append({"case": name, "samples": n, "particles": particles, "steps": info["steps"], "nfe": info["nfe"],
                         "sliced_w2": float(sliced_wasserstein(x[:, ~known], ref)), "floor": floor,
                         "wall_s": time.perf_counter() - start})
            print(rows[-1], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_csv(OUT.with_suffix(".csv"), rows)
    lines = ["| case | floor | " + " | ".join(f"{k} particle{'s' if k > 1 else ''}" for k in (1, 8, 32, 128)) + " |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in dict.fromkeys(r["case"] for r in rows):
        sel = [r for r in rows if r["case"] == name]
        lines.append(f"| {name} | {sel[0]['floor']:.3f} | " + " | ".join(f"{r['sliced_w2']:.3f}" for r in sel) + " |")
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
