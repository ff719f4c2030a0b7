"""The shared engine: loading, samplers, the denoise loop, prompt encoding and VAE conversions."""
from diffdemo.engine.loading import ModelLoadError, ModelSet, load_models
from diffdemo.engine.sampling import DEFAULT_SAMPLER, SAMPLERS, Cancelled, Step, denoise_loop

__all__ = ["DEFAULT_SAMPLER", "SAMPLERS", "Cancelled", "ModelLoadError", "ModelSet", "Step", "denoise_loop",
           "load_models"]
