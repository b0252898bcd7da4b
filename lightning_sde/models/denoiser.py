"""Denoiser: turns one network forward into eps, score and x0 predictions, and counts NFE.

A network predicts one of four targets for x_t = alpha x0 + sigma eps:
  eps     eps
  score   grad log p_t = -eps / sigma
  x0      E[x0 | x_t]
  v       alpha eps - sigma x0   (Salimans & Ho 2022, generalised to any alpha, sigma)
The Denoiser converts the output to eps once; score and x0 follow from it. Samplers only ever see Denoisers.
"""

from __future__ import annotations

import copy
import hashlib
import math
import numbers
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from lightning_sde.models.moments import DataMoments
from lightning_sde.sde import SDE, SDES, broadcast_time, check_sde

PARAMETERIZATIONS = ("eps", "score", "x0", "v")
AUTOCAST = {None: None, "bf16": torch.bfloat16}
RANDOM_IN_TRAINING = (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm)


def warn_if_training(denoiser: nn.Module, results: str) -> None:
    """Say so when a network runs in training mode (its dropout draws, its batch norm uses the batch) before it makes
    `results` (samples, latents, log-likelihoods)."""
    live = [type(m).__name__ for m in denoiser.modules() if m.training and isinstance(m, RANDOM_IN_TRAINING)
            and getattr(m, "p", 1) > 0]
    if live:
        warnings.warn(f"the network runs in training mode (its {live[0]} is active: {results} vary from call to call "
                      "and depend on the batch): call .eval() on the Denoiser or the network (load_denoiser's are)",
                      stacklevel=outside_package())


def outside_package() -> int:
    """The stacklevel of a warning raised here that names the first caller outside this package and torch (whose
    decorators, e.g. no_grad, stand between): the user's line."""
    package = tuple(str(folder) + os.sep for folder in (Path(__file__).resolve().parents[1],
                                                         Path(torch.__file__).resolve().parent))
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


@dataclass
class Prediction:
    """What a denoiser says about x_t at time t; alpha, sigma are broadcast to x's shape."""

    x: Tensor
    alpha: Tensor
    sigma: Tensor
    eps: Tensor

    @property
    def score(self) -> Tensor:
        return -self.eps / self.sigma

    @property
    def x0(self) -> Tensor:
        return (self.x - self.sigma * self.eps) / self.alpha


def output_to_eps(parameterization: str, out: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    if parameterization == "eps":
        return out
    if parameterization == "score":
        return -sigma * out
    if parameterization == "x0":
        return (x - alpha * out) / sigma
    if parameterization == "v":
        return (sigma * x + alpha * out) / (alpha**2 + sigma**2)
    raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}")


def eps_to_target(parameterization: str, eps: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The regression target of a parameterization, given the true eps and x0 (used by the training loss)."""
    if parameterization == "eps":
        return eps
    if parameterization == "score":
        return -eps / sigma
    if parameterization == "x0":
        return x0
    if parameterization == "v":
        return alpha * eps - sigma * x0
    raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}")


class Denoiser(nn.Module):
    """Wraps net(x, t) -> output in `parameterization`; `denoiser(x, t)` returns a Prediction.

    `nfe` counts network forwards over the batch (one call = one NFE, whatever the batch size).
    `shape` is the shape of one sample, used to validate sampler inputs.
    `sigma_data`, if given, scales the network input by c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2) (EDM): with
    sigma_data the data's std per coordinate the input has about unit variance at every t, and whatever its value the
    input stays bounded as sigma grows (essential on VE, where x_T has std sigma_max).
    `data_moments` (a DataMoments, or None) is the data's mean and covariance, for samplers' gaussian_start (not
    for a denoiser that `conditions` what it samples: guidance, inpainting; those start at T).
    `channels_last` feeds an image network NHWC inputs (its weights should be channels_last too: ScoreModule does
    both); `autocast="bf16"` runs the network under bf16 autocast and returns its output in the input's dtype, so that
    samplers keep their arithmetic in fp32/fp64 (training uses Lightning's trainer.precision=bf16-mixed instead).
    `net_batch` (set through `with_net_batch`) splits a call over more rows into network calls of at most that many:
    it bounds the memory of a large batch such as a tuning pilot, and is still one NFE.
    """

    conditions = False  # samples p(x | something) whose moments data_moments are not: no Gaussian start
    unconditional_learned = True  # a class-conditional network's null label was trained (model.p_uncond > 0)

    def __init__(self, net: nn.Module | Callable, sde: SDE, parameterization: str, shape: tuple[int, ...],
                 sigma_data: float | None = None, data_moments: DataMoments | None = None,
                 num_classes: int | None = None, channels_last: bool = False, autocast: str | None = None):
        super().__init__()
        if not isinstance(channels_last, bool):
            raise ValueError(f"channels_last must be true or false; got {channels_last!r}")
        if channels_last and len(shape) != 3:
            raise ValueError(f"channels_last is for image networks (samples of shape (C, H, W)); got shape {shape}")
        if autocast not in AUTOCAST:
            raise ValueError(f"autocast must be one of {tuple(AUTOCAST)}; got {autocast!r}")
        if sigma_data is not None and not 0 < sigma_data < math.inf:
            raise ValueError(f"sigma_data must be > 0 and finite (or None for no input scaling); got {sigma_data}")
        if data_moments is not None and not isinstance(data_moments, DataMoments):
            raise TypeError(f"data_moments must be a DataMoments or None; got {type(data_moments).__name__}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}")
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be an SDE (e.g. VPSDE()); got {sde!r}")
        if type(sde) not in SDES.values():  # a user's class: its drift, diffusion and marginals must agree
            check_sde(sde)
        if not shape or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape):
            raise ValueError("shape must be one sample's shape, sizes >= 1 (e.g. (2,) or (3, 32, 32); 1-D data: "
                             f"(1,)); got {shape!r}")
        if data_moments is not None and data_moments.mean.numel() != math.prod(shape):
            raise ValueError(f"data_moments are of {data_moments.mean.numel()} dimensions; samples of shape "
                             f"{tuple(shape)} have {math.prod(shape)}")
        self.net = net
        self.sde = sde
        self.parameterization = parameterization
        self.shape = tuple(shape)
        self.sigma_data = sigma_data
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"num_classes must be an integer >= 1 (or None: unconditional); got {num_classes!r}")
        self.nfe = 0
        self.data_moments = data_moments
        self.num_classes = num_classes  # a conditional net(x, t, y): y in 0..num_classes-1, num_classes = no label
        self.channels_last = channels_last
        self.autocast = autocast
        self.net_batch: int | None = None

    def with_net_batch(self, rows: int | None) -> "Denoiser":
        """This denoiser (same network, own NFE count) calling its network on at most `rows` rows at a time."""
        if rows is None:
            return self
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ValueError(f"net_batch must be a number of rows >= 1 (or None); got {rows!r}")
        chunked = copy.copy(self)
        chunked.net_batch = rows
        return chunked

    def coefficients(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor, Tensor | float]:
        """(t per sample, alpha, sigma, the input scale c_in), broadcast to x. `t` is one time or one per sample (B
        values of any shape: (B,), (B, 1)); a Python number outside [sde.earliest, T] is refused (a tensor's values
        are not read: on a GPU that waits for the device at every step)."""
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor; got {x.dtype} (t would be rounded to it)")
        if isinstance(t, numbers.Real) and not self.sde.earliest <= t <= self.sde.T * (1 + 1e-6):
            raise ValueError(f"t must lie in [{self.sde.earliest:g}, T = {self.sde.T:g}]; got {t}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.numel() == 1:
            t = t.reshape(()).expand(x.shape[0])
        elif t.numel() == x.shape[0]:
            t = t.reshape(x.shape[0])
        else:
            raise ValueError(f"t has shape {tuple(t.shape)}: one time, or one per sample of the batch of {x.shape[0]}")
        alpha = broadcast_time(self.sde.alpha(t), x)
        sigma = broadcast_time(self.sde.sigma(t), x)
        c_in = 1.0 if self.sigma_data is None else (alpha**2 * self.sigma_data**2 + sigma**2).rsqrt()
        return t, alpha, sigma, c_in

    def forward(self, x: Tensor, t: Tensor | float, labels: Tensor | None = None) -> Prediction:
        """One NFE. `labels` (B,) condition a class-conditional network (num_classes = the unconditional row)."""
        t, alpha, sigma, c_in = self.coefficients(x, t)
        out = self.call_net(c_in * x, t, labels)
        self.nfe += 1
        return Prediction(x, alpha, sigma, output_to_eps(self.parameterization, out, x, alpha, sigma))

    def call_net(self, x_in: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """The network's output on scaled inputs (t and labels per row), in x_in's dtype: with channels_last and
        autocast as set, `net_batch` rows at a time; inputs and output of the samples' shape (a net returning
        another would be broadcast across the samples). Counts no NFE (forward does)."""
        if x_in.shape[1:] != self.shape:
            raise ValueError(f"x has shape {tuple(x_in.shape)}: a batch of samples of shape {self.shape} expected")
        out = self._run_in_batches(x_in, t, labels)
        if not torch.is_tensor(out):
            raise TypeError(f"the network returned a {type(out).__name__}, not a tensor: a Denoiser's network returns "
                            f"its {self.parameterization} prediction alone (wrap one that returns more)")
        if out.shape != x_in.shape:
            raise ValueError(f"the network returned shape {tuple(out.shape)} for inputs of shape {tuple(x_in.shape)}: "
                             f"its {self.parameterization} prediction must have the inputs' shape")
        return out

    def _run_in_batches(self, x_in: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        if self.channels_last:
            x_in = x_in.contiguous(memory_format=torch.channels_last)
        args = (x_in, t) if labels is None else (x_in, t, labels)
        rows = self.net_batch
        if rows is None or len(x_in) <= rows:
            return self._run_net(args)
        return torch.cat([self._run_net([a[i:i + rows] for a in args]) for i in range(0, len(x_in), rows)])

    def _run_net(self, args) -> Tensor:
        # the network in eval mode only (sampling, evaluations; shared by wrappers): training has trainer.precision
        if self.autocast is None or getattr(self.net, "training", False):
            return self.net(*args)
        with torch.autocast(args[0].device.type, dtype=AUTOCAST[self.autocast]):
            return self.net(*args).to(args[0].dtype)

    def fingerprint_extra(self) -> tuple:
        """What a subclass computes differently from the same network (e.g. guidance); part of fingerprint()."""
        return ()

    def for_rows(self, n: int) -> "Denoiser":
        """This denoiser for a batch of n other rows (a tuning pilot): itself, unless it holds per-row state."""
        return self

    def tiled(self, n: int) -> "Denoiser":
        """This denoiser for n rows, row i being this batch's row i mod B (SMC's particles): its per-row state
        repeated, where it holds any."""
        return self

    def fingerprint(self) -> str | None:
        """A digest that changes whenever what the denoiser computes changes: the SDE, the parameterisation, the
        input scaling and every weight and buffer of the network (or the tensors an oracle, or a submodule of the
        network, declares through `fingerprint_tensors()`). It keys caches of things tuned for one model, such as
        optimised time grids. None when the network holds no tensors (a plain function): nothing tells two apart."""
        is_module = isinstance(self.net, nn.Module)
        tensors = list(self.net.state_dict().values()) if is_module else []
        for part in self.net.modules() if is_module else [self.net]:  # an oracle, also inside a wrapper
            tensors += list(getattr(part, "fingerprint_tensors", lambda: ())())
        if not tensors:
            return None
        digest = hashlib.blake2b(digest_size=16)
        digest.update(repr((self.sde, self.parameterization, self.sigma_data, self.shape, self.num_classes,
                            self.autocast, self.fingerprint_extra())).encode())
        for tensor in tensors:
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
