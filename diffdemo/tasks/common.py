"""What every task shares: input errors users can read, seeds, results and their metadata."""
from __future__ import annotations

import math
import platform
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations only: these modules import this one
    from PIL import Image

    from diffdemo.tasks.compare import Comparison
    from diffdemo.tasks.playground.run import PlaygroundRun
    from diffdemo.tasks.trajectory import TrajectoryRun

MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 2000


class InvalidRequest(ValueError):
    """Bad input; the message is shown to the user as it is (one or two plain sentences)."""


@dataclass
class TaskResult:
    """Images (PIL) plus a JSON-able metadata dict (seed, steps, sampler, model, versions...), and what some tasks
    return beside them (None, or empty, for the others)."""

    images: list
    metadata: dict
    run: TrajectoryRun | PlaygroundRun | None = None  # trajectory, branch: the recorded run; playground: its run
    comparison: Comparison | None = None  # compare: the variants side by side; branch: the original beside it
    changed: Image.Image | None = None  # inpaint: the |output − input| heat map
    baselines: dict[str, Image.Image] = field(default_factory=dict)  # denoise: the classical results by name


def resolve_seed(seed) -> int:
    """-1 (or None) draws a random seed; anything else must be an integer in [0, 2**32 - 1]."""
    if seed is None or seed == -1:
        return random.SystemRandom().randint(0, MAX_SEED)
    value = as_number("seed", seed, integer=True)
    if not 0 <= value <= MAX_SEED:
        raise InvalidRequest(f"Seed must be -1 (random) or between 0 and {MAX_SEED}; got {shown(seed)}.")
    return int(value)


def as_number(name: str, value, *, integer: bool = False, low: float | None = None, high: float | None = None):
    """Checks that ``value`` is a finite number (within [low, high]) and returns it; raises InvalidRequest."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError, OverflowError):
            raise InvalidRequest(f"{name} must be a number; got {shown(value)}.") from None
    if not _finite(value):
        raise InvalidRequest(f"{name} must be a finite number; got {shown(value)}.")
    if integer:
        if value != int(value):
            raise InvalidRequest(f"{name} must be a whole number; got {value}.")
        value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidRequest(f"{name} must be between {low:g} and {high:g}; got {shown(value)}.")
    return value


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float (JSON allows any number of digits)
        return False


def as_multiple(name: str, value, step: int, *, low: float, high: float) -> int:
    """A whole number in [low, high] that is a multiple of ``step`` (e.g. pixels per latent cell)."""
    value = as_number(name, value, integer=True, low=low, high=high)
    if value % step:
        nearest = max(step, round(value / step) * step)
        raise InvalidRequest(f"{name.capitalize()} must be a multiple of {step} pixels; got {value} (try {nearest}).")
    return value


def check_choice(name: str, value, choices) -> str:
    """``value`` if it is one of the strings in ``choices``; else InvalidRequest naming the valid ones."""
    if not isinstance(value, str):
        got = "nothing" if value is None else f"a {type(value).__name__}"
        raise InvalidRequest(f"The {name} must be one of: {', '.join(choices)}; got {got}.")
    if value not in choices:
        raise InvalidRequest(f"Unknown {name} '{shown(value, quote=False)}'; choose one of: {', '.join(choices)}.")
    return value


def shown(value, *, limit: int = 40, quote: bool = True) -> str:
    """``value`` as it may be echoed in an error message: its repr (or text), cut to ``limit`` characters."""
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_prompt(name: str, text, *, required: bool) -> str:
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise InvalidRequest(f"{name} must be text; got {type(text).__name__}.")
    text = " ".join(text.split())
    if required and not text:
        raise InvalidRequest(f"Please describe the image in the {name.replace('_', ' ')}, e.g. 'a red circle'.")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"The {name.replace('_', ' ')} is {len(text)} characters long; the limit is "
                             f"{MAX_PROMPT_CHARS}.")
    return text


def is_out_of_memory(error: BaseException) -> bool:
    """True for a CPU ``MemoryError``, torch's ``OutOfMemoryError`` (CUDA) or another backend's "out of memory"."""
    import torch

    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def free_memory() -> None:
    """Collects garbage and hands cached accelerator memory back, e.g. after an out-of-memory error."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()


def library_versions() -> dict:
    import diffusers
    import torch
    import transformers

    return {"diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "torch": torch.__version__, "python": platform.python_version()}


def a1111_parameters(prompt: str, negative: str, steps: int, sampler: str, guidance: float, seed: int,
                     width: int, height: int, model: str, extra: dict | None = None) -> str:
    """The ``parameters`` text AUTOMATIC1111 writes into PNGs (and reads back with "PNG Info")."""
    fields = {"Steps": steps, "Sampler": sampler, "CFG scale": guidance, "Seed": seed, "Size": f"{width}x{height}",
              "Model": model, **(extra or {})}
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items()))
    return "\n".join(lines)


def save_png(image, path, metadata: dict | None = None) -> str:
    """Writes ``image`` as PNG with its A1111 ``parameters`` text chunk and a ``diffdemo`` JSON chunk."""
    import json

    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if "parameters" in image.info:
        info.add_text("parameters", image.info["parameters"])
    if metadata is not None:
        info.add_text("diffdemo", json.dumps(metadata, default=str))
    image.save(path, format="PNG", pnginfo=info)
    return str(path)
