"""Class conditioning and classifier-free guidance (Ho & Salimans 2022) as a Denoiser, so every sampler gets them
without knowing: `guided(denoiser, labels, w)` is a Denoiser for one batch whose rows have those class labels.

A conditional network is `net(x, t, y)` with y in 0..C-1, and y = C (the null label) for the unconditional
prediction it learned through label dropout. With eps(x | y) and eps(x) from the same network:

    eps_w = eps(x | y) + w (eps(x | y) - eps(x))          w = 0: the conditional model; w > 0: guided

(diffusers' `guidance_scale` is 1 + w). In score form, grad log p_w = (1 + w) grad log p_t(x | y) - w grad log p_t(x):
the score of p_t(x | y)^(1+w) p_t(x)^(-w), which is what the exact oracle checks it against. x0 and v follow through
the Denoiser's conversions of eps, whatever the network predicts.

**NFE rule.** For w != 0 the conditional and the unconditional predictions come from ONE batched forward over the
2B inputs [x, x] with labels [y, null]; it counts as one NFE (a sampler's steps are unchanged, and on a GPU the
doubled batch costs far less than two calls), and `batch_factor` = 2 says so in every result row. For w = 0 there is
no unconditional half: one forward of B inputs, batch factor 1. Comparisons across w at equal NFE are therefore at
equal sampler steps, not at equal network FLOPs; the rows carry the factor that converts one into the other.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from lightning_sde.models.denoiser import Denoiser, Prediction, output_to_eps


def check_guidance(guidance, where: str = "guidance", otherwise: str = "") -> float:
    """The weight w >= 0 on the (1 + w) scale, else ValueError naming `where` (and what `otherwise` it may be)."""
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not 0 <= guidance < math.inf:
        raise ValueError(f"{where}: must be a number >= 0 (0: the conditional model){otherwise}; got {guidance!r}")
    return float(guidance)


def batch_factor(guidance: float | None) -> int:
    """Inputs per sample in one NFE: 2 with guidance (conditional + unconditional in one batch), else 1."""
    return 1 if not guidance else 2


class GuidedDenoiser(Denoiser):
    """The Denoiser of `base`'s conditional network for a batch with fixed labels (one per row, or a single label for
    every row of any batch), at guidance weight w."""

    conditions = True

    def __init__(self, base: Denoiser, labels, guidance: float = 0.0, pilot_labels=None):
        if base.num_classes is None:
            raise ValueError("guidance needs a class-conditional model (num_classes set); this one is unconditional")
        super().__init__(base.net, base.sde, base.parameterization, base.shape, base.sigma_data, base.data_moments,
                         base.num_classes, base.channels_last, base.autocast)
        self.net_batch = base.net_batch
        self.unconditional_learned = base.unconditional_learned
        self.labels = self._checked(labels, base.num_classes)
        self.guidance = check_guidance(guidance)
        if self.guidance != 0 and not base.unconditional_learned:
            raise ValueError(f"guidance {self.guidance:g} needs the unconditional prediction, which this model never "
                             "learned (trained with model.p_uncond=0); sample it at guidance 0")
        # the classes a tuning pilot's rows cycle through: the run's (every batch tunes alike), else this batch's
        self.pilot_labels = self.labels if pilot_labels is None else self._checked(pilot_labels, base.num_classes)

    @staticmethod
    def _checked(labels, num_classes: int) -> Tensor:
        labels = torch.as_tensor(labels)
        labels = labels.reshape(1) if labels.ndim == 0 else labels
        if labels.ndim != 1 or labels.is_floating_point() or not ((labels >= 0) & (labels < num_classes)).all():
            raise ValueError(f"labels must be a 1-D tensor of classes in 0..{num_classes - 1}; "
                             f"got {labels.tolist() if labels.numel() <= 20 else tuple(labels.shape)}")
        return labels.long()

    @property
    def batch_factor(self) -> int:
        return batch_factor(self.guidance)

    def fingerprint_extra(self) -> tuple:
        return (self.guidance, tuple(self.pilot_labels.tolist()))

    def for_rows(self, n: int) -> "GuidedDenoiser":
        """The same guidance for n rows (a tuning pilot) whose labels cycle through pilot_labels."""
        if self.pilot_labels is self.labels and len(self.labels) in (1, n):
            return self
        labels = self.pilot_labels if len(self.pilot_labels) == 1 else self.pilot_labels[torch.arange(n) %
                                                                                          len(self.pilot_labels)]
        return GuidedDenoiser(self, labels, self.guidance, self.pilot_labels)

    def tiled(self, n: int) -> "GuidedDenoiser":
        if len(self.labels) in (1, n):
            return self
        return GuidedDenoiser(self, self.labels[torch.arange(n) % len(self.labels)], self.guidance, self.pilot_labels)

    def forward(self, x: Tensor, t: Tensor | float, labels: Tensor | None = None) -> Prediction:
        if labels is not None:
            raise ValueError("a guided denoiser has its labels already; call it as denoiser(x, t)")
        if x.shape[0] != len(self.labels) and len(self.labels) != 1:
            raise ValueError(f"this guided denoiser holds {len(self.labels)} labels but got a batch of {x.shape[0]}; "
                             "make one per batch (or give one label for every row)")
        labels = self.labels.to(x.device).expand(x.shape[0])
        if self.guidance == 0:
            return super().forward(x, t, labels)
        t, alpha, sigma, c_in = self.coefficients(x, t)
        self.nfe += 1
        both = torch.cat([c_in * x, c_in * x])
        null = torch.full_like(labels, self.num_classes)
        out = self.call_net(both, torch.cat([t, t]), torch.cat([labels, null]))
        eps_c, eps_u = output_to_eps(self.parameterization, out, torch.cat([x, x]), torch.cat([alpha, alpha]),
                                     torch.cat([sigma, sigma])).chunk(2)
        return Prediction(x, alpha, sigma, eps_c + self.guidance * (eps_c - eps_u))


def guided(denoiser: Denoiser, labels, guidance: float = 0.0, pilot_labels=None) -> GuidedDenoiser:
    """`denoiser` conditioned on per-row `labels` with classifier-free guidance weight `guidance` (see module doc).
    A grid tuned or selected on a pilot (grid="optimized" / "select") is tuned for rows of `pilot_labels` (cycled):
    give the run's classes, so that every batch samples on one grid whatever its labels; None: this batch's."""
    return GuidedDenoiser(denoiser, labels, guidance, pilot_labels)
