"""The one denoise loop, its samplers and its step callback.

Maths names (Ho et al. 2020; Song et al. 2021):
  x_t        the noisy sample at timestep t ("latents")
  alpha_bar  ᾱ_t, the fraction of signal variance left at t: x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε
  sigma      σ_t = √((1−ᾱ_t)/ᾱ_t), the noise-to-signal ratio (infinite at zero terminal SNR)
  x0_pred    x̂_0, the model's estimate of the clean sample at this step
Every task (text-to-image, img2img/inpaint, upscale, pixel denoise, trajectory) runs this loop; progress,
cancellation, previews and trajectory capture are callbacks that receive a :class:`Step`.
"""
from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

# UI name -> (diffusers scheduler class name, extra config)
SAMPLERS: dict[str, tuple[str, dict]] = {
    "DDIM": ("DDIMScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "final_sigmas_type": "zero"}),
    "DDPM": ("DDPMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
}
DEFAULT_SAMPLER = "DDIM"
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 5.0  # classifier-free guidance w; any w > 1 runs the U-Net on a batch of two


class Cancelled(Exception):
    """Raised by a step callback to stop the loop at the end of the current step."""


@dataclass(frozen=True)
class Step:
    """What one step of the loop reports. Tensors are ``B×C×h×w`` on the model's device."""

    index: int  # 0-based
    total: int
    timestep: int
    sigma: float
    alpha_bar: float
    latents: torch.Tensor  # x after this step (input of the next)
    x0_pred: torch.Tensor  # x̂_0 estimated at this step


StepCallback = Callable[[Step], None]


def make_scheduler(sampler: str, base_config) -> object:
    """A fresh diffusers scheduler for ``sampler`` built from the model's own scheduler config."""
    import diffusers

    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler '{sampler}'; choose one of: {', '.join(SAMPLERS)}.")
    class_name, extra = SAMPLERS[sampler]
    return getattr(diffusers, class_name).from_config(base_config, **extra)


def sigma_of(alpha_bar: float) -> float:
    return math.inf if alpha_bar <= 0 else math.sqrt((1 - alpha_bar) / alpha_bar)


def combine_callbacks(*callbacks: StepCallback | None) -> StepCallback | None:
    active = [c for c in callbacks if c is not None]
    if not active:
        return None

    def callback(step: Step) -> None:
        for c in active:
            c(step)

    return callback


def throttled(callback: StepCallback, seconds: float = 0.25) -> StepCallback:
    """A step callback forwarding to ``callback`` at most once per ``seconds`` (and always the last step): a
    progress bar or live preview then costs one message (or device sync) per interval, not one per step."""
    last = [float("-inf")]

    def forward(step) -> None:
        now = time.perf_counter()
        if now - last[0] >= seconds or step.index == step.total - 1:
            last[0] = now
            callback(step)

    return forward


def step_kwargs(scheduler, generator) -> dict:
    """``scheduler.step``'s keyword arguments: the generator for the samplers that draw noise in their step
    (Euler a, DDPM); UniPC's step takes none."""
    return {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}


def denoise_loop(scheduler, predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], latents: torch.Tensor, *,
                 generator: torch.Generator | None = None, callback: StepCallback | None = None,
                 blend: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
                 start_index: int = 0) -> torch.Tensor:
    """Runs ``scheduler.timesteps[start_index:]`` and returns the final sample.

    ``predict(model_input, t)`` returns the model output the scheduler expects (ε or v), guidance included.
    ``blend(latents, index)`` may replace parts of the sample after each step (inpainting keeps the known part).
    A callback that raises :class:`Cancelled` stops the loop; the exception propagates to the task.
    """
    timesteps = scheduler.timesteps
    # host copies made once: reading a GPU tensor in every step's callback would sync the device every step
    host_timesteps = [int(t) for t in timesteps.tolist()] if callback is not None else None
    alphas = scheduler.alphas_cumprod.cpu() if callback is not None else None
    extra = step_kwargs(scheduler, generator)
    for index in range(start_index, len(timesteps)):
        t = timesteps[index]
        output = predict(scheduler.scale_model_input(latents, t), t)
        result = scheduler.step(output, t, latents, **extra)
        latents = result.prev_sample
        x0 = getattr(result, "pred_original_sample", None)
        if x0 is None:  # multistep solvers keep x̂_0 as their last converted model output
            x0 = scheduler.model_outputs[-1]
        if blend is not None:
            latents = blend(latents, index)
        if callback is not None:
            alpha_bar = float(alphas[host_timesteps[index]])
            callback(Step(index=index, total=len(timesteps), timestep=host_timesteps[index],
                          sigma=sigma_of(alpha_bar), alpha_bar=alpha_bar, latents=latents, x0_pred=x0))
    return latents


def as_model_input(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """``tensor`` as every U-Net input is handed over: an inference tensor in the default (contiguous) layout;
    itself if it is one already, else a copy made in inference mode.

    A compiled U-Net guards on each input's kind and strides. Tasks make their tensors inside or outside
    ``torch.inference_mode()`` (the first step's latents, the timesteps, the prompt), and inpainting's blend can
    return channels-last latents, so without this a warmed-up graph would compile again for a task's first
    request.
    """
    if tensor is None or (tensor.is_inference() and tensor.is_contiguous()):
        return tensor
    with torch.inference_mode():
        return tensor.clone(memory_format=torch.contiguous_format)


def guided(unet, cond: torch.Tensor, uncond: torch.Tensor | None, guidance_scale: float, *, extra_channels=None,
           class_labels=None, guidance_rescale: float = 0.0, added: tuple[dict, dict] | None = None):
    """A ``predict`` for conditional U-Nets with classifier-free guidance (Ho & Salimans 2022).

    ``output = uncond + w·(cond − uncond)``; with ``uncond`` None or ``w <= 1`` the model runs once.
    ``extra_channels`` (e.g. the upscaler's low-res image) are concatenated to the input.
    ``guidance_rescale`` (Lin et al. 2024) pulls the guided output's std back towards the conditional one.
    ``added``: SDXL's (cond, uncond) ``added_cond_kwargs`` (:meth:`EncodedPrompt.added_conditions`).
    """
    if added is None and getattr(unet.config, "addition_embed_type", None) == "text_time":
        raise ValueError("This U-Net (SDXL) needs the pooled prompt and size ids: pass added=.")
    use_cfg = uncond is not None and guidance_scale > 1.0
    embeddings = as_model_input(torch.cat([uncond, cond]) if use_cfg else cond)
    labels = as_model_input(torch.cat([class_labels] * 2) if use_cfg and class_labels is not None else class_labels)
    extra = as_model_input(torch.cat([extra_channels] * 2) if use_cfg and extra_channels is not None
                           else extra_channels)
    unet_kwargs = {}
    if added is not None:
        unet_kwargs["added_cond_kwargs"] = {key: as_model_input(torch.cat([added[1][key], value]) if use_cfg else value)
                                            for key, value in added[0].items()}

    model = unet.new_run() if hasattr(unet, "new_run") else unet  # step caching keeps per-run state (fast.py)

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        model_input = torch.cat([x, x]) if use_cfg else x
        if extra is not None:
            model_input = torch.cat([model_input, extra.to(model_input.dtype)], dim=1)
        # timesteps as float32 whatever the sampler (DDIM's are integers, Euler's floats): one graph for all;
        # the U-Net's time embedding computes in float32 either way, so the output is the same
        if model_input.dtype != embeddings.dtype:  # latents from a float32 (upcast) VAE beside a float16 U-Net
            model_input = model_input.to(embeddings.dtype)
        out = model(as_model_input(model_input), as_model_input(t.float()), encoder_hidden_states=embeddings,
                    class_labels=labels, **unet_kwargs).sample
        if not use_cfg:
            return out
        out_uncond, out_cond = out.chunk(2)
        guided_out = out_uncond + guidance_scale * (out_cond - out_uncond)
        if guidance_rescale > 0:
            dims = list(range(1, out.ndim))
            rescaled = guided_out * (out_cond.std(dims, keepdim=True) / guided_out.std(dims, keepdim=True))
            guided_out = guidance_rescale * rescaled + (1 - guidance_rescale) * guided_out
        return guided_out

    return predict
