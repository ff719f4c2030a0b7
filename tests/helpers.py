"""Small helpers the test files share: an image's pixels, PSNR, a free port, waiting for a condition."""
from __future__ import annotations

import math
import socket
import time
from pathlib import Path

import numpy as np
from PIL import Image


# The places a visitor gives the app a picture or a file (by label); every other picture, gallery or file is an
# output. "image" and "mask" are /inpaint's API inputs, hidden on the page.
UPLOAD_INPUTS = frozenset({"Image", "Small image", "Image: paint over the part to repaint",
                           "Or upload a mask (white = repaint; added to what you paint)",
                           "…or branch a saved run (trajectory-run.safetensors)", "image", "mask"})


def pixels(source, dtype=np.uint8) -> np.ndarray:
    """H×W×3 RGB values in [0, 255] of a PIL image, an image file's path, or a task result (its first image).

    Pass a signed ``dtype`` (``np.int16``) where pictures are subtracted, so differences do not wrap around.
    """
    if hasattr(source, "images"):
        source = source.images[0]
    if isinstance(source, (str, Path)):
        with Image.open(source) as image:
            return np.asarray(image.convert("RGB"), dtype=dtype)
    return np.asarray(source.convert("RGB"), dtype=dtype)


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB of two pictures (PIL images or arrays in [0, 255]); inf when identical."""
    a, b = (pixels(x, np.float64) if isinstance(x, Image.Image) else np.asarray(x, np.float64) for x in (a, b))
    mse = np.mean((a - b) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float, what: str = "the condition", interval: float = 0.02):
    """Calls ``condition`` every ``interval`` s until it returns something true (returned); AssertionError after
    ``timeout`` s. ``what`` may be a string or a function giving one, for the failure message."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what() if callable(what) else what}")
        time.sleep(interval)
    return value
