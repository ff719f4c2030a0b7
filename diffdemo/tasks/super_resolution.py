"""Super-resolution ×2/×4: the diffusion upscaler (or an img2img fallback) in feathered tiles, vs bicubic and Lanczos.

Maths map (diffusers' x4-upscaler layout; Ho et al. 2020), pixels in [-1, 1] unless said otherwise:
  low_res      the input ``B×3×h×w``; the upscaler's latents are also ``h×w`` and decode to ``4h×4w``
  noise_level  the timestep of ``low_res_scheduler`` used to noise the low-res condition (also the class label)
  x_T          initial latents = ε·init_noise_sigma; the U-Net sees cat(scaled x_t, noised low_res)
  strength     (fallback only) the fraction of the schedule re-run on the VAE-encoded Lanczos upscale
  consistency  iterative back-projection (Irani & Peleg 1991): x ← x + up(low_res − down(x)), with down the
               antialiased bicubic that made the low-res image; it makes down(result) = low_res, restoring the
               colours and low frequencies that the upscaler's small VAE gets wrong, and keeps its detail
  samples      the result is the mean of N samples (different noise): an estimate of the posterior mean
               E[x | low_res], which minimises the expected squared error; ``mirror`` runs half of them on the
               mirrored input (a self-ensemble, Timofte et al. 2016). Few steps suffice: the mean is smooth anyway
Tiling: the low-res input is cut into overlapping tiles; every tile takes its crop of ONE seed-derived noise field
(so overlapping tiles see the same noise where they overlap), is denoised and decoded alone, and the decoded tiles
are blended with linear ramps across each overlap (weights sum to 1), so memory is bounded by the tile size.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image

from diffdemo.engine.images import decode_latents, encode_pixels, initial_noise, pil_to_tensor
from diffdemo.engine.conditioning import generation_inputs
from diffdemo.engine.loading import ModelSet
from diffdemo.engine.prompts import encode_prompt
from diffdemo.engine.sampling import StepCallback, denoise_loop, guided, make_scheduler
from diffdemo.tasks.common import InvalidRequest, TaskResult, as_number, check_prompt, library_versions, resolve_seed
from diffdemo.tasks.inputs import WHITE, check_size, open_image, to_rgb

SCALES = (2, 4)
MAX_STEPS = 100
MAX_SAMPLES = 16
MIN_SIDE = 8  # low-res pixels a side
MAX_OUTPUT_SIDE = 2048
MAX_OUTPUT_PIXELS = 4_200_000  # 2048×2048 = 4.19 MP fits
TILE_OVERLAP = 8
FALLBACK_STRENGTH = 0.3
FALLBACK_GUIDANCE = 7.5  # used only when a prompt is given
METHODS = ("diffusion", "bicubic", "lanczos")
BACK_PROJECTION_ROUNDS = 5  # measured: PSNR stops rising after about 5 (34.91 dB at 5, 34.92 at 20)


@dataclass(frozen=True)
class SuperResolutionRequest:
    """``image``: PIL image, ``H×W[×C]`` uint8 array, file path or bytes, any mode; at least 8 px a side.

    ``scale`` 2 or 4; the output may be at most 2048 px a side and 4.2 MP. ``evaluate``: take ``image`` as the
    high-res original, downscale it by ``scale`` (bicubic), upscale back and score PSNR/SSIM against it.
    ``noise_level`` (upscaler) noises the low-res condition; ``strength`` (fallback) is how much to re-generate.
    ``samples`` (1–16) are averaged, half of them on the left-right mirrored input when ``mirror``; 1 gives one
    sharp sample (raise ``steps`` then). The defaults (4 samples of 5 steps) take 1.2–1.6× one 20-step sample.
    ``tile_size``/``tile_overlap`` are low-res pixels (rounded to the model's granularity); ``tile_size`` None
    means the size the model was trained at (32 px for the embedded upscaler), also the smallest allowed.
    """

    image: object
    scale: int = 4
    seed: int = -1
    steps: int = 5
    noise_level: int = 20
    samples: int = 4
    mirror: bool = True
    evaluate: bool = False
    prompt: str = ""
    strength: float = FALLBACK_STRENGTH
    tile_size: int | None = None
    tile_overlap: int = TILE_OVERLAP
    consistency: bool = True


def validate(models: ModelSet, request: SuperResolutionRequest) -> SuperResolutionRequest:
    if isinstance(request.scale, bool) or request.scale not in SCALES:
        raise InvalidRequest(f"scale must be 2 or 4; got {request.scale!r}.")
    max_noise = models.upscaler.max_noise_level if models.upscaler is not None else 350
    native = native_tile(models, request.scale)
    if request.tile_size is not None and as_number("tile_size", request.tile_size, integer=True) < native:
        raise InvalidRequest(f"tile_size must be at least {native} low-res pixels for this model at scale "
                             f"{request.scale} (smaller crops are outside what it was trained on); "
                             f"got {request.tile_size}.")
    return replace(request, scale=int(request.scale), seed=resolve_seed(request.seed),
                   steps=as_number("steps", request.steps, integer=True, low=1, high=MAX_STEPS),
                   noise_level=as_number("noise_level", request.noise_level, integer=True, low=0, high=max_noise),
                   samples=as_number("samples", request.samples, integer=True, low=1, high=MAX_SAMPLES),
                   strength=as_number("strength", request.strength, low=0.05, high=1),
                   prompt=check_prompt("prompt", request.prompt, required=False),
                   tile_size=None if request.tile_size is None else
                   as_number("tile_size", request.tile_size, integer=True, low=8, high=MAX_OUTPUT_SIDE),
                   tile_overlap=as_number("tile_overlap", request.tile_overlap, integer=True, low=0, high=256),
                   evaluate=bool(request.evaluate), consistency=bool(request.consistency),
                   mirror=bool(request.mirror))


def load_low_res(request) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """-> (low-res ``h×w×3`` uint8, the high-res original in evaluate mode or None, notes for metadata)."""
    image = open_image(request.image, "image", max_pixels=MAX_OUTPUT_PIXELS, max_side=MAX_OUTPUT_SIDE * 4)
    pixels = to_rgb(image, WHITE)
    height, width = pixels.shape[:2]
    notes = {"input_mode": image.mode, "input_size": f"{width}x{height}"}
    s = request.scale
    original = None
    if request.evaluate:
        if min(width, height) < MIN_SIDE * s:
            raise InvalidRequest(f"In evaluate mode the image must be at least {MIN_SIDE * s} pixels a side at scale "
                                 f"{s}; got {width}×{height}.")
        original = np.ascontiguousarray(pixels[: height // s * s, : width // s * s])
        pixels = resize(original, (width // s, height // s), Image.BICUBIC)
        height, width = pixels.shape[:2]
    elif min(width, height) < MIN_SIDE:
        raise InvalidRequest(f"The image is {width}×{height} pixels; it must be at least {MIN_SIDE} pixels a side.")
    check_size(width * s, height * s, f"The output at scale {s}", max_pixels=MAX_OUTPUT_PIXELS,
               max_side=MAX_OUTPUT_SIDE)
    return pixels, original, notes


def resize(pixels: np.ndarray, size: tuple[int, int], method) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize(size, method))


def tile_starts(length: int, tile: int, overlap: int, multiple: int) -> list[int]:
    """Tile starts (multiples of ``multiple``) covering ``[0, length)`` with at least ``overlap`` shared pixels."""
    if tile >= length:
        return [0]
    stride = max(multiple, (tile - overlap) // multiple * multiple)
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def ramp(length: int, start: int, total: int, feather: int) -> np.ndarray:
    """1-D blend weights of a tile of ``length`` at ``start`` in ``total``: linear ramps only on inner edges."""
    weight = np.ones(length, dtype=np.float32)
    if feather > 0:
        up = (np.arange(length, dtype=np.float32) + 0.5) / feather
        if start > 0:
            weight = np.minimum(weight, up)
        if start + length < total:
            weight = np.minimum(weight, up[::-1])
    return np.clip(weight, 1e-4, 1)


def run_tiled(low_res: torch.Tensor, scale: int, tile: int, overlap: int, multiple: int, process) -> torch.Tensor:
    """Runs ``process(y, x, crop) -> 1×3×(scale·th)×(scale·tw)`` on tiles of ``low_res`` (``1×3×h×w``, [-1, 1],
    sides multiples of ``multiple``) and blends the results into ``1×3×(scale·h)×(scale·w)``."""
    _, _, height, width = low_res.shape
    tile = max(multiple, tile // multiple * multiple)
    out = torch.zeros(1, 3, height * scale, width * scale)
    total = torch.zeros(1, 1, height * scale, width * scale)
    for y in tile_starts(height, tile, overlap, multiple):
        for x in tile_starts(width, tile, overlap, multiple):
            crop = low_res[:, :, y:y + tile, x:x + tile]
            result = process(y, x, crop).float().cpu()
            th, tw = result.shape[-2:]
            feather = overlap * scale
            weight = torch.from_numpy(np.outer(ramp(th, y * scale, height * scale, feather),
                                               ramp(tw, x * scale, width * scale, feather)))[None, None]
            out[:, :, y * scale:y * scale + th, x * scale:x * scale + tw] += result * weight
            total[:, :, y * scale:y * scale + th, x * scale:x * scale + tw] += weight
    return out / total


def pad_to(pixels: np.ndarray, multiple: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    return np.pad(pixels, ((0, -height % multiple), (0, -width % multiple), (0, 0)), mode="edge")


def upscaler_embeddings(models: ModelSet, prompt: str) -> torch.Tensor:
    """Text-free upscalers get zeros ``1×1×D``; text-conditioned ones (SD x4) the base encoder's prompt embedding."""
    unet = models.upscaler.unet
    dim = unet.config.cross_attention_dim
    uses_text = any("CrossAttn" in block for block in unet.config.down_block_types)
    if uses_text and models.text_encoder.config.hidden_size == dim:
        return encode_prompt(models, prompt).cond
    return torch.zeros(1, 1, dim, device=unet.device, dtype=unet.dtype)


def diffusion_upscale(models: ModelSet, low_res: np.ndarray, request, callback) -> np.ndarray:
    """``h×w×3`` uint8 -> uint8 at ×4 (the dedicated upscaler) or ×scale (the img2img fallback): the mean of
    ``request.samples`` samples, each denoised from its own noise.

    The mean of samples estimates the posterior mean, the upscale with the least expected squared error (highest
    PSNR), and trades invented detail for fidelity. With ``request.mirror`` the second half of the samples see the
    input mirrored left-right and are mirrored back (a self-ensemble): the model's own errors differ between the
    two views, so they partly cancel.
    """
    sample_mean = upscaler_mean if models.upscaler is not None else img2img_mean
    generator = torch.Generator("cpu").manual_seed(request.seed)
    mirrored = request.samples // 2 if request.mirror else 0
    plain = request.samples - mirrored
    with torch.inference_mode():
        total = sample_mean(models, low_res, plain, generator, request, callback) * plain
        if mirrored:
            flipped = np.ascontiguousarray(low_res[:, ::-1])
            total += sample_mean(models, flipped, mirrored, generator, request, callback).flip(-1) * mirrored
    return to_uint8(total / request.samples)


def upscaler_mean(models: ModelSet, low_res: np.ndarray, count: int, generator, request, callback) -> torch.Tensor:
    """The dedicated upscaler, ``count`` samples in one batch per tile: ``h×w×3`` uint8 -> their mean
    ``1×3×4h×4w`` in [-1, 1]."""
    up = models.upscaler
    unet, device, dtype = up.unet, up.unet.device, up.unet.dtype
    multiple = max(8, 2 ** (len(unet.config.block_out_channels) - 1))
    height, width = low_res.shape[:2]
    padded = pil_to_tensor(Image.fromarray(pad_to(low_res, multiple)))
    shape = (count, up.vae.config.latent_channels, *padded.shape[-2:])
    latent_noise = initial_noise(shape, generator, "cpu", torch.float32)
    condition_noise = initial_noise((count, *padded.shape[1:]), generator, "cpu", torch.float32)
    level = torch.full((count,), request.noise_level, dtype=torch.long)
    noised = up.low_res_scheduler.add_noise(padded.expand(count, -1, -1, -1), condition_noise, level)
    embeddings = upscaler_embeddings(models, request.prompt).expand(count, -1, -1)

    def process(y, x, crop):
        th, tw = crop.shape[-2:]
        scheduler = make_scheduler("DDIM", up.scheduler.config)
        scheduler.set_timesteps(request.steps, device=device)
        latents = latent_noise[:, :, y:y + th, x:x + tw].to(device, dtype) * scheduler.init_noise_sigma
        condition = noised[:, :, y:y + th, x:x + tw].to(device, dtype)
        predict = guided(unet, embeddings, None, 1.0, extra_channels=condition, class_labels=level.to(device))
        latents = denoise_loop(scheduler, predict, latents, callback=callback)
        return decode_latents(up.vae, latents).mean(0, keepdim=True)

    tile = request.tile_size or native_tile(models, 4)
    return run_tiled(padded, 4, tile, request.tile_overlap, multiple, process)[:, :, : height * 4, : width * 4]


def img2img_mean(models: ModelSet, low_res: np.ndarray, count: int, generator, request, callback) -> torch.Tensor:
    """The fallback with the base model, ``count`` samples: Lanczos ×scale, encode, noise to ``strength``, denoise,
    decode (tiled) -> their mean ``1×3×(s·h)×(s·w)`` in [-1, 1]."""
    s, vae_scale = request.scale, models.vae_scale
    levels = len(models.unet.config.block_out_channels) - 1
    multiple = max(8, vae_scale * 2 ** levels // s)
    height, width = low_res.shape[:2]
    padded = pad_to(low_res, multiple)
    big = resize(padded, (padded.shape[1] * s, padded.shape[0] * s), Image.LANCZOS)
    shape = (count, models.latent_channels, big.shape[0] // vae_scale, big.shape[1] // vae_scale)
    noise = initial_noise(shape, generator, "cpu", torch.float32)
    prompt = encode_prompt(models, request.prompt, batch=count)
    guidance = FALLBACK_GUIDANCE if request.prompt else 1.0

    def process(y, x, crop):
        th, tw = crop.shape[-2:]
        pixels = pil_to_tensor(Image.fromarray(big[y * s:(y + th) * s, x * s:(x + tw) * s]))
        scheduler = make_scheduler("DDIM", models.scheduler.config)
        scheduler.set_timesteps(request.steps, device=models.device)
        start = request.steps - max(1, round(request.steps * request.strength))
        ly, lx, lh, lw = (v * s // vae_scale for v in (y, x, th, tw))
        latents = scheduler.add_noise(encode_pixels(models.vae, pixels).expand(count, -1, -1, -1),
                                      noise[:, :, ly:ly + lh, lx:lx + lw].to(models.device, models.dtype),
                                      scheduler.timesteps[start:start + 1])
        predict = guided(models.unet, prompt.cond, prompt.uncond, guidance,
                         **generation_inputs(models, prompt, count, th * s, tw * s))
        latents = denoise_loop(scheduler, predict, latents, callback=callback, start_index=start)
        return decode_latents(models.vae, latents).mean(0, keepdim=True)

    low = pil_to_tensor(Image.fromarray(padded))
    tile = request.tile_size or native_tile(models, s)
    return run_tiled(low, s, tile, request.tile_overlap, multiple, process)[:, :, : height * s, : width * s]


def back_project(image: np.ndarray, low_res: np.ndarray, rounds: int = BACK_PROJECTION_ROUNDS) -> np.ndarray:
    """``image`` (``s·h×s·w×3`` uint8) corrected so that its antialiased bicubic downscale matches ``low_res``
    (``h×w×3`` uint8). Works on the whole image at once (float copies of the output, ~50 MB each at 2048²)."""
    target = torch.tensor(low_res, dtype=torch.float32).permute(2, 0, 1)[None]  # copies: inputs may be read-only
    x = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[None]
    x = back_project_tensor(x, target, rounds)
    return x[0].clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def back_project_tensor(x: torch.Tensor, low_res: torch.Tensor, rounds: int = BACK_PROJECTION_ROUNDS) -> torch.Tensor:
    """Iterative back-projection of ``B×C×H×W`` ``x`` onto ``B×C×h×w`` ``low_res`` (any value range): each round
    adds the bicubic upscale of ``low_res − down(x)``. Differentiable (the upscaler's decoder trains through it)."""
    for _ in range(rounds):
        down = torch.nn.functional.interpolate(x, size=low_res.shape[-2:], mode="bicubic", antialias=True)
        x = x + torch.nn.functional.interpolate(low_res - down, size=x.shape[-2:], mode="bicubic", align_corners=False)
    return x


def native_tile(models: ModelSet, scale: int) -> int:
    """The low-res tile side the model was trained at: the upscaler's latent size, or native size / scale."""
    if models.upscaler is not None:
        size = models.upscaler.unet.config.sample_size
        return size[0] if isinstance(size, (list, tuple)) else size
    return models.native_size // scale


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """``1×3×H×W`` in [-1, 1] -> ``H×W×3`` uint8."""
    array = ((pixels[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return array.permute(1, 2, 0).numpy()


def score(original: np.ndarray, image: np.ndarray) -> dict:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    return {"psnr": round(float(peak_signal_noise_ratio(original, image, data_range=255)), 3),
            "ssim": round(float(structural_similarity(original, image, data_range=255, channel_axis=-1)), 4)}


def super_resolve(models: ModelSet, request: SuperResolutionRequest,
                  callback: StepCallback | None = None) -> TaskResult:
    """Images: diffusion result, bicubic, Lanczos (``scale·h × scale·w`` RGB).

    ``metadata["metrics"]`` maps each method to PSNR (dB)/SSIM against the original in evaluate mode, else None.
    """
    request = validate(models, request)
    started = time.perf_counter()
    low_res, original, notes = load_low_res(request)
    height, width = low_res.shape[:2]
    size = (width * request.scale, height * request.scale)
    diffusion = diffusion_upscale(models, low_res, request, callback)
    if models.upscaler is not None:
        method = "upscaler" if request.scale == 4 else "upscaler x4 + Lanczos /2"
        if request.scale != 4:
            diffusion = resize(diffusion, size, Image.LANCZOS)
    else:
        method = f"img2img fallback (strength {request.strength:g})"
    if request.samples > 1:
        method += f", mean of {request.samples} samples" + (" (half mirrored)" if request.mirror else "")
    if request.consistency:
        method += " + back-projection"
        diffusion = back_project(diffusion, low_res)
    outputs = {"diffusion": diffusion, "bicubic": resize(low_res, size, Image.BICUBIC),
               "lanczos": resize(low_res, size, Image.LANCZOS)}
    metrics = {name: score(original, image) for name, image in outputs.items()} if original is not None else None
    metadata = {"task": "super_resolution", **{k: v for k, v in asdict(request).items() if k != "image"},
                "method": method, "low_res_size": f"{width}x{height}", "size": f"{size[0]}x{size[1]}", **notes,
                "metrics": metrics, "model": models.name, "device": str(models.device),
                "seconds": round(time.perf_counter() - started, 3), "versions": library_versions()}
    return TaskResult(images=[Image.fromarray(outputs[m]) for m in METHODS], metadata=metadata)
