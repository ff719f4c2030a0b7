"""The training stages of the embedded model set, one module each; :mod:`diffdemo.world.train` runs them in order.

Each module has ``run(cfg, out, device) -> dict`` (the stage's log) and reads what earlier stages wrote under
``out`` (or, when fine-tuning, the model set named by ``cfg.init_from``).
"""
from __future__ import annotations

from importlib import import_module

STAGES = ("tokenizer", "vae", "unet", "upscaler", "upscaler_decoder", "denoiser", "tiny_vae", "assemble")


def runner(stage: str):
    """The ``run`` function of ``stage`` (imported when needed: each stage pulls in only what it uses)."""
    return import_module(f"diffdemo.world.stages.{stage}").run
