"""A residual MLP score network with a Fourier time embedding, for low-dimensional data."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_sde.models.embedding import FourierTimeEmbedding, LabelEmbedding, check_labels


class ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.time = nn.Linear(width, width)
        self.net = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(width, width))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.net(self.norm(h) + self.time(emb))


class MLP(nn.Module):
    """net(x, t) for x of shape (B, dim); output of the same shape (in the module's parameterisation).
    With `num_classes`, net(x, t, y): a class embedding is added to the time embedding (y = None or num_classes:
    no label)."""

    def __init__(self, dim: int, width: int = 256, depth: int = 4, time_embed_dim: int = 128,
                 fourier_scale: float = 16.0, dropout: float = 0.0, num_classes: int | None = None):
        super().__init__()
        for name, value in (("dim", dim), ("width", width), ("depth", depth), ("time_embed_dim", time_embed_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MLP: {name} must be an integer >= 1; got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP: dropout must lie in [0, 1); got {dropout!r}")
        if not fourier_scale > 0:
            raise ValueError(f"MLP: fourier_scale must be > 0; got {fourier_scale!r}")
        self.embed = nn.Sequential(FourierTimeEmbedding(time_embed_dim, fourier_scale),
                                   nn.Linear(time_embed_dim, width))
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))
        self.num_classes = num_classes
        self.label = LabelEmbedding(num_classes, width) if num_classes is not None else None

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.inp.in_features:
            raise ValueError(f"MLP expects x of shape (B, {self.inp.in_features}) (its dim); got {tuple(x.shape)}")
        check_labels(y, self.num_classes, "MLP")
        emb = self.embed(t)
        if self.label is not None:
            emb = emb + self.label(y, x.shape[0], x.device)
        h = self.inp(x.to(self.inp.weight.dtype))  # in the weights' dtype (float64 too)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).to(x.dtype)
