"""Inpainting and outpainting: repaint the masked part of an image; every unmasked pixel comes back bit-identical.

How (``_generate``): the image is encoded by the VAE into z_0. A 4-channel U-Net repaints by latent blending:
after every step of the one denoise loop the unmasked latent cells are replaced by z_0 noised to the next
timestep, ``add_noise(z_0, ε, t_next)`` (z_0 itself after the last step), so the known part stays on the forward
trajectory of the original. A 9-channel inpainting U-Net instead reads the mask and the encoded masked image as
extra input channels. Either way the decoded result is composited onto the original in pixel space (uint8) with
the feathered mask, which is zero wherever the binary mask is zero: unmasked output pixels == input pixels.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffdemo.engine.images import decode_latents, encode_pixels, initial_noise, pil_to_tensor, tensor_to_pil
from diffdemo.engine.loading import ModelSet
from diffdemo.engine.lora import lora_infotext
from diffdemo.engine.prompts import encode_prompt
from diffdemo.engine.sampling import DEFAULT_SAMPLER, SAMPLERS, StepCallback, denoise_loop, guided, make_scheduler
from diffdemo.tasks.common import (InvalidRequest, TaskResult, a1111_parameters, as_multiple, as_number,
                                   check_choice, check_prompt, library_versions, resolve_seed)
from diffdemo.tasks.inputs import BLACK, WHITE, check_size, open_image, to_rgb
from diffdemo.tasks.settings import DEFAULT_GUIDANCE, DEFAULT_STEPS, MAX_GUIDANCE, MAX_STEPS
from diffdemo.tasks.text_to_image import MAX_SIDE, MIN_SIDE

MAX_PIXELS = 4_000_000
MAX_MASK_BLUR = 64
MAX_PADDING = 1024
MAX_OUTPAINT = 1024
OUTPAINT_FILLS = ("edge", "mean")
OUTPAINT_SIDES = ("left", "right", "top", "bottom")
MASKED_CONTENTS = ("original", "fill")
FILL_SIDE = 256  # the smooth fill is solved at most this large and resized: its detail is noised away anyway


@dataclass(frozen=True)
class InpaintRequest:
    """``image``/``mask``: PIL image, ``H×W[×C]`` uint8 array, file path or bytes, any mode and size.

    The mask is white (≥128 after conversion to L) where to repaint; it is resized to the image (nearest).
    ``strength`` in [0, 1]: 1 repaints from pure noise, lower keeps more of the original under the mask.
    ``outpaint_*`` extend the canvas by that many pixels (multiples of the VAE scale); the new area is repainted,
    initialised by replicating the edge pixels (``outpaint_fill="edge"``) or with the image's mean colour.
    ``masked_content`` is what the denoising starts from under the mask when ``strength`` < 1: ``"original"`` the
    pixels that are there, ``"fill"`` a smooth continuation of the surrounding picture (biharmonic, as in
    AUTOMATIC1111's "fill"), to remove an object rather than redraw it.
    """

    image: object
    mask: object = None
    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    strength: float = 1.0
    seed: int = -1
    mask_blur: int = 4
    invert_mask: bool = False
    only_masked: bool = False
    padding: int = 32
    outpaint_left: int = 0
    outpaint_right: int = 0
    outpaint_top: int = 0
    outpaint_bottom: int = 0
    outpaint_fill: str = "edge"
    masked_content: str = "original"


@dataclass(frozen=True)
class Canvas:
    """The prepared input: ``image`` ``H×W×3`` uint8, ``mask`` ``H×W`` bool (True = repaint), notes for metadata."""
    image: np.ndarray
    mask: np.ndarray
    notes: dict


def validate(models: ModelSet, request: InpaintRequest) -> InpaintRequest:
    """Checks every setting but the images; returns the request with numbers normalised and the seed drawn."""
    check_choice("sampler", request.sampler, SAMPLERS)
    if request.masked_content not in MASKED_CONTENTS:
        raise InvalidRequest(f"masked_content must be one of {', '.join(MASKED_CONTENTS)}; "
                             f"got {request.masked_content!r}.")
    if request.outpaint_fill not in OUTPAINT_FILLS:
        raise InvalidRequest(f"outpaint_fill must be one of {', '.join(OUTPAINT_FILLS)}; "
                             f"got {request.outpaint_fill!r}.")
    margins = {f"outpaint_{side}": as_multiple(f"outpaint_{side}", getattr(request, f"outpaint_{side}"),
                                               models.vae_scale, low=0, high=MAX_OUTPAINT)
               for side in OUTPAINT_SIDES}
    return replace(request, **margins,
                   prompt=check_prompt("prompt", request.prompt, required=False),
                   negative_prompt=check_prompt("negative_prompt", request.negative_prompt, required=False),
                   steps=as_number("steps", request.steps, integer=True, low=1, high=MAX_STEPS),
                   guidance_scale=as_number("guidance_scale", request.guidance_scale, low=0, high=MAX_GUIDANCE),
                   strength=as_number("strength", request.strength, low=0, high=1),
                   mask_blur=as_number("mask_blur", request.mask_blur, integer=True, low=0, high=MAX_MASK_BLUR),
                   padding=as_number("padding", request.padding, integer=True, low=0, high=MAX_PADDING),
                   invert_mask=_as_flag("invert_mask", request.invert_mask),
                   only_masked=_as_flag("only_masked", request.only_masked),
                   seed=resolve_seed(request.seed))


def _as_flag(name: str, value) -> bool:
    if isinstance(value, (bool, np.bool_)) or value in (0, 1):
        return bool(value)
    raise InvalidRequest(f"{name} must be true or false; got {value!r}.")


def inpaint(models: ModelSet, request: InpaintRequest, callback: StepCallback | None = None) -> TaskResult:
    """Repaints the masked area; ``images[0]`` is the result, ``changed`` the |output − input| heat map."""
    request = validate(models, request)
    started = time.perf_counter()
    canvas = prepare_canvas(models, request)
    box = crop_box(canvas.mask, request.padding) if request.only_masked else None
    if box is None:
        generated, notes = _generate(models, request, canvas.image, canvas.mask, callback)
    else:
        generated, notes = _generate_cropped(models, request, canvas, box, callback)
    output = composite(canvas.image, generated, canvas.mask, request.mask_blur)
    metadata = {**describe(models, request, canvas, output, time.perf_counter() - started), **notes}
    result = Image.fromarray(output)
    height, width = output.shape[:2]
    extra = {"Denoising strength": request.strength, "Mask blur": request.mask_blur,
             "Inpaint area": "Only masked" if request.only_masked else "Whole picture",
             "Masked area padding": request.padding, **({"Lora hashes": notes["Lora hashes"]} if "Lora hashes" in
                                                        notes else {})}
    result.info["parameters"] = a1111_parameters(request.prompt, request.negative_prompt, request.steps,
                                                 request.sampler, request.guidance_scale, request.seed, width,
                                                 height, models.name, extra)
    return TaskResult(images=[result], metadata=metadata,
                      changed=Image.fromarray(change_heatmap(canvas.image, output)))


def describe(models: ModelSet, request: InpaintRequest, canvas: Canvas, output: np.ndarray, seconds: float) -> dict:
    """The JSON record stored with every image (the request's settings, never its pixels)."""
    settings = {f.name: getattr(request, f.name) for f in fields(request) if f.name not in ("image", "mask")}
    height, width = output.shape[:2]
    changed = np.any(output != canvas.image, axis=-1)
    return {"task": "inpaint", **settings, "seeds": [request.seed], "width": width, "height": height,
            **canvas.notes, "mask_pixels": int(canvas.mask.sum()), "changed_pixels": int(changed.sum()),
            "model": models.name, "device": str(models.device), "dtype": str(models.dtype).replace("torch.", ""),
            "seconds": round(seconds, 3), "versions": library_versions()}


# --- Inputs: any mode, any size -> an RGB canvas and a binary mask -------------------------------------------

def prepare_canvas(models: ModelSet, request: InpaintRequest) -> Canvas:
    """Opens, converts, snaps, outpaints and checks the image and mask; raises InvalidRequest on any problem."""
    image = open_image(request.image, "image", max_pixels=MAX_PIXELS, max_side=MAX_SIDE)
    pixels, notes = to_rgb(image, WHITE), {}
    outpainting = any(getattr(request, f"outpaint_{side}") for side in OUTPAINT_SIDES)
    if request.mask is None and not outpainting:
        raise InvalidRequest("No mask was given: paint over the area to repaint, or upload a mask image "
                             "(white = repaint).")
    mask = np.zeros(pixels.shape[:2], bool) if request.mask is None else load_mask(request.mask, image.size)
    if request.mask is not None and request.invert_mask:
        mask = ~mask
    if image.mode != "RGB":
        notes["converted"] = f"{image.mode} -> RGB"
    scale = models.vae_scale
    height, width = (pixels.shape[0] // scale) * scale, (pixels.shape[1] // scale) * scale
    if min(height, width) < max(MIN_SIDE, scale):
        raise InvalidRequest(f"The image is {image.width}×{image.height} pixels; it must be at least "
                             f"{max(MIN_SIDE, scale)} pixels on each side.")
    if (width, height) != image.size:
        notes["snapped"] = [list(image.size), [width, height]]
    pixels, mask = pixels[:height, :width], mask[:height, :width]
    if outpainting:
        pixels, mask = outpaint(pixels, mask, request)
        notes["outpaint"] = [getattr(request, f"outpaint_{side}") for side in OUTPAINT_SIDES]
        check_size(pixels.shape[1], pixels.shape[0], "The outpainted canvas", max_pixels=MAX_PIXELS, max_side=MAX_SIDE)
    if not mask.any():
        raise InvalidRequest("The mask is empty: paint the area to repaint (white = repaint).")
    return Canvas(np.ascontiguousarray(pixels), np.ascontiguousarray(mask), notes)


def load_mask(value, size: tuple[int, int]) -> np.ndarray:
    """The mask as ``H×W`` bool (True = repaint) at the image ``size`` (W, H): to L, nearest resize, ≥128."""
    # a transparent mask background means "keep"
    rgb = to_rgb(open_image(value, "mask", max_pixels=MAX_PIXELS, max_side=MAX_SIDE), BLACK)
    grey = Image.fromarray(rgb).convert("L")
    if grey.size != tuple(size):
        grey = grey.resize(tuple(size), Image.NEAREST)
    return np.asarray(grey) >= 128


def outpaint(pixels: np.ndarray, mask: np.ndarray, request: InpaintRequest) -> tuple[np.ndarray, np.ndarray]:
    """Extends the canvas; the new area is filled (edge replication or mean colour) and added to the mask."""
    pads = ((request.outpaint_top, request.outpaint_bottom), (request.outpaint_left, request.outpaint_right))
    new_area = np.pad(np.zeros(mask.shape, bool), pads, constant_values=True)
    extended = np.pad(pixels, (*pads, (0, 0)), mode="edge")
    if request.outpaint_fill == "mean":
        extended[new_area] = np.round(pixels.reshape(-1, 3).mean(0)).astype(np.uint8)
    return extended, np.pad(mask, pads) | new_area


# --- Generation ----------------------------------------------------------------------------------------------

def crop_box(mask: np.ndarray, padding: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) around the mask plus ``padding``, grown towards a square (the model's native
    aspect) as far as the image allows."""
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    left, top = max(int(xs.min()) - padding, 0), max(int(ys.min()) - padding, 0)
    right, bottom = min(int(xs.max()) + 1 + padding, width), min(int(ys.max()) + 1 + padding, height)
    side = max(right - left, bottom - top)
    left, right = _grow(left, right, side, width)
    top, bottom = _grow(top, bottom, side, height)
    return left, top, right, bottom


def _grow(low: int, high: int, length: int, limit: int) -> tuple[int, int]:
    """Widens [low, high) to ``length`` (at most ``limit``) about its centre, shifted to stay inside [0, limit)."""
    length = min(length, limit)
    low = max(min(low - (length - (high - low)) // 2, limit - length), 0)
    return low, low + length


def _generate_cropped(models: ModelSet, request, canvas: Canvas, box, callback):
    """Inpaints only ``box``, resized to the model's native size, then resized back into a copy of the image."""
    left, top, right, bottom = box
    crop_w, crop_h = right - left, bottom - top
    scale, native = models.vae_scale, models.native_size
    long_side = max(crop_w, crop_h)
    size = tuple(max(scale, round(native * s / long_side / scale) * scale) for s in (crop_w, crop_h))
    crop = Image.fromarray(canvas.image[top:bottom, left:right]).resize(size, Image.LANCZOS)
    crop_mask = Image.fromarray(canvas.mask[top:bottom, left:right]).resize(size, Image.NEAREST)
    generated, note = _generate(models, request, np.asarray(crop), np.asarray(crop_mask), callback)
    back = Image.fromarray(generated).resize((crop_w, crop_h), Image.LANCZOS)
    full = canvas.image.copy()
    full[top:bottom, left:right] = np.asarray(back)
    return full, {**note, "crop": list(box), "crop_size": list(size)}


def _generate(models: ModelSet, request: InpaintRequest, pixels: np.ndarray, mask: np.ndarray, callback):
    """Runs the denoise loop on ``pixels`` (``H×W×3`` uint8, sides multiples of the VAE scale) repainting ``mask``
    (``H×W`` bool); returns the decoded ``H×W×3`` uint8 image (not yet composited) and a note for the metadata."""
    scheduler = make_scheduler(request.sampler, models.scheduler.config)
    scheduler.set_timesteps(request.steps, device=models.device)
    start_from = smooth_fill(pixels, mask) if request.masked_content == "fill" else pixels
    image = pil_to_tensor(Image.fromarray(start_from), models.device, models.dtype)  # 1×3×H×W in [-1, 1]
    repaint = torch.from_numpy(mask.astype(np.float32))[None, None].to(models.device, models.dtype)
    # a latent cell is repainted if any of its pixels is: the generated area covers every masked pixel
    repaint_latent = F.max_pool2d(repaint, models.vae_scale)  # 1×1×H/8×W/8 in {0, 1}
    with torch.inference_mode():
        z0 = encode_pixels(models.vae, image)  # 1×4×H/8×W/8
        noise = initial_noise(z0.shape, request.seed, models.device, models.dtype)
        start = min(request.steps - round(request.steps * request.strength), request.steps - 1)
        timesteps = scheduler.timesteps
        if request.strength >= 1:
            latents = noise * scheduler.init_noise_sigma
        else:
            latents = scheduler.add_noise(z0, noise, timesteps[start:start + 1])
        prompt = encode_prompt(models, request.prompt, request.negative_prompt)
        nine_channels = models.is_inpainting
        extra = _inpainting_channels(models, image, repaint, repaint_latent) if nine_channels else None
        predict = guided(models.unet, prompt.cond, prompt.uncond, request.guidance_scale, extra_channels=extra,
                         added=prompt.added_conditions(*pixels.shape[:2]))
        blend = None if nine_channels else _known_part_blend(scheduler, z0, noise, repaint_latent)
        generator = torch.Generator("cpu").manual_seed(request.seed)
        latents = denoise_loop(scheduler, predict, latents, generator=generator, callback=callback, blend=blend,
                               start_index=start)
        decoded = tensor_to_pil(decode_latents(models.vae, latents))[0]
    method = "inpainting U-Net (mask + masked image channels)" if nine_channels else "latent blending"
    notes = {"method": method, "start_step": start}
    if prompt.loras:
        notes["Lora hashes"] = lora_infotext(prompt.loras)["Lora hashes"]
    return np.asarray(decoded), notes


def smooth_fill(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``pixels`` with the ``mask``ed area replaced by a smooth continuation of its surroundings (scikit-image's
    biharmonic inpainting, solved on a copy at most ``FILL_SIDE`` pixels on a side and resized back)."""
    from skimage.restoration import inpaint_biharmonic

    height, width = mask.shape
    factor = min(1.0, FILL_SIDE / max(height, width))
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    small = np.asarray(Image.fromarray(pixels).resize(size, Image.BOX))
    # a pixel of the small copy is unknown if any of the pixels it stands for is masked
    small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.BOX)) > 0
    if small_mask.all():  # nothing to continue from: the mean colour
        return np.where(mask[..., None], pixels.reshape(-1, 3).mean(0).round().astype(np.uint8), pixels)
    filled = inpaint_biharmonic(small, small_mask, channel_axis=-1)
    filled = Image.fromarray(np.clip(filled * 255 + 0.5, 0, 255).astype(np.uint8)).resize((width, height),
                                                                                         Image.BICUBIC)
    return np.where(mask[..., None], np.asarray(filled), pixels)


def _inpainting_channels(models: ModelSet, image: torch.Tensor, repaint: torch.Tensor, repaint_latent: torch.Tensor):
    """The 9-channel U-Net's extra input: ``cat(mask, VAE(masked image))``, ``1×5×h×w``; the masked image is the
    image with the repaint area set to 0 (mid grey) in [-1, 1]."""
    masked_latents = encode_pixels(models.vae, image * (1 - repaint))
    return torch.cat([repaint_latent, masked_latents], dim=1)


def _known_part_blend(scheduler, z0: torch.Tensor, noise: torch.Tensor, repaint_latent: torch.Tensor):
    """The ``blend`` hook: after step ``index`` the unmasked cells become z_0 noised to the next timestep."""
    timesteps = scheduler.timesteps

    def blend(latents: torch.Tensor, index: int) -> torch.Tensor:
        if index + 1 < len(timesteps):
            known = scheduler.add_noise(z0, noise, timesteps[index + 1:index + 2])
        else:
            known = z0
        return known * (1 - repaint_latent) + latents * repaint_latent

    return blend


# --- Output: exact composite and the changed-pixels view -----------------------------------------------------

def composite(original: np.ndarray, generated: np.ndarray, mask: np.ndarray, blur: int) -> np.ndarray:
    """``H×W×3`` uint8: generated pixels inside the mask, feathered by a Gaussian of ``blur`` px that is forced to
    0 outside the mask, so every unmasked pixel is copied from ``original`` unchanged."""
    from PIL import ImageFilter

    soft = mask.astype(np.float32)
    if blur > 0:
        blurred = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(blur))
        soft = np.asarray(blurred, np.float32) / 255 * mask
    soft = soft[..., None]
    mixed = np.round(original * (1 - soft) + generated * soft).clip(0, 255).astype(np.uint8)
    return np.where(mask[..., None], mixed, original)


# inferno-like anchors: black -> purple -> red -> orange -> pale yellow
_HEAT_ANCHORS = np.array([[0, 0, 0], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32)


def change_heatmap(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``H×W×3`` uint8 heat map of the mean |after − before| over channels: black = unchanged; any change is at
    least dark purple, brightness grows with √(change / 255) up to pale yellow."""
    diff = np.abs(after.astype(np.float32) - before.astype(np.float32)).mean(-1)
    level = np.where(diff > 0, 0.15 + 0.85 * np.sqrt(diff / 255), 0.0)
    positions = np.linspace(0, 1, len(_HEAT_ANCHORS))
    channels = [np.interp(level, positions, _HEAT_ANCHORS[:, c]) for c in range(3)]
    return np.round(np.stack(channels, -1)).astype(np.uint8)

