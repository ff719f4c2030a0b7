"""The prompt settings that text to image, the trajectory and compare share (a dataclass base with their defaults),
and the limits every prompt-driven task checks them against (inpainting and branching too). The UI's sliders and
the API handlers' defaults read the same names, so a default or a limit is changed here once."""
from __future__ import annotations

from dataclasses import dataclass

from diffdemo.engine.sampling import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS

MAX_STEPS = 150
MAX_GUIDANCE = 30.0

__all__ = ["DEFAULT_GUIDANCE", "DEFAULT_SAMPLER", "DEFAULT_STEPS", "MAX_GUIDANCE", "MAX_STEPS", "PromptSettings"]


@dataclass(frozen=True)
class PromptSettings:
    """What to draw and how; a task's request adds its own fields after these (seed among them)."""

    prompt: str
    negative_prompt: str = ""  # what guidance steers away from (the unconditional side of CFG)
    sampler: str = DEFAULT_SAMPLER  # a key of engine.sampling.SAMPLERS
    steps: int = DEFAULT_STEPS  # denoising steps, 1..MAX_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE  # w in uncond + w·(cond − uncond), 0..MAX_GUIDANCE; ≤ 1 runs once
