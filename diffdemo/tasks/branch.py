"""Branch: take step k of a recorded run, change the prompt and/or guidance, and continue from there to the end.

Steps 0..k−1 are shared with the original; the one loop then runs steps k..N−1 from the kept x_t of step k
(``denoise_loop(start_index=k)``). A sampler may carry state across steps: DPM++ 2M and UniPC keep a history of
x̂_0, Euler a and DDPM draw fresh noise from the seed's generator every step. None of that is in x_t alone, so it is
rebuilt by *replaying* steps 0..k−1 through a fresh scheduler with the model outputs recovered from the kept x_t
and x̂_0 (no U-Net call): ε̂ = (x_t − √ᾱ·x̂_0)/√(1−ᾱ), v̂ = √ᾱ·ε̂ − √(1−ᾱ)·x̂_0. With unchanged settings the branch
therefore repeats the original, up to the float16 rounding of the kept latents.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from diffdemo.engine.conditioning import generation_inputs
from diffdemo.engine.images import decode_latents, initial_noise, tensor_to_pil
from diffdemo.engine.loading import ModelSet
from diffdemo.engine.prompts import encode_prompt
from diffdemo.engine.sampling import combine_callbacks, denoise_loop, guided, make_scheduler, step_kwargs
from diffdemo.tasks.common import InvalidRequest, TaskResult, as_number, check_prompt, library_versions
from diffdemo.tasks.compare import Comparison, rms
from diffdemo.tasks.saved_run import check_saved_run
from diffdemo.tasks.settings import MAX_GUIDANCE
from diffdemo.tasks.trajectory import TrajectoryRecorder, TrajectoryRun, epsilon, json_numbers, load_run

SOLVER_STATE = ("Rebuilt by replaying the recorded steps before the branch through the scheduler without a model "
                "call (step counter, DPM++ 2M/UniPC history, Euler a/DDPM random stream), so unchanged settings "
                "repeat the original up to float16 rounding.")


@dataclass(frozen=True)
class BranchRequest:
    """``step``: the 0-based step to branch at (the run's x_t entering it is kept; steps before it are shared).
    ``prompt`` None or "" and ``guidance_scale`` None keep the run's; ``negative_prompt`` None keeps the run's."""

    step: int
    prompt: str | None = None
    negative_prompt: str | None = None
    guidance_scale: float | None = None


def read_run(path, models: ModelSet) -> TrajectoryRun:
    """A run saved by the trajectory tab (``trajectory-run.safetensors``), every field checked against the live
    endpoints' limits (:mod:`.saved_run`); raises InvalidRequest if it is not one."""
    try:
        run = load_run(path, models)
        check_saved_run(run, models)
    except InvalidRequest:
        raise
    except Exception:  # noqa: BLE001 - safetensors, JSON or missing keys alike: the user gave another file
        raise InvalidRequest("That file is not a saved trajectory run; use the trajectory-run.safetensors the "
                             "Trajectory tab lets you download.") from None
    return run


def validate(models: ModelSet, request: BranchRequest, run: TrajectoryRun | None) -> tuple[int, str, str, float]:
    """Checks the run and the request; returns (step, prompt, negative prompt, guidance). Raises InvalidRequest."""
    if run is None:
        raise InvalidRequest("There is no recorded run to branch from: press Run first (or upload a saved run).")
    meta = run.metadata
    if meta.get("every", 1) != 1:
        raise InvalidRequest("Branching needs every step of the run (the steps before the branch are replayed); "
                             "record it again with 'Keep every N-th step' set to 1.")
    if meta.get("model") != models.name or run.x_t.shape[1] != models.latent_channels:
        raise InvalidRequest(f"This run was recorded with the model '{meta.get('model')}', not with the one this "
                             f"app runs ('{models.name}').")
    step = as_number("step", request.step, integer=True, low=0, high=len(run) - 1)
    prompt = check_prompt("prompt", request.prompt, required=False) or meta["prompt"]
    negative = meta["negative_prompt"] if request.negative_prompt is None else \
        check_prompt("negative_prompt", request.negative_prompt, required=False)
    guidance = meta["guidance_scale"] if request.guidance_scale is None else \
        as_number("guidance_scale", request.guidance_scale, low=0, high=MAX_GUIDANCE)
    return step, prompt, negative, guidance


def model_output_of(x_t: torch.Tensor, x0: torch.Tensor, alpha_bar: float, euler_type: bool,
                    prediction_type: str) -> torch.Tensor:
    """The model output (ε, v or x_0, per ``prediction_type``) that makes the scheduler's x̂_0 equal ``x0`` at
    ``x_t`` (``1×C×h×w``, float32); Euler-type x_t is in the VE form and is converted by :func:`epsilon`."""
    eps = epsilon(x_t, x0, alpha_bar, euler_type)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        alpha_bar = min(max(alpha_bar, 0.0), 1.0)
        return math.sqrt(alpha_bar) * eps - math.sqrt(1 - alpha_bar) * x0.float()
    return x0.float()  # "sample"


def replay(scheduler, run: TrajectoryRun, stop: int, generator: list, models: ModelSet) -> None:
    """Steps ``scheduler`` (fresh, timesteps set) through steps 0..stop−1 with outputs recovered from the run, so
    its step counter, multistep history and ``generator``'s random stream are where the original run had them."""
    kwargs = step_kwargs(scheduler, generator)
    prediction_type = scheduler.config.prediction_type
    for i in range(stop):
        t = scheduler.timesteps[i]
        x_t = run.x_t[i:i + 1].to(models.device, torch.float32)
        output = model_output_of(x_t, run.x0[i:i + 1].to(models.device), run.numbers[i]["alpha_bar"],
                                 run.metadata["euler_type"], prediction_type)
        scheduler.scale_model_input(x_t, t)  # Euler-type schedulers expect it before every step
        scheduler.step(output.to(models.dtype), t, x_t.to(models.dtype), **kwargs)


def branch(models: ModelSet, run: TrajectoryRun | None, request: BranchRequest, callback=None) -> TaskResult:
    """Continues ``run`` from ``request.step`` with the new prompt/guidance through the one loop.

    ``images``: the branch's final image (PIL); ``run``: the branch as a full :class:`TrajectoryRun`
    (the original's steps before k, then the new ones); ``comparison``: original vs branch;
    ``metadata``: the new settings, ``branched_from`` (step, t, the original's prompt and guidance),
    ``solver_state`` and ``final_rms_vs_original`` (latents).
    """
    step, prompt, negative, guidance = validate(models, request, run)
    started, meta = time.perf_counter(), run.metadata
    scheduler = make_scheduler(meta["sampler"], models.scheduler.config)
    scheduler.set_timesteps(meta["steps"], device=models.device)
    generator = [torch.Generator("cpu").manual_seed(meta["seed"])]
    initial_noise((1, *run.x_t.shape[1:]), generator[0], models.device, models.dtype)  # as text_to_image drew it
    replay(scheduler, run, step, generator, models)
    latents = run.x_t[step:step + 1].to(models.device, models.dtype)
    recorder = TrajectoryRecorder(latents, guidance_scale=guidance, euler_type=meta["euler_type"])
    encoded = encode_prompt(models, prompt, negative, 1)
    height, width = (side * models.vae_scale for side in run.x_t.shape[-2:])
    with torch.inference_mode():
        predict = guided(models.unet, encoded.cond, encoded.uncond, guidance,
                         **generation_inputs(models, encoded, 1, height, width))
        final = denoise_loop(scheduler, predict, latents, generator=generator,
                             callback=combine_callbacks(recorder, callback), start_index=step)
        image = tensor_to_pil(decode_latents(models.vae, final))[0]
    metadata = {**meta, "task": "branch", "prompt": prompt, "negative_prompt": negative, "guidance_scale": guidance,
                "branched_from": {"step": step, "t": run.numbers[step]["t"], "prompt": meta["prompt"],
                                  "guidance_scale": meta["guidance_scale"]},
                "solver_state": SOLVER_STATE, "final_rms_vs_original": rms(recorder.final, run.final),
                "seconds": round(time.perf_counter() - started, 3), "versions": library_versions()}
    branched = TrajectoryRun(models=models, x_t=torch.cat([run.x_t[:step], *recorder.x_t]),
                             x0=torch.cat([run.x0[:step], *recorder.x0]), final=recorder.final,
                             numbers=run.numbers[:step] + recorder.numbers, metadata=metadata,
                             latent_rgb=run.latent_rgb, image=image)
    changes = [f"prompt={prompt}"] * (prompt != meta["prompt"]) + \
        [f"negative={negative}"] * (negative != meta["negative_prompt"]) + \
        [f"guidance={guidance:g}"] * (guidance != meta["guidance_scale"])
    label = f"branch at step {step + 1}" + (f": {' · '.join(changes)}" if changes else " (unchanged)")
    comparison = Comparison(runs=[run, branched], labels=["original", label],
                            metadata={"task": "branch", "labels": ["original", label]})
    return TaskResult(images=[image], metadata={**metadata, "numbers": json_numbers(branched.numbers)},
                      run=branched, comparison=comparison)
