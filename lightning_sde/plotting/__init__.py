"""Views: sample plots, sweep plots, the SDE chapter's figures and plain-text tables (matplotlib, Agg backend)."""

from lightning_sde.plotting.samples import drawable, image_grid, scatter_grid
from lightning_sde.plotting.tables import text_table

__all__ = ["drawable", "image_grid", "scatter_grid", "text_table"]
