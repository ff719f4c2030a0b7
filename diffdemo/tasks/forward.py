"""Forward process explorer: noise an image to any timestep t with q(x_t|x_0), in latent and in pixel space, and
read the noise schedule (β_t, ᾱ_t, SNR) of the chosen sampler.

Maths map (Ho et al. 2020; Rombach et al. 2022):
  beta       β_t, the noise variance one forward step adds: q(x_t|x_{t−1}) = N(√(1−β_t)·x_{t−1}, β_t·I)
  alpha_bar  ᾱ_t = Π_{s≤t}(1−β_s), the share of signal variance left: q(x_t|x_0) = N(√ᾱ_t·x_0, (1−ᾱ_t)·I),
             so any t is reached in one jump, x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε
  snr        SNR(t) = ᾱ_t/(1−ᾱ_t); a zero-terminal-SNR schedule (the embedded model's) has ᾱ_T = 0, SNR(T) = 0,
             log SNR(T) = −∞ (None in the metadata); some samplers floor ᾱ_T at 2⁻²⁴ to keep σ_T finite
Latent space: x_0 = the VAE's encoding of the image (scaled latents, ``1×4×H/8×W/8``), noised, then decoded for
display. Pixel space: x_0 is the image itself in [-1, 1]. One ε per space (seeded, drawn on the CPU) serves every
t, so the row of t values differs only in ᾱ_t.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from diffdemo.engine.images import decode_latents, encode_pixels, pil_to_tensor, tensor_to_pil
from diffdemo.engine.loading import ModelSet
from diffdemo.engine.sampling import DEFAULT_SAMPLER, SAMPLERS, StepCallback, make_scheduler
from diffdemo.tasks.common import (InvalidRequest, TaskResult, as_number, check_choice, library_versions,
                                   resolve_seed)
from diffdemo.tasks.inputs import WHITE, open_image, to_rgb

ROW_FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)  # the default row: t = 0, T/10, T/4, T/2, 3T/4, T−1
MAX_ROW = 8
MAX_PIXELS = 16_000_000  # inputs are resized to the model's size; this only bounds what is decoded first
MAX_SIDE = 8192
TILE = 128  # row tiles, pixels on the longer side
LATENT_RANGE = 3.0  # latent values shown: [−3, 3] -> [0, 255]
OUTPUTS = ("input", "latent", "pixel", "latent_values", "row")


@dataclass(frozen=True)
class ForwardRequest:
    """``image``: PIL image, ``H×W[×C]`` uint8 array, file path or bytes (resized so its longer side is the model's
    native size); ``t``: timestep in [0, T−1] (T = the scheduler's ``num_train_timesteps``, 1,000 here);
    ``seed``: −1 = random; ``sampler``: whose schedule ᾱ_t is used; ``row``: timesteps for the row of x_t images
    (None = 0, T/10, T/4, T/2, 3T/4, T−1)."""

    image: object
    t: int = 500
    seed: int = 0
    sampler: str = DEFAULT_SAMPLER
    row: tuple | None = None


def validate(models: ModelSet, request: ForwardRequest) -> ForwardRequest:
    """Checks everything but the image; fills the row and draws the seed. Raises InvalidRequest."""
    check_choice("sampler", request.sampler, SAMPLERS)
    last = models.scheduler.config.num_train_timesteps - 1
    row = request.row
    if row is None:
        row = tuple(sorted({min(round(f * (last + 1)), last) for f in ROW_FRACTIONS}))
    if isinstance(row, (str, bytes)) or not hasattr(row, "__len__") or not 1 <= len(row) <= MAX_ROW:
        raise InvalidRequest(f"The row must be a list of 1 to {MAX_ROW} timesteps between 0 and {last}.")
    return replace(request, t=as_number("t", request.t, integer=True, low=0, high=last),
                   seed=resolve_seed(request.seed),
                   row=tuple(as_number("row timestep", value, integer=True, low=0, high=last) for value in row))


def noise_schedule(models: ModelSet, sampler: str = DEFAULT_SAMPLER) -> dict[str, np.ndarray]:
    """The schedule of ``sampler`` built from the model's scheduler config, one value per timestep (float64).

    Keys: ``t`` (0…T−1), ``beta``, ``log10_beta``, ``alpha_bar``, ``snr`` (0 where ᾱ = 0) and ``log10_snr`` (NaN
    where SNR = 0).
    """
    check_choice("sampler", sampler, SAMPLERS)
    scheduler = make_scheduler(sampler, models.scheduler.config)
    alpha_bar = scheduler.alphas_cumprod.double().numpy()
    snr = alpha_bar / np.maximum(1 - alpha_bar, 1e-300)
    with np.errstate(divide="ignore"):
        log10_snr = np.where(snr > 0, np.log10(np.maximum(snr, 1e-300)), np.nan)
    beta = scheduler.betas.double().numpy()
    return {"t": np.arange(len(alpha_bar)), "beta": beta, "log10_beta": np.log10(beta), "alpha_bar": alpha_bar,
            "snr": snr, "log10_snr": log10_snr}


def load_image(value, models: ModelSet) -> tuple[Image.Image, dict]:
    """Any image input -> RGB PIL image whose longer side is the model's native size and whose sides are
    multiples of the VAE's cell (8 px), plus notes for the metadata."""
    image = open_image(value, "image", max_pixels=MAX_PIXELS, max_side=MAX_SIDE)
    pixels = Image.fromarray(to_rgb(image, WHITE))
    scale = models.native_size / max(pixels.size)
    cell = models.vae_scale
    size = tuple(max(cell, round(side * scale / cell) * cell) for side in pixels.size)
    notes = {"input_size": f"{pixels.size[0]}x{pixels.size[1]}", "size": f"{size[0]}x{size[1]}"}
    return pixels.resize(size, Image.LANCZOS) if size != pixels.size else pixels, notes


def forward(models: ModelSet, request: ForwardRequest, callback: StepCallback | None = None) -> TaskResult:
    """Noises the image to t (and to every t of the row) in latent and in pixel space.

    ``images`` (PIL): the input as used, x_t decoded from latent space, x_t in pixel space, the latent x_t itself
    (channels 1–3 as RGB, one block per latent cell) and the row figure (latent row over pixel row).
    ``callback`` is unused: no reverse step runs here.
    """
    request = validate(models, request)
    started = time.perf_counter()
    picture, notes = load_image(request.image, models)
    generator = torch.Generator("cpu").manual_seed(request.seed)
    x0 = pil_to_tensor(picture)  # 1×3×H×W in [-1, 1], CPU float32
    z0 = encode_pixels(models.vae, x0).float().cpu()  # 1×C×H/8×W/8, scaled as the U-Net sees them
    eps_latent = torch.randn(z0.shape, generator=generator)
    eps_pixel = torch.randn(x0.shape, generator=generator)
    scheduler = make_scheduler(request.sampler, models.scheduler.config)
    alpha_bars = scheduler.alphas_cumprod.double()
    times = sorted({request.t, *request.row})
    latents = torch.cat([z0] + [noised(z0, eps_latent, float(alpha_bars[t])) for t in times])  # z0: VAE check
    reconstruction, *pictures = tensor_to_pil(decode_latents(models.vae, latents.to(models.device, models.dtype)))
    decoded = dict(zip(times, pictures))
    pixel = {t: tensor_to_pil(noised(x0, eps_pixel, float(alpha_bars[t])))[0] for t in times}
    z_t = latents[1 + times.index(request.t)]
    images = [picture, decoded[request.t], pixel[request.t], latent_picture(z_t, models.vae_scale),
              row_figure([(t, float(alpha_bars[t]), decoded[t], pixel[t]) for t in request.row])]
    metadata = describe(models, request, scheduler, notes, vae_psnr(picture, reconstruction),
                        time.perf_counter() - started)
    return TaskResult(images=images, metadata=metadata)


def noised(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε (any shape)."""
    return math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * eps


def latent_picture(z: torch.Tensor, cell: int) -> Image.Image:
    """A latent ``C×h×w`` as an RGB picture: channels 1–3 mapped from [−3, 3] to 0–255, each cell a ``cell``²
    block (so it lines up with the image)."""
    channels = z[:3].float()
    if channels.shape[0] < 3:
        channels = torch.cat([channels, channels[:1].expand(3 - channels.shape[0], -1, -1)])
    values = ((channels / (2 * LATENT_RANGE) + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    small = Image.fromarray(values.permute(1, 2, 0).numpy())
    return small.resize((small.width * cell, small.height * cell), Image.NEAREST)


def row_figure(columns: list) -> Image.Image:
    """One column per ``(t, ᾱ_t, latent x_t decoded, pixel x_t)``: a caption, the latent row, the pixel row."""
    width, height = columns[0][2].size
    scale = TILE / max(width, height)
    tile = (max(1, round(width * scale)), max(1, round(height * scale)))
    pad, label, caption = 6, 52, 30
    figure = Image.new("RGB", (label + len(columns) * (tile[0] + pad), caption + 2 * (tile[1] + pad)), "white")
    draw, font = ImageDraw.Draw(figure), ImageFont.load_default(size=11)
    for row, name in enumerate(("latent", "pixel")):
        draw.text((4, caption + row * (tile[1] + pad) + tile[1] // 2 - 6), name, fill="black", font=font)
    for i, (t, alpha_bar, latent, pixel) in enumerate(columns):
        left = label + i * (tile[0] + pad)
        draw.text((left, 2), f"t = {t}", fill="black", font=font)
        draw.text((left, 15), f"abar = {alpha_bar:.3g}", fill="black", font=font)
        figure.paste(latent.resize(tile, Image.LANCZOS), (left, caption))
        figure.paste(pixel.resize(tile, Image.LANCZOS), (left, caption + tile[1] + pad))
    return figure


def vae_psnr(original: Image.Image, reconstructed: Image.Image) -> float:
    """PSNR (dB) of the VAE's encode→decode round trip with no noise at all: the best any latent view can do."""
    error = np.mean((np.asarray(original, np.float64) - np.asarray(reconstructed, np.float64)) ** 2)
    return round(float(10 * np.log10(255**2 / max(error, 1e-10))), 3)


def schedule_numbers(scheduler, t: int) -> dict:
    """β_t, ᾱ_t, √ᾱ_t (signal scale), √(1−ᾱ_t) (noise std), SNR and log10 SNR (None at SNR 0) of ``scheduler``."""
    alpha_bar = float(scheduler.alphas_cumprod[t])
    snr = alpha_bar / (1 - alpha_bar)
    return {"beta": float(scheduler.betas[t]), "alpha_bar": alpha_bar, "signal_scale": math.sqrt(alpha_bar),
            "noise_std": math.sqrt(1 - alpha_bar), "snr": snr, "log10_snr": math.log10(snr) if snr > 0 else None}


def describe(models: ModelSet, request: ForwardRequest, scheduler, notes: dict, psnr: float, seconds: float) -> dict:
    """The JSON record of one run: settings, the schedule at t, the terminal ᾱ and the VAE round trip's PSNR."""
    alpha_bars = scheduler.alphas_cumprod
    numbers = {k: round(v, 8) if isinstance(v, float) else v for k, v in schedule_numbers(scheduler, request.t).items()}
    return {"task": "forward", **{k: v for k, v in asdict(request).items() if k != "image"}, **notes, **numbers,
            "row": list(request.row), "row_alpha_bar": [round(float(alpha_bars[t]), 6) for t in request.row],
            "beta_schedule": scheduler.config.beta_schedule,
            "rescale_betas_zero_snr": bool(scheduler.config.get("rescale_betas_zero_snr", False)),
            "zero_terminal_snr": float(alpha_bars[-1]) == 0.0, "terminal_alpha_bar": float(alpha_bars[-1]),
            "vae_round_trip_psnr": psnr, "num_train_timesteps": len(alpha_bars), "model": models.name,
            "seconds": round(seconds, 3), "versions": library_versions()}
