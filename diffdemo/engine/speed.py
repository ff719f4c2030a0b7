"""How fast this machine runs each loaded model: timed calls of every U-Net and VAE, at its native size and half it.

The request budget (:mod:`diffdemo.tasks.budget`) prices a request with these, so that its cost is estimated in
seconds on the machine that will run it, whatever the model and device. A call's time is a fixed part (kernel
launches, Python, small layers) plus a part that grows with the picture; two sizes tell them apart, which matters
for small models: a native-size call of the built-in model is mostly the fixed part, so scaling it with the pixel
count alone would price a 512² image 10-50× too high. Each call is made once to warm up, then timed twice.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from diffdemo.engine.conditioning import generation_inputs
from diffdemo.engine.images import decode_latents
from diffdemo.engine.prompts import encode_prompt
from diffdemo.engine.sampling import DEFAULT_GUIDANCE, guided

MIN_SCALING = 0.25  # at least this share of a native-size call grows with the picture (timings are noisy)


@dataclass(frozen=True)
class Speed:
    """One model call takes ``fixed`` seconds plus ``per_area`` seconds per native-size picture it works on."""

    fixed: float
    per_area: float

    def seconds(self, area: float = 1.0, batch: float = 1.0) -> float:
        """A call on ``batch`` pictures of ``area`` native areas each."""
        return self.fixed + self.per_area * area * batch

    @classmethod
    def fit(cls, native: float, half: float | None) -> Speed:
        """From a native-size call's time and a half-side (quarter-area) call's time, if there is one."""
        per_area = native if half is None else (native - half) / 0.75
        per_area = min(native, max(per_area, MIN_SCALING * native))
        return cls(fixed=native - per_area, per_area=per_area)


@dataclass(frozen=True)
class Speeds:
    """What one call of each loaded model takes on this machine (None: that model is not loaded)."""

    unet: Speed  # the base U-Net on a classifier-free-guidance batch of 2 (one step of one image)
    vae: Speed  # one VAE decode of one image
    upscaler: Speed | None = None  # the x4 upscaler's U-Net on one tile, one sample
    upscaler_vae: Speed | None = None  # the upscaler's VAE decode of one tile
    denoiser: Speed | None = None  # the pixel-space denoiser's U-Net on one image
    measured: bool = True  # False: rough defaults (no model could be called when the app started)


# for a GPU that cannot be called at start (ZeroGPU hands one out per request): about what an A10G-class GPU does
# with Stable Diffusion 1.x at 512², rounded up
GPU_GUESS = Speeds(unet=Speed(0.02, 0.06), vae=Speed(0.02, 0.13), upscaler=Speed(0.05, 0.25),
                   upscaler_vae=Speed(0.05, 0.25), denoiser=Speed(0.01, 0.01), measured=False)


def _timed(call) -> float:
    """The faster of two timed calls after a warm-up one (a busy machine slows single calls unevenly)."""
    call()
    times = []
    for _ in range(2):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        call()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times)


def _fit(call, side: int, multiple: int) -> Speed:
    """Times ``call(side)`` and, where the model takes it, ``call(side // 2)``."""
    half = side // 2
    return Speed.fit(_timed(lambda: call(side)), _timed(lambda: call(half)) if half % multiple == 0 else None)


def measure_speeds(models) -> Speeds:
    """Times each model in ``models`` (a loaded ModelSet): six calls per model, three of them at half size."""
    with torch.inference_mode():
        side, scale = models.native_size // models.vae_scale, models.vae_scale
        prompt = encode_prompt(models, "a", "", 1)
        t = torch.tensor(500, device=models.device)

        def latents(s):
            return torch.zeros(1, models.latent_channels, s, s, device=models.device, dtype=models.dtype)

        def step(s):  # as text_to_image calls it (SDXL's size ids, an inpainting U-Net's mask channels)
            inputs = generation_inputs(models, prompt, 1, s * scale, s * scale)
            return guided(models.unet, prompt.cond, prompt.uncond, DEFAULT_GUIDANCE, **inputs)(latents(s), t)

        multiple = 2 ** (len(models.unet.config.block_out_channels) - 1)
        unet = _fit(step, side, multiple)
        vae = _fit(lambda s: decode_latents(models.vae, latents(s)), side, 1)
        upscaler = upscaler_vae = denoiser = None
        if models.upscaler is not None:
            upscaler, upscaler_vae = _upscaler_speeds(models.upscaler)
        if models.denoiser is not None:
            denoiser = _denoiser_speed(models.denoiser)
    return Speeds(unet=unet, vae=vae, upscaler=upscaler, upscaler_vae=upscaler_vae, denoiser=denoiser)


def _native_side(unet) -> int:
    size = unet.config.sample_size
    return size[0] if isinstance(size, (list, tuple)) else size


def _upscaler_speeds(upscaler) -> tuple[Speed, Speed]:
    unet, channels = upscaler.unet, upscaler.vae.config.latent_channels
    options = dict(device=unet.device, dtype=unet.dtype)
    text = torch.zeros(1, 77, unet.config.cross_attention_dim, **options)
    level, t = torch.tensor([20], device=unet.device), torch.tensor(500, device=unet.device)

    def step(side):
        condition = torch.zeros(1, unet.config.in_channels - channels, side, side, **options)
        predict = guided(unet, text, None, 1.0, extra_channels=condition, class_labels=level)
        return predict(torch.zeros(1, channels, side, side, **options), t)

    multiple = 2 ** (len(unet.config.block_out_channels) - 1)
    side = _native_side(unet)
    return (_fit(step, side, multiple),
            _fit(lambda s: decode_latents(upscaler.vae, torch.zeros(1, channels, s, s, **options)), side, 1))


def _denoiser_speed(denoiser) -> Speed:
    unet = denoiser.unet
    options = dict(device=unet.device, dtype=unet.dtype)
    t = torch.tensor([500], device=unet.device)
    multiple = 2 ** (len(unet.config.block_out_channels) - 1)
    return _fit(lambda s: unet(torch.zeros(1, unet.config.in_channels, s, s, **options), t).sample,
                _native_side(unet), multiple)
