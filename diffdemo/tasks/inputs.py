"""Image inputs shared by the tasks: open anything a user or API client sends, check its size, make it RGB."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from diffdemo.tasks.common import InvalidRequest

HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def open_image(value, name: str, *, max_pixels: int, max_side: int, decode: bool = True):
    """A PIL image from a PIL image, a uint8/bool array, a file path or bytes; checks the size before decoding.
    With ``decode`` False only the file's header is read (the size, for a request's cost): close it after use."""
    if value is None:
        raise InvalidRequest(f"No {name} was given; upload an image.")
    try:
        if isinstance(value, np.ndarray):
            value = Image.fromarray(value.astype(np.uint8) * 255 if value.dtype == bool else value)
        elif isinstance(value, (bytes, bytearray)):
            value = Image.open(io.BytesIO(value))
        elif isinstance(value, (str, os.PathLike)):
            value = Image.open(value)
        if not isinstance(value, Image.Image):
            raise InvalidRequest(f"The {name} must be an image; got {type(value).__name__}.")
        check_size(*value.size, f"The {name}", max_pixels=max_pixels, max_side=max_side)
        if decode:
            value.load()
    except InvalidRequest:
        raise
    except Image.DecompressionBombError as error:
        raise InvalidRequest(f"The {name} is too large: the limit is {max_pixels / 1e6:.1f} megapixels.") from error
    except (OSError, ValueError, TypeError, SyntaxError) as error:
        raise InvalidRequest(f"The {name} could not be read: the file is corrupt or not a picture (use PNG, JPEG "
                             f"or WebP).") from error
    return value


def check_size(width: int, height: int, what: str, *, max_pixels: int, max_side: int) -> None:
    if width * height > max_pixels or max(width, height) > max_side:
        raise InvalidRequest(f"{what} is {width}×{height} pixels ({width * height / 1e6:.1f} megapixels); the limit "
                             f"is {max_pixels / 1e6:.1f} megapixels and {max_side} pixels a side; please downscale it.")


def to_rgb(image, background: tuple[int, int, int]) -> np.ndarray:
    """Any PIL mode -> ``H×W×3`` uint8. 16-bit and float greys are scaled to 8 bits; transparency is flattened
    onto ``background`` (the hidden colour under transparent pixels is arbitrary)."""
    if image.mode in HIGH_BIT_MODES:
        grey = np.asarray(image, dtype=np.float64)
        peak = grey.max(initial=0)
        scale = 255 / 65535 if image.mode.startswith("I;16") or peak > 255 else 255 if peak <= 1 else 1
        grey = np.clip(np.round(grey * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        flat = Image.new("RGBA", image.size, (*background, 255))
        image = Image.alpha_composite(flat, image.convert("RGBA"))
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as error:
        raise InvalidRequest(f"Images in {image.mode} mode are not supported; save it as RGB PNG or JPEG.") from error
