"""Loads a model set once: the embedded default in assets/, a local diffusers folder, or a Hugging Face hub id.

Device and dtype come from accelerate's view of the machine: fp16 on CUDA, fp32 on the CPU, unless told.
Every derived diffusers pipeline (img2img, inpaint) is built from the same module objects, never a copy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parents[2] / "assets"
EMBEDDED_MODEL = ASSETS / "model"
EMBEDDED_UPSCALER = ASSETS / "upscaler"
EMBEDDED_DENOISER = ASSETS / "denoiser"
EMBEDDED_TINY_VAE = ASSETS / "tiny_vae"
DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float32": torch.float32, "fp32": torch.float32}


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message is one sentence saying what was tried and how to fix it."""


@dataclass(frozen=True)
class Upscaler:
    """Components of a diffusers x4-upscaler-layout model (its own VAE, never shared)."""

    vae: object
    unet: object
    scheduler: object
    low_res_scheduler: object
    max_noise_level: int = 350


@dataclass(frozen=True)
class Denoiser:
    """A pixel-space DDPM: ``unet(x_t, t)`` predicts the noise of ``x_t`` (3 channels, values in [-1, 1])."""

    unet: object
    scheduler: object


@dataclass(frozen=True)
class ModelSet:
    """Everything the tasks need, loaded once. ``scheduler`` is the model's own; samplers derive from its config."""

    name: str
    tokenizer: object
    text_encoder: object
    vae: object
    unet: object
    scheduler: object
    device: torch.device
    dtype: torch.dtype
    upscaler: Upscaler | None = None
    denoiser: Denoiser | None = None
    tiny_vae: object | None = None  # a TAESD-layout AutoencoderTiny for cheap previews and trajectory frames
    extras: dict = field(default_factory=dict)

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell along a side (8 for Stable Diffusion)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        """The image side the U-Net was trained for, in pixels."""
        size = self.unet.config.sample_size
        return (size[0] if isinstance(size, (list, tuple)) else size) * self.vae_scale

    def pipeline(self, cls=None):
        """A diffusers pipeline (default ``StableDiffusionPipeline``) sharing this set's modules."""
        from diffusers import StableDiffusionPipeline

        cls = cls or StableDiffusionPipeline
        unet = getattr(self.unet, "base", self.unet)  # step caching (engine/fast.py) wraps the U-Net module
        components = dict(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=unet,
                          scheduler=self.scheduler, safety_checker=None, feature_extractor=None)
        return cls(**components, requires_safety_checker=False)


def default_device() -> torch.device:
    from accelerate import PartialState

    return PartialState().device


def resolve_dtype(device: torch.device, dtype: str | torch.dtype | None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"Unknown dtype '{dtype}'; use one of float16, bfloat16, float32.")
    return DTYPES[dtype]


def load_models(model: str | os.PathLike | None = None, *, upscaler: str | os.PathLike | None = None,
                tiny_vae: str | os.PathLike | None = None, device: str | torch.device | None = None,
                dtype: str | torch.dtype | None = None, fast=None) -> ModelSet:
    """Loads tokenizer, CLIP text encoder, VAE, U-Net and scheduler (plus an upscaler and denoiser if present).

    ``model`` None means the embedded model in assets/; its upscaler, pixel denoiser and tiny VAE come along.
    ``tiny_vae``: a TAESD-layout ``AutoencoderTiny`` (hub id such as madebyollin/taesd, or a folder).
    ``fast`` (a :class:`~diffdemo.engine.fast.FastPath`, default None = off) applies opt-in speed-ups.
    Raises :class:`ModelLoadError` with a one-sentence explanation when something cannot be loaded.
    """
    device = torch.device(device) if device else default_device()
    dtype = resolve_dtype(device, dtype)
    embedded = model is None
    source = str(EMBEDDED_MODEL if embedded else model)
    parts = _load_parts(source, device, dtype)
    if upscaler is None and embedded and EMBEDDED_UPSCALER.exists():
        upscaler = EMBEDDED_UPSCALER
    up = _load_upscaler(str(upscaler), device, dtype) if upscaler else None
    den = _load_denoiser(str(EMBEDDED_DENOISER), device, dtype) if embedded and EMBEDDED_DENOISER.exists() else None
    if tiny_vae is None and embedded and EMBEDDED_TINY_VAE.exists():
        tiny_vae = EMBEDDED_TINY_VAE
    tiny = _load_tiny_vae(str(tiny_vae), parts["vae"], device, dtype) if tiny_vae else None
    name = "diffdemo-shapes (embedded)" if embedded else str(model)
    models = ModelSet(name=name, **parts, device=device, dtype=dtype, upscaler=up, denoiser=den, tiny_vae=tiny)
    if fast is None:
        return models
    from diffdemo.engine.fast import apply_fast_path

    return apply_fast_path(models, fast)


def _from_pretrained(cls, source: str, subfolder: str, dtype, **kwargs):
    try:
        return cls.from_pretrained(source, subfolder=subfolder, torch_dtype=dtype, **kwargs)
    except (OSError, ValueError, EnvironmentError) as error:
        raise ModelLoadError(_explain(source, subfolder, error)) from error


def _explain(source: str, subfolder: str, error: Exception) -> str:
    if Path(source).exists():
        return (f"Could not load '{subfolder}' from the folder {source}: it is not a complete diffusers model folder "
                f"({type(error).__name__}: {str(error).splitlines()[0][:200]}).")
    if _looks_like_path(source):
        return (f"The model folder {source} does not exist; pass an existing diffusers folder (with model_index.json, "
                f"unet/, vae/, text_encoder/, tokenizer/) or a Hugging Face hub id.")
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return (f"Could not load model '{source}': it is not a local folder and is not in the Hugging Face cache"
            f"{' (HF_HUB_OFFLINE=1 is set)' if offline else ' and the hub could not be reached'}; pass a local "
            f"diffusers folder with --model PATH, or download it on a connected machine "
            f"(hf download {source}) and run with HF_HUB_OFFLINE=1.")


def _looks_like_path(source: str) -> bool:
    """Hub ids are 'owner/name'; anything else with a slash, or starting with . or ~, is meant as a folder."""
    return source.startswith((".", "~", "/")) or source.count("/") > 1 or "\\" in source


def _load_parts(source: str, device, dtype) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if Path(source).is_dir() and not (Path(source) / "tokenizer").is_dir():
        raise ModelLoadError(f"The model folder {source} has no tokenizer/ subfolder; it is not a complete "
                             f"Stable Diffusion diffusers folder.")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
    except (OSError, ValueError, EnvironmentError) as error:
        raise ModelLoadError(_explain(source, "tokenizer", error)) from error
    if len(tokenizer) <= 2 or tokenizer.model_max_length > 100_000:  # transformers builds an empty one if missing
        if not Path(source).is_dir():
            raise ModelLoadError(_explain(source, "tokenizer", FileNotFoundError("no tokenizer files found")))
        raise ModelLoadError(f"The tokenizer in {source} is empty or has no length limit; check its tokenizer/ files.")
    text_encoder = _from_pretrained(CLIPTextModel, source, "text_encoder", dtype)
    vae = _from_pretrained(AutoencoderKL, source, "vae", dtype)
    unet = _from_pretrained(UNet2DConditionModel, source, "unet", dtype)
    scheduler = _from_pretrained(DDIMScheduler, source, "scheduler", None)
    modules = dict(text_encoder=text_encoder, vae=vae, unet=unet)
    for module in modules.values():
        module.to(device).eval().requires_grad_(False)
    return dict(tokenizer=tokenizer, scheduler=scheduler, **modules)


def _load_upscaler(source: str, device, dtype) -> Upscaler:
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

    vae = _from_pretrained(AutoencoderKL, source, "vae", dtype).to(device).eval().requires_grad_(False)
    unet = _from_pretrained(UNet2DConditionModel, source, "unet", dtype).to(device).eval().requires_grad_(False)
    if unet.config.in_channels != vae.config.latent_channels + 3:
        raise ModelLoadError(f"The upscaler at {source} is not in the x4-upscaler layout "
                             f"(its U-Net takes {unet.config.in_channels} channels, expected latent + 3).")
    return Upscaler(vae=vae, unet=unet, scheduler=_from_pretrained(DDIMScheduler, source, "scheduler", None),
                    low_res_scheduler=_from_pretrained(DDPMScheduler, source, "low_res_scheduler", None),
                    max_noise_level=_read_max_noise_level(source))


def _load_tiny_vae(source: str, vae, device, dtype):
    from diffusers import AutoencoderTiny

    try:
        tiny = AutoencoderTiny.from_pretrained(source, torch_dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as error:
        if Path(source).exists():
            raise ModelLoadError(f"Could not load a tiny VAE (AutoencoderTiny) from {source}: pass a folder holding "
                                 f"its config.json and weights ({type(error).__name__}: "
                                 f"{str(error).splitlines()[0][:200]}).") from error
        if _looks_like_path(source):
            raise ModelLoadError(f"The tiny VAE folder {source} does not exist; pass a folder holding an "
                                 f"AutoencoderTiny's config.json and weights, or a hub id such as "
                                 f"madebyollin/taesd.") from error
        raise ModelLoadError(_explain(source, "tiny VAE", error)) from error
    levels = len(tiny.config.decoder_block_out_channels)
    if tiny.config.latent_channels != vae.config.latent_channels or levels != len(vae.config.block_out_channels):
        raise ModelLoadError(f"The tiny VAE at {source} does not fit this model's latents (it has "
                             f"{tiny.config.latent_channels} channels and {levels} levels; the VAE has "
                             f"{vae.config.latent_channels} and {len(vae.config.block_out_channels)}).")
    tiny = tiny.to(device).eval().requires_grad_(False)
    if device.type == "cpu":  # measured: its small convolutions run about 1.5× faster channels-last on the CPU
        tiny = tiny.to(memory_format=torch.channels_last)
    return tiny


def _read_max_noise_level(source: str) -> int:
    index = Path(source) / "model_index.json"
    if index.exists():
        import json

        return int(json.loads(index.read_text()).get("max_noise_level", 350))
    return 350


def _load_denoiser(source: str, device, dtype) -> Denoiser:
    from diffusers import DDPMScheduler, UNet2DModel

    unet = _from_pretrained(UNet2DModel, source, "unet", dtype).to(device).eval().requires_grad_(False)
    return Denoiser(unet=unet, scheduler=_from_pretrained(DDPMScheduler, source, "scheduler", None))
