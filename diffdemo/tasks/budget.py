"""What a request costs before it runs: seconds of model time on this machine, checked against a per-request limit.

cost = Σ calls × seconds per call: every task counts its U-Net calls (steps × images × samples, each on an area of
pixels measured in native-size pictures) and its VAE decodes, and :class:`~diffdemo.engine.speed.Speeds` says what
such a call takes here (a fixed part and a part per native area). Attention makes a call grow with the square of
its pixel count once it is large, so areas past KNEE× the native one count quadratically (the embedded model on a
CPU: one 2048² step with its decode took 132–175 s). An estimate is a guide, not a promise: the job's own time
limit (:class:`TimeLimitExceeded`, raised from the step callback) is the hard bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from diffdemo.engine.loading import ModelSet
from diffdemo.engine.sampling import Cancelled
from diffdemo.engine.speed import Speeds
from diffdemo.tasks import super_resolution as sr
from diffdemo.tasks.branch import BranchRequest
from diffdemo.tasks.branch import validate as validate_branch
from diffdemo.tasks.common import InvalidRequest
from diffdemo.tasks.compare import CompareRequest, variant_requests
from diffdemo.tasks.denoise import MAX_PIXELS as DENOISE_PIXELS
from diffdemo.tasks.denoise import MAX_SIDE as DENOISE_SIDE
from diffdemo.tasks.denoise import DenoiseRequest, NoiseSweepRequest
from diffdemo.tasks.denoise import validate as validate_denoise
from diffdemo.tasks.forward import MAX_PIXELS as FORWARD_PIXELS
from diffdemo.tasks.forward import MAX_SIDE as FORWARD_SIDE
from diffdemo.tasks.forward import ForwardRequest
from diffdemo.tasks.forward import validate as validate_forward
from diffdemo.tasks.inpaint import MAX_PIXELS as INPAINT_PIXELS
from diffdemo.tasks.inpaint import MAX_SIDE as INPAINT_SIDE
from diffdemo.tasks.inpaint import InpaintRequest
from diffdemo.tasks.inpaint import validate as validate_inpaint
from diffdemo.tasks.inputs import check_size, open_image
from diffdemo.tasks.playground.run import PlaygroundRequest
from diffdemo.tasks.playground.run import validate as validate_playground
from diffdemo.tasks.text_to_image import TextToImageRequest
from diffdemo.tasks.text_to_image import validate as validate_text_to_image
from diffdemo.tasks.trajectory import TrajectoryRequest
from diffdemo.tasks.trajectory import validate as validate_trajectory

KNEE = 16  # areas up to this many times the native one cost in proportion; beyond, in proportion to its square
DECODES = {"vae": 1.0, "tiny": 0.1, "fast": 0.0}  # a trajectory frame's decode, in VAE decodes
CLASSICAL_SECONDS_PER_MP = 5.0  # TV + non-local means on one CPU core (measured: 1.16 s at 512²)
TRAIN_SECONDS_PER_ITERATION = 0.004  # the playground's point denoiser on one CPU core (measured: 3.3 ms)
SAMPLE_SECONDS_PER_POINT_STEP = 5e-7


class TimeLimitExceeded(Cancelled):
    """Raised by a step callback when the job has run past its time limit (``seconds``): the loop stops at the end
    of the step; the message says so in one sentence."""

    def __init__(self, seconds: float):
        super().__init__(f"Stopped after {duration(seconds)}, the most one job may run on this server. Use fewer "
                         f"steps or a smaller size, or ask the operator to raise the limit (--job-seconds, env "
                         f"DIFFDEMO_JOB_SECONDS).")


@dataclass(frozen=True)
class Estimate:
    """``seconds`` of model time on this machine; ``what`` says what was counted, e.g. "512×512, 25 steps, 4 images"."""

    seconds: float
    what: str


def area(pixels: float, native_pixels: float) -> float:
    """One call on ``pixels`` in units of a call at ``native_pixels``: linear up to KNEE× the area, then quadratic."""
    ratio = pixels / native_pixels
    return ratio * max(1.0, ratio / KNEE)


def guidance_factor(guidance_scale: float) -> float:
    """Classifier-free guidance doubles the U-Net batch (the speed was measured on that batch of 2)."""
    return 1.0 if guidance_scale > 1 else 0.5


def duration(seconds: float) -> str:
    """``seconds`` for a message: "0.4 s", "40 s", "12 min", "20 h"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.0f} h"


def check_cost(estimate: Estimate, max_seconds: float) -> None:
    """Raises InvalidRequest, one sentence naming the limit and how to raise it, when the estimate is over it."""
    if estimate.seconds > max_seconds:
        raise InvalidRequest(
            f"This request would take about {duration(estimate.seconds)} on this server ({estimate.what}); the limit "
            f"is {duration(max_seconds)} a request. Use fewer steps, a smaller size or fewer images, or ask the "
            f"operator to raise the limit (--max-cost, env DIFFDEMO_MAX_COST).")


def estimate(models: ModelSet, speeds: Speeds, request, *, run=None) -> Estimate:
    """The cost of one task request (the dataclass the task takes; for a branch also the ``run`` it continues).
    Validates the request first, so bad input gets the task's own message; reads only image headers."""
    for kind, estimator in ESTIMATORS.items():
        if isinstance(request, kind):
            return estimator(models, speeds, request, run) if kind is BranchRequest else \
                estimator(models, speeds, request)
    raise TypeError(f"no estimate for {type(request).__name__}")


def _native(models: ModelSet) -> int:
    return models.native_size ** 2


def image_size(value, name: str, *, max_pixels: int, max_side: int) -> tuple[int, int]:
    """(width, height) of an image input from its header; the task's own size and format messages."""
    image = open_image(value, name, max_pixels=max_pixels, max_side=max_side, decode=False)
    size = image.size
    image.close()
    return size


def _text_to_image(models: ModelSet, speeds: Speeds, request) -> Estimate:
    r = validate_text_to_image(models, request)
    units, batch = area(r.width * r.height, _native(models)), r.num_images * guidance_factor(r.guidance_scale)
    seconds = r.steps * speeds.unet.seconds(units, batch) + r.num_images * speeds.vae.seconds(units)
    return Estimate(seconds, f"{r.width}×{r.height}, {r.steps} steps, {r.num_images} image(s)")


def _trajectory(models: ModelSet, speeds: Speeds, request) -> Estimate:
    r = validate_trajectory(models, request)
    frames = math.ceil(r.steps / r.every)
    # the run, its final decode, then the downloads decode every kept x̂₀ and x_t frame
    seconds = r.steps * speeds.unet.seconds(batch=guidance_factor(r.guidance_scale)) + speeds.vae.seconds() + \
        2 * frames * DECODES[r.decode] * speeds.vae.seconds()
    return Estimate(seconds, f"{r.steps} steps, {frames} frames decoded twice ('{r.decode}')")


def _compare(models: ModelSet, speeds: Speeds, request) -> Estimate:
    variants, _ = variant_requests(models, request)
    seconds = sum(v.steps * speeds.unet.seconds(batch=guidance_factor(v.guidance_scale)) + speeds.vae.seconds()
                  for v in variants)
    return Estimate(seconds, f"{len(variants)} runs, {sum(v.steps for v in variants)} steps in all")


def _branch(models: ModelSet, speeds: Speeds, request, run) -> Estimate:
    step, _, _, guidance = validate_branch(models, request, run)
    remaining = run.metadata["steps"] - step
    pixels = run.x_t.shape[-1] * run.x_t.shape[-2] * models.vae_scale ** 2
    units = area(pixels, _native(models))
    seconds = remaining * speeds.unet.seconds(units, guidance_factor(guidance)) + speeds.vae.seconds(units)
    return Estimate(seconds, f"{remaining} steps from step {step + 1}")


def _inpaint(models: ModelSet, speeds: Speeds, request) -> Estimate:
    r = validate_inpaint(models, request)
    limits = dict(max_pixels=INPAINT_PIXELS, max_side=INPAINT_SIDE)
    width, height = image_size(r.image, "image", **limits)
    if r.mask is not None:
        image_size(r.mask, "mask", **limits)
    width += r.outpaint_left + r.outpaint_right
    height += r.outpaint_top + r.outpaint_bottom
    check_size(width, height, "The outpainted canvas", **limits)  # the task's own check, before the price
    units = area(_native(models) if r.only_masked else width * height, _native(models))
    steps = max(1, math.ceil(r.steps * r.strength))
    seconds = steps * speeds.unet.seconds(units, guidance_factor(r.guidance_scale)) + 2 * speeds.vae.seconds(units)
    return Estimate(seconds, f"{width}×{height}, {steps} steps")


def _denoise(models: ModelSet, speeds: Speeds, request) -> Estimate:
    r = validate_denoise(models, request)
    width, height = image_size(r.image, "image", max_pixels=DENOISE_PIXELS, max_side=DENOISE_SIDE)
    pixels = (width // 8 * 8) * (height // 8 * 8)
    native = models.denoiser.unet.config.sample_size
    native = (native[0] if isinstance(native, (list, tuple)) else native) ** 2
    once = r.steps * speeds.denoiser.seconds(area(pixels, native)) + CLASSICAL_SECONDS_PER_MP * pixels / 1e6
    runs = len(r.sigmas) if isinstance(r, NoiseSweepRequest) else 1
    return Estimate(runs * once, f"{width}×{height}, {r.steps} steps" + (f", {runs} noise levels" if runs > 1 else ""))


def _super_resolve(models: ModelSet, speeds: Speeds, request) -> Estimate:
    r = sr.validate(models, request)
    width, height = image_size(r.image, "image", max_pixels=sr.MAX_OUTPUT_PIXELS,
                               max_side=sr.MAX_OUTPUT_SIDE * 4)
    if r.evaluate:
        width, height = width // r.scale, height // r.scale
    check_size(width * r.scale, height * r.scale, f"The output at scale {r.scale}", max_pixels=sr.MAX_OUTPUT_PIXELS,
               max_side=sr.MAX_OUTPUT_SIDE)  # the task's own check, before the price
    what = f"{width}×{height} ×{r.scale}, {r.steps} steps, {r.samples} sample(s)"
    if models.upscaler is not None:
        levels = len(models.upscaler.unet.config.block_out_channels) - 1
        tiles, tile_area = _tiles(width, height, r.tile_size or sr.native_tile(models, 4),
                                  r.tile_overlap, max(8, 2 ** levels))
        units = area(tile_area, sr.native_tile(models, 4) ** 2)
        per_tile = r.steps * speeds.upscaler.seconds(units, r.samples) + r.samples * speeds.upscaler_vae.seconds(units)
        return Estimate(tiles * per_tile, what)
    s, levels = r.scale, len(models.unet.config.block_out_channels) - 1
    tiles, tile_area = _tiles(width, height, r.tile_size or sr.native_tile(models, s), r.tile_overlap,
                              max(8, models.vae_scale * 2 ** levels // s))
    steps, units = max(1, round(r.steps * r.strength)), area(tile_area * s * s, _native(models))
    per_tile = steps * speeds.unet.seconds(units, r.samples * guidance_factor(7.5 if r.prompt else 1)) + \
        (r.samples + 1) * speeds.vae.seconds(units)  # the samples' decodes and one encode
    return Estimate(tiles * per_tile, what)


def _tiles(width: int, height: int, tile: int, overlap: int, multiple: int) -> tuple[int, int]:
    """How many tiles super-resolution cuts a ``width``×``height`` input into, and one tile's area (low-res px)."""
    tile = max(multiple, tile // multiple * multiple)
    padded = [-(-side // multiple) * multiple for side in (width, height)]
    counts = [len(sr.tile_starts(side, tile, overlap, multiple)) for side in padded]
    return counts[0] * counts[1], min(tile, padded[0]) * min(tile, padded[1])


def _forward(models: ModelSet, speeds: Speeds, request) -> Estimate:
    r = validate_forward(models, request)
    if r.image is not None:
        image_size(r.image, "image", max_pixels=FORWARD_PIXELS, max_side=FORWARD_SIDE)
    # an encode and the decodes, at the native size (the task resizes its input)
    return Estimate((2 + len(r.row)) * speeds.vae.seconds(), f"{len(r.row)} timesteps")


def _playground(models: ModelSet, speeds: Speeds, request) -> Estimate:
    r = validate_playground(request)
    seconds = r.iterations * TRAIN_SECONDS_PER_ITERATION + r.steps * r.points * SAMPLE_SECONDS_PER_POINT_STEP
    return Estimate(seconds, f"{r.iterations} training iterations, {r.steps} steps × {r.points} points")


ESTIMATORS = {TextToImageRequest: _text_to_image, TrajectoryRequest: _trajectory, CompareRequest: _compare,
              BranchRequest: _branch, InpaintRequest: _inpaint, DenoiseRequest: _denoise, NoiseSweepRequest: _denoise,
              sr.SuperResolutionRequest: _super_resolve, ForwardRequest: _forward, PlaygroundRequest: _playground}
