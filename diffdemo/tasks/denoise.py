"""Pixel-space denoising with the embedded DDPM, measured against classical baselines (TV and non-local means).

Maths map (Ho et al. 2020; Song et al. 2021), images in the model's [-1, 1] units unless said otherwise:
  sigma      σ, the noise std in 0–255 pixel units; s = 2σ/255 is the same std in [-1, 1] units
  alpha_bar  ᾱ_t; x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε, so x_t/√ᾱ_t = x_0 + s_t·ε with s_t² = (1−ᾱ_t)/ᾱ_t
  t          the timestep whose s_t² is nearest s²; the reverse process starts from x_t = √ᾱ_t·y (y = noisy image)
  x0_hat     Tweedie's one-step estimate at t, x̂_0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t, clipped to [-1, 1]
Mode 1 (``sigma`` > 0): noise y = x + σ·ε is drawn here (seeded, on the CPU) and every method — diffusion, TV,
non-local means — gets the same unclipped float y; the noisy image shown is y rounded and clipped to 0–255.
Mode 2 (``sigma`` = 0): the image is already noisy; σ is estimated with the wavelet median-absolute-deviation
estimator (Donoho 1995) and there is no clean image to score against.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image

from diffdemo.engine.loading import ModelSet
from diffdemo.engine.sampling import StepCallback, combine_callbacks, denoise_loop
from diffdemo.tasks.common import InvalidRequest, TaskResult, as_number, library_versions, resolve_seed
from diffdemo.tasks.inputs import WHITE, open_image, to_rgb

DENOISE_SAMPLERS = ("DDIM", "DDPM")  # deterministic from t / ancestral (stochastic) from t
MAX_SIGMA = 150.0
MAX_STEPS = 100
MAX_PIXELS = 1024 * 1024
MAX_SIDE = 1024
MIN_SIDE = 16
SWEEP_SIGMAS = (10, 25, 50, 75, 100)
ESTIMATOR = "estimated with the wavelet median-absolute-deviation estimator (skimage estimate_sigma, Donoho 1995)"
OUTPUTS = ("noisy", "x0_hat", "denoised", "classical")


@dataclass(frozen=True)
class DenoiseRequest:
    """``image``: PIL image, ``H×W[×C]`` uint8 array, file path or bytes, any mode and size.

    ``sigma`` in [0, 150] pixel units (0–255 scale): the noise to add; 0 means "already noisy, estimate it".
    ``steps``: reverse steps from t down to 0 (fewer when t is small); ``seed`` -1 means random.
    """

    image: object
    sigma: float = 50.0
    seed: int = -1
    sampler: str = "DDIM"
    steps: int = 20


@dataclass(frozen=True)
class NoiseSweepRequest:
    """PSNR vs noise level for one image taken as clean: each σ in ``sigmas`` is added, then removed."""

    image: object
    sigmas: tuple = SWEEP_SIGMAS
    seed: int = 0
    sampler: str = "DDIM"
    steps: int = 20


def validate(models: ModelSet, request):
    """Checks everything but the image; returns the request with numbers normalised and the seed drawn."""
    if getattr(models, "denoiser", None) is None:
        raise InvalidRequest("This model set has no pixel-space denoiser; denoising needs the embedded model "
                             "(start the app without --model).")
    if request.sampler not in DENOISE_SAMPLERS:
        raise InvalidRequest(f"Unknown sampler '{request.sampler}'; choose one of: {', '.join(DENOISE_SAMPLERS)}.")
    common = dict(steps=as_number("steps", request.steps, integer=True, low=1, high=MAX_STEPS),
                  seed=resolve_seed(request.seed))
    if isinstance(request, NoiseSweepRequest):
        sigmas = tuple(as_number("sigmas", s, low=1, high=MAX_SIGMA) for s in request.sigmas)
        return replace(request, sigmas=sigmas, **common)
    return replace(request, sigma=as_number("sigma", request.sigma, low=0, high=MAX_SIGMA), **common)


def load_image(value) -> tuple[np.ndarray, dict]:
    """Any image input -> ``H×W×3`` uint8 (RGB, sides cropped down to multiples of 8) and notes for metadata."""
    image = open_image(value, "image", max_pixels=MAX_PIXELS, max_side=MAX_SIDE)
    pixels = to_rgb(image, WHITE)
    height, width = pixels.shape[:2]
    if min(width, height) < MIN_SIDE:
        raise InvalidRequest(f"The image is {width}×{height} pixels; it must be at least {MIN_SIDE} pixels a side.")
    snapped = pixels[: height // 8 * 8, : width // 8 * 8]
    notes = {"input_mode": image.mode, "size": f"{snapped.shape[1]}x{snapped.shape[0]}"}
    if snapped.shape != pixels.shape:
        notes["cropped"] = f"{width}x{height} -> {notes['size']} (the U-Net needs multiples of 8)"
    return np.ascontiguousarray(snapped), notes


def timestep_for_sigma(alphas_cumprod: torch.Tensor, sigma: float) -> int:
    """The timestep t whose noise-to-signal ratio (1−ᾱ_t)/ᾱ_t is nearest s² with s = 2σ/255 (σ in 0–255)."""
    alpha_bar = alphas_cumprod.double()
    s = 2.0 * sigma / 255.0
    return int(torch.argmin(((1 - alpha_bar) / alpha_bar - s * s).abs()))


def estimate_noise_sigma(pixels: np.ndarray) -> float:
    """σ (0–255 units) of the noise in ``H×W×3`` uint8 pixels, from the finest wavelet details' MAD."""
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(pixels / 255.0, channel_axis=-1, average_sigmas=True)) * 255.0


def add_noise(pixels: np.ndarray, sigma: float, generator: torch.Generator) -> np.ndarray:
    """``pixels`` + σ·ε as float32 ``H×W×3`` in pixel units (not clipped); ε drawn from the CPU ``generator``."""
    noise = torch.randn(pixels.shape, generator=generator, dtype=torch.float32).numpy()
    return pixels.astype(np.float32) + sigma * noise


def to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def reverse_scheduler(sampler: str, base_config, t: int, steps: int, device):
    """A scheduler whose ``timesteps`` run from ``t`` down towards 0 in at most ``steps`` even strides.

    DDIM steps to ``t − 1000 // num_inference_steps``, so the stride k is chosen among the values that formula can
    give and ``num_inference_steps`` set to match; its last step (below 0) lands on ᾱ = 1, i.e. on x̂_0.
    DDPM takes the same list as custom timesteps (its posterior uses the actual previous timestep).
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    train_steps = base_config.num_train_timesteps
    stride = -(-max(t, 1) // steps)  # ceil(t / steps)
    n = train_steps // stride
    stride = train_steps // n
    timesteps = list(range(t, -1, -stride))
    if sampler == "DDPM":
        scheduler = DDPMScheduler.from_config(base_config)
        scheduler.set_timesteps(timesteps=timesteps, device=device)
        return scheduler
    scheduler = DDIMScheduler.from_config(base_config)
    scheduler.num_inference_steps = n
    scheduler.timesteps = torch.tensor(timesteps, dtype=torch.long, device=device)
    return scheduler


def diffusion_denoise(denoiser, noisy: np.ndarray, sigma: float, sampler: str, steps: int, generator,
                      callback: StepCallback | None = None) -> dict:
    """Runs the reverse process from the timestep matching σ on ``noisy`` (float ``H×W×3``, pixel units).

    Returns ``x0_hat`` and ``denoised`` (uint8 ``H×W×3``), ``t``, ``alpha_bar`` and the step count.
    """
    unet = denoiser.unet
    t = timestep_for_sigma(denoiser.scheduler.alphas_cumprod, sigma)
    scheduler = reverse_scheduler(sampler, denoiser.scheduler.config, t, steps, unet.device)
    alpha_bar = float(scheduler.alphas_cumprod[t])
    y = torch.from_numpy(np.ascontiguousarray(noisy, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    x_t = (alpha_bar ** 0.5) * y.to(unet.device)  # x_t/√ᾱ_t = x_0 + s·ε  <=>  x_t = √ᾱ_t·y
    first = {}

    def keep_first_x0(step) -> None:  # the loop's first x̂_0 is Tweedie's estimate at t (clipped by the scheduler)
        first.setdefault("x0", step.x0_pred)

    def predict(x, timestep):
        return unet(x.to(unet.dtype), timestep).sample.float()

    with torch.inference_mode():
        out = denoise_loop(scheduler, predict, x_t, generator=generator,
                           callback=combine_callbacks(keep_first_x0, callback))
    return {"x0_hat": _to_pixels(first["x0"]), "denoised": _to_pixels(out), "t": t, "alpha_bar": alpha_bar,
            "steps": len(scheduler.timesteps)}


def _to_pixels(x: torch.Tensor) -> np.ndarray:
    """``1×3×H×W`` in [-1, 1] -> ``H×W×3`` uint8."""
    return ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def classical_baselines(noisy: np.ndarray, sigma: float) -> dict:
    """TV (Chambolle) and fast non-local means on ``noisy`` (float ``H×W×3``, pixel units); σ-adaptive settings
    (TV weight 2σ/255, NL-means h = 0.7σ, 7×7 patches, 19×19 search) tuned on world images. Returns uint8."""
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle

    y, s = noisy / 255.0, max(sigma, 0.5) / 255.0
    tv = denoise_tv_chambolle(y, weight=2 * s, channel_axis=-1)
    nl = denoise_nl_means(y, h=0.7 * s, sigma=s, fast_mode=True, patch_size=7, patch_distance=9, channel_axis=-1)
    return {"tv": to_uint8(tv * 255), "nl_means": to_uint8(nl * 255)}


def score(clean: np.ndarray | None, image: np.ndarray) -> dict:
    """PSNR (dB) and SSIM of ``image`` against ``clean`` (both ``H×W×3`` in 0–255); None when no clean image."""
    if clean is None:
        return {"psnr": None, "ssim": None}
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    clean = clean.astype(np.float64)
    return {"psnr": round(float(peak_signal_noise_ratio(clean, image, data_range=255)), 3),
            "ssim": round(float(structural_similarity(clean, image, data_range=255, channel_axis=-1)), 4)}


def denoise(models: ModelSet, request: DenoiseRequest, callback: StepCallback | None = None) -> TaskResult:
    """Images: noisy, x̂_0 at t, reverse-process result, classical baseline (``H×W`` RGB, input size snapped to 8).

    ``baselines`` holds both classical results (``tv``, ``nl_means``); metadata has σ, t, ᾱ_t and PSNR/SSIM per output.
    """
    request = validate(models, request)
    started = time.perf_counter()
    pixels, notes = load_image(request.image)
    generator = torch.Generator("cpu").manual_seed(request.seed)
    estimated = request.sigma == 0
    sigma = estimate_noise_sigma(pixels) if estimated else request.sigma
    clean = None if estimated else pixels
    noisy = pixels.astype(np.float32) if estimated else add_noise(pixels, sigma, generator)
    diffusion = diffusion_denoise(models.denoiser, noisy, sigma, request.sampler, request.steps, generator, callback)
    baselines = classical_baselines(noisy, sigma)
    outputs = {"noisy": to_uint8(noisy), "x0_hat": diffusion["x0_hat"], "denoised": diffusion["denoised"]}
    scores = {name: score(clean, image) for name, image in {**outputs, **baselines}.items()}
    # with a clean image the better baseline is shown; without one NL-means (usually the stronger)
    best = max(baselines, key=lambda k: scores[k]["psnr"]) if clean is not None else "nl_means"
    outputs["classical"], scores["classical"] = baselines[best], {**scores[best], "method": best}
    metadata = describe(models, request, sigma, estimated, diffusion, scores, notes, time.perf_counter() - started)
    images = [Image.fromarray(outputs[name]) for name in OUTPUTS]
    return TaskResult(images=images, metadata=metadata,
                      baselines={name: Image.fromarray(image) for name, image in baselines.items()})


def describe(models: ModelSet, request, sigma, estimated, diffusion, scores, notes, seconds) -> dict:
    """The JSON record of one run: settings, σ → t mapping, and PSNR/SSIM per output (None without a clean image)."""
    record = {"task": "denoise", **{k: v for k, v in asdict(request).items() if k != "image"},
              "sigma": round(sigma, 3), "estimated": estimated, "t": diffusion["t"],
              "alpha_bar": round(diffusion["alpha_bar"], 6), "reverse_steps": diffusion["steps"],
              "psnr": {k: v["psnr"] for k, v in scores.items()}, "ssim": {k: v["ssim"] for k, v in scores.items()},
              "classical_method": scores["classical"]["method"], **notes, "model": models.name,
              "device": str(models.device), "seconds": round(seconds, 3), "versions": library_versions()}
    if estimated:
        record["sigma_method"] = ESTIMATOR
    else:
        record["noise"] = ("Gaussian, seeded; every method gets the unclipped y = x + σ·ε, the noisy image shown "
                           "(and scored) is y clipped to 0–255")
    return record


def noise_sweep(models: ModelSet, request: NoiseSweepRequest, callback: StepCallback | None = None) -> TaskResult:
    """PSNR (dB) of the noisy input, the diffusion result and the better classical baseline at each σ.

    ``metadata["rows"]``: dicts ``{sigma, method, psnr}``; ``images`` is empty (the UI plots the rows).
    """
    request = validate(models, request)
    started = time.perf_counter()
    pixels, notes = load_image(request.image)
    rows = []
    for sigma in request.sigmas:
        generator = torch.Generator("cpu").manual_seed(request.seed)
        noisy = add_noise(pixels, sigma, generator)
        result = diffusion_denoise(models.denoiser, noisy, sigma, request.sampler, request.steps, generator,
                                   callback)
        classical = max(score(pixels, b)["psnr"] for b in classical_baselines(noisy, sigma).values())
        for method, value in (("noisy", score(pixels, to_uint8(noisy))["psnr"]),
                              ("diffusion", score(pixels, result["denoised"])["psnr"]), ("classical", classical)):
            rows.append({"sigma": float(sigma), "method": method, "psnr": value})
    metadata = {"task": "noise_sweep", **{k: v for k, v in asdict(request).items() if k != "image"}, **notes,
                "rows": rows, "model": models.name, "seconds": round(time.perf_counter() - started, 3)}
    return TaskResult(images=[], metadata=metadata)
