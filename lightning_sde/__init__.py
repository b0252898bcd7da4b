"""lightning-sde: score-based generative models in the SDE view, with samplers compared at equal NFE.

The layers, each importing only those before it:
  sde (with errors, downloads, files: plain definitions)
       <-  models (Denoiser, DataMoments, networks), exact (the Gaussian-mixture oracle), losses, probability_flow
       <-  samplers  <-  flow (likelihood, encode/decode), generation, metrics, module, data, plotting, targets
       <-  callbacks, bench  <-  cli (the lsde-* apps)
"""

__version__ = "0.2.0"


def load_denoiser(spec, map_location="cpu", trusted=()):
    """The Denoiser a model spec names, in eval mode: a lightning-sde checkpoint path (read safely, see
    lightning_sde.loading; `trusted`: your own packages whose classes its network and SDE may name, e.g.
    ["my_package"], besides this package's and those of $LSDE_TRUSTED_MODULES) or
    `diffusers:<folder or hub id>[#subfolder]` (a published model, see lightning_sde.models.pretrained)."""
    from lightning_sde.loading import load_denoiser as load

    return load(spec, map_location=map_location, trusted=trusted)
