"""lightning-sde: score-based generative models in the SDE view, with samplers compared at equal NFE."""

__version__ = "0.1.0"
