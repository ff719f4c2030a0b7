"""How fast this machine runs each loaded model: one timed call of every U-Net and VAE at its native size.

The request budget (:mod:`diffdemo.tasks.budget`) multiplies these by a request's work, so that a request's cost is
estimated in seconds on the machine that will run it, whatever the model and device. Each module is called once
to warm up (first calls allocate and pick kernels) and once timed, with the inputs a task gives it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from diffdemo.engine.images import decode_latents
from diffdemo.engine.prompts import encode_prompt
from diffdemo.engine.sampling import guided


@dataclass(frozen=True)
class Speeds:
    """Seconds one call takes on this machine, each at its model's native size (None: the model is not loaded)."""

    unet: float  # the base U-Net on a classifier-free-guidance batch of 2 (one step of one image)
    vae: float  # one VAE decode of one image
    upscaler: float | None = None  # the x4 upscaler's U-Net on one tile, one sample
    upscaler_vae: float | None = None  # the upscaler's VAE decode of one tile
    denoiser: float | None = None  # the pixel-space denoiser's U-Net on one image
    measured: bool = True  # False: rough defaults (no model could be called when the app started)


# for a GPU that cannot be called at start (ZeroGPU hands one out per request): about what an A10G-class GPU does
# with Stable Diffusion 1.x at 512², rounded up
GPU_GUESS = Speeds(unet=0.08, vae=0.15, upscaler=0.3, upscaler_vae=0.3, denoiser=0.02, measured=False)


def _timed(call) -> float:
    call()  # warm-up
    started = time.perf_counter()
    call()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def measure_speeds(models) -> Speeds:
    """Times one call of each model in ``models`` (a loaded ModelSet); about 2 calls' time per model."""
    with torch.inference_mode():
        side = models.native_size // models.vae_scale
        latents = torch.zeros(1, models.unet.config.in_channels, side, side, device=models.device, dtype=models.dtype)
        prompt = encode_prompt(models, "a", "", 1)
        predict = guided(models.unet, prompt.cond, prompt.uncond, 5.0)
        t = torch.tensor(500, device=models.device)
        unet = _timed(lambda: predict(latents, t))
        channels = models.vae.config.latent_channels
        vae = _timed(lambda: decode_latents(models.vae, latents[:, :channels]))
        upscaler = upscaler_vae = denoiser = None
        if models.upscaler is not None:
            upscaler, upscaler_vae = _upscaler_speeds(models.upscaler)
        if models.denoiser is not None:
            denoiser = _denoiser_speed(models.denoiser)
    return Speeds(unet=unet, vae=vae, upscaler=upscaler, upscaler_vae=upscaler_vae, denoiser=denoiser)


def _upscaler_speeds(upscaler) -> tuple[float, float]:
    unet = upscaler.unet
    size = unet.config.sample_size
    side = size[0] if isinstance(size, (list, tuple)) else size
    channels = upscaler.vae.config.latent_channels
    latents = torch.zeros(1, channels, side, side, device=unet.device, dtype=unet.dtype)
    condition = torch.zeros(1, unet.config.in_channels - channels, side, side, device=unet.device, dtype=unet.dtype)
    text = torch.zeros(1, 77, unet.config.cross_attention_dim, device=unet.device, dtype=unet.dtype)
    level = torch.tensor([20], device=unet.device)
    predict = guided(unet, text, None, 1.0, extra_channels=condition, class_labels=level)
    t = torch.tensor(500, device=unet.device)
    return _timed(lambda: predict(latents, t)), _timed(lambda: decode_latents(upscaler.vae, latents))


def _denoiser_speed(denoiser) -> float:
    unet = denoiser.unet
    size = unet.config.sample_size
    side = size[0] if isinstance(size, (list, tuple)) else size
    x = torch.zeros(1, unet.config.in_channels, side, side, device=unet.device, dtype=unet.dtype)
    t = torch.tensor([500], device=unet.device)
    return _timed(lambda: unet(x, t).sample)
