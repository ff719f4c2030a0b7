"""Text-to-image: a prompt in, images and their metadata out."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import torch

from diffdemo.engine.conditioning import generation_inputs
from diffdemo.engine.images import decode_latents, initial_noise, tensor_to_pil
from diffdemo.engine.loading import ModelSet
from diffdemo.engine.lora import lora_infotext, split_prompt
from diffdemo.engine.prompts import encode_prompt
from diffdemo.engine.sampling import SAMPLERS, StepCallback, denoise_loop, guided, make_scheduler
from diffdemo.tasks.common import (TaskResult, a1111_parameters, as_multiple, as_number,
                                   check_choice, check_prompt, library_versions, resolve_seed)
from diffdemo.tasks.settings import MAX_GUIDANCE, MAX_STEPS, PromptSettings

MAX_IMAGES = 8
MAX_SIDE = 2048
MIN_SIDE = 32


@dataclass(frozen=True)
class TextToImageRequest(PromptSettings):
    """``width``/``height`` None mean the model's native size; ``seed`` -1 means random."""

    width: int | None = None
    height: int | None = None
    seed: int = -1
    num_images: int = 1


def validate(models: ModelSet, request: TextToImageRequest) -> TextToImageRequest:
    """Returns the request with defaults filled in, or raises :class:`InvalidRequest` saying what is wrong."""
    check_choice("sampler", request.sampler, SAMPLERS)
    size = {name: models.native_size if getattr(request, name) is None else
            as_multiple(name, getattr(request, name), models.vae_scale, low=MIN_SIDE, high=MAX_SIDE)
            for name in ("width", "height")}
    return replace(request, **size,
                   prompt=check_prompt("prompt", request.prompt, required=True),
                   negative_prompt=check_prompt("negative_prompt", request.negative_prompt, required=False),
                   steps=as_number("steps", request.steps, integer=True, low=1, high=MAX_STEPS),
                   guidance_scale=as_number("guidance_scale", request.guidance_scale, low=0, high=MAX_GUIDANCE),
                   num_images=as_number("num_images", request.num_images, integer=True, low=1, high=MAX_IMAGES),
                   seed=resolve_seed(request.seed))


def text_to_image(models: ModelSet, request: TextToImageRequest, callback: StepCallback | None = None) -> TaskResult:
    """Generates ``num_images`` images; image ``i`` uses seed ``seed + i``, so each can be reproduced alone."""
    request = validate(models, request)
    started = time.perf_counter()
    scheduler = make_scheduler(request.sampler, models.scheduler.config)
    scheduler.set_timesteps(request.steps, device=models.device)
    prompt = encode_prompt(models, request.prompt, request.negative_prompt, request.num_images)
    seeds = [request.seed + i for i in range(request.num_images)]
    shape = (1, models.latent_channels, request.height // models.vae_scale, request.width // models.vae_scale)
    # one CPU generator per image: its initial noise, then (for Euler a, DDPM) its per-step noise
    generator = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    latents = torch.cat([initial_noise(shape, g, models.device, models.dtype) for g in generator])
    latents = latents * scheduler.init_noise_sigma
    with torch.inference_mode():
        predict = guided(models.unet, prompt.cond, prompt.uncond, request.guidance_scale,
                         **generation_inputs(models, prompt, request.num_images, request.height, request.width))
        latents = denoise_loop(scheduler, predict, latents, generator=generator, callback=callback)
        images = tensor_to_pil(decode_latents(models.vae, latents))
    metadata = describe(models, request, seeds, time.perf_counter() - started)
    if prompt.truncated:
        metadata["truncated"] = f"The prompt was longer than the model reads; ignored: '{prompt.truncated}'."
    if prompt.loras:
        metadata["loras"] = [asdict(lora) for lora in prompt.loras]
    if (unknown := unknown_words(models, request.prompt)) is not None:
        metadata["unknown_words"] = unknown
    for image, seed in zip(images, seeds):
        image.info["parameters"] = a1111_parameters(request.prompt, request.negative_prompt, request.steps,
                                                    request.sampler, request.guidance_scale, seed, request.width,
                                                    request.height, models.name, lora_infotext(prompt.loras))
    return TaskResult(images=images, metadata=metadata)


def unknown_words(models: ModelSet, prompt: str) -> list[str] | None:
    """The words of ``prompt`` the model never saw in its training captions, e.g. ["astronaut"] for the built-in
    model; None for a model without a vocabulary file (CLIP knows them all). LoRA tags and textual-inversion
    trigger words do not count."""
    vocabulary = getattr(models, "vocabulary", None)
    if vocabulary is None:
        return None
    return vocabulary.unknown_words(split_prompt(prompt)[0], also_known=models.tokenizer.get_added_vocab())


def describe(models: ModelSet, request, seeds, seconds: float) -> dict:
    """The JSON record stored with every image."""
    return {"task": "text_to_image", **asdict(request), "seeds": seeds, "model": models.name,
            "device": str(models.device), "dtype": str(models.dtype).replace("torch.", ""),
            "seconds": round(seconds, 3), "versions": library_versions(),
            **({"fast_path": fast.describe()} if (fast := models.extras.get("fast_path")) else {})}
