"""lightning-sde: score-based generative models in the SDE view, with samplers compared at equal NFE.

The layers, each importing only those before it:
  sde (with errors, downloads, files: plain definitions)
       <-  models (Denoiser, DataMoments, networks), exact (the Gaussian-mixture oracle), losses, probability_flow
       <-  samplers  <-  flow (likelihood, encode/decode), generation, metrics, module, data, plotting, targets
       <-  callbacks, bench  <-  cli (the lsde-* apps)
"""

__version__ = "0.2.0"


def load_denoiser(spec, map_location="cpu", trusted=None):
    """The Denoiser a model spec names, in eval mode: a lightning-sde checkpoint path (read safely, see
    lightning_sde.loading; `trusted` are the module prefixes its network and SDE may name, by default this package's
    and those of $LSDE_TRUSTED_MODULES: add your own package's for a network of yours) or
    `diffusers:<folder or hub id>[#subfolder]` (a published model, see lightning_sde.models.pretrained)."""
    from lightning_sde.loading import load_denoiser as load

    return load(spec, map_location=map_location, trusted=None if trusted is None else tuple(trusted))
