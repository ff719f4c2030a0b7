"""A trajectory run read from a file is untrusted input: every field is checked against the live endpoints' limits.

A run file (``trajectory-run.safetensors``) can be written by anyone, so before a branch continues it, its settings
go through the same validation as a ``/trajectory`` request (same limits, same messages), and its tensors and
per-step numbers must be what that request would have recorded: the model's channels, the native size, one row
per kept step, finite values, and the timesteps of its sampler and step count.
"""
from __future__ import annotations

import math

import torch

from diffdemo.engine.loading import ModelSet
from diffdemo.engine.sampling import make_scheduler
from diffdemo.tasks.common import MAX_SEED, InvalidRequest, as_number
from diffdemo.tasks.trajectory import EULER_TYPE, TrajectoryRequest, TrajectoryRun
from diffdemo.tasks.trajectory import validate as validate_trajectory

SETTINGS = ("prompt", "negative_prompt", "sampler", "steps", "guidance_scale", "decode", "every")
REMAKE = "save the run again from the Trajectory tab."


def check_saved_run(run: TrajectoryRun, models: ModelSet) -> None:
    """Raises :class:`InvalidRequest` (one sentence, prefixed "Saved run: ") unless ``run`` is one this app's
    ``/trajectory`` endpoint could have recorded with ``models``. A missing field raises KeyError/TypeError."""
    meta = run.metadata
    try:
        request = TrajectoryRequest(**{name: meta[name] for name in SETTINGS}, seed=meta["seed"])
        checked = validate_trajectory(models, request)
        as_number("seed", meta["seed"], integer=True, low=0, high=MAX_SEED)
        if meta["euler_type"] is not (checked.sampler in EULER_TYPE):
            raise InvalidRequest(f"its euler_type does not match its sampler '{checked.sampler}'; {REMAKE}")
        _check_tensors(run, models, kept=math.ceil(checked.steps / checked.every))
        _check_numbers(run, checked, models)
    except InvalidRequest as error:
        raise InvalidRequest(f"Saved run: {error}") from None


def _check_tensors(run: TrajectoryRun, models: ModelSet, kept: int) -> None:
    channels, side = models.latent_channels, models.native_size // models.vae_scale
    for name, shape in (("x_t", (kept, channels, side, side)), ("x0", (kept, channels, side, side)),
                        ("final", (1, channels, side, side)), ("latent_rgb", (channels + 1, 3))):
        tensor = getattr(run, name)
        if tuple(tensor.shape) != shape:
            if name in ("x_t", "x0") and tensor.ndim == 4 and tuple(tensor.shape[:2]) == shape[:2]:
                h, w = tensor.shape[-2:]
                raise InvalidRequest(f"its latents are {h}×{w} ({h * models.vae_scale}×{w * models.vae_scale} pixels); "
                                     f"this app's trajectories are {models.native_size}×{models.native_size} pixels.")
            raise InvalidRequest(f"{name} has the shape {tuple(tensor.shape)}, not {shape}; {REMAKE}")
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise InvalidRequest(f"{name} holds values that are not finite numbers; {REMAKE}")


def _check_numbers(run: TrajectoryRun, request: TrajectoryRequest, models: ModelSet) -> None:
    scheduler = make_scheduler(request.sampler, models.scheduler.config)
    scheduler.set_timesteps(request.steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    expected = [(i, timesteps[i]) for i in range(0, request.steps, request.every)]
    found = [(n["step"], n["t"]) for n in run.numbers]
    if found != expected or any(n["total"] != request.steps for n in run.numbers):
        raise InvalidRequest(f"its step numbers are not those of {request.steps} {request.sampler} steps; {REMAKE}")
    for n in run.numbers:
        if not 0 <= n["alpha_bar"] <= 1 or not all(math.isfinite(n[k]) for k in ("alpha_bar", "guidance_scale")):
            raise InvalidRequest(f"its noise levels (alpha_bar) are not between 0 and 1; {REMAKE}")
