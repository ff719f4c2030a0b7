"""Stage ``assemble``: pipeline folders (``model_index.json``) that plain diffusers loads, weights in fp16.

Writes whichever of ``out/model``, ``out/upscaler``, ``out/denoiser`` and ``out/tiny_vae`` earlier stages made.
The text encoder and tokenizer the upscaler folder carries (diffusers' layout wants them) come from
``out/model``, or from ``cfg.init_from`` when this run did not train them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from diffdemo.world import models
from diffdemo.world.training import TrainConfig


def run(cfg: TrainConfig, out: Path, device, dtype=torch.float16) -> dict:
    from diffusers import AutoencoderTiny

    main, up, den = out / "model", out / "upscaler", out / "denoiser"
    written = {}
    if (main / "unet").exists():
        _text_to_image(main, dtype)
        written["model"] = str(main)
    if (up / "unet").exists():
        _upscaler(up, _text_folder(cfg, out), dtype)
        written["upscaler"] = str(up)
    if (den / "unet").exists():
        _denoiser(den, dtype)
        written["denoiser"] = str(den)
    if (out / "tiny_vae").exists():
        AutoencoderTiny.from_pretrained(out / "tiny_vae").to(dtype=dtype).save_pretrained(out / "tiny_vae")
        config = out / "tiny_vae" / "config.json"  # diffusers writes this key, then warns about it when loading
        config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items()
                                      if k != "block_out_channels"}, indent=2, sort_keys=True) + "\n")
        written["tiny_vae"] = str(out / "tiny_vae")
    for config in out.glob("*/text_encoder/config.json"):
        # stored in fp16, but load as fp32 unless asked otherwise, like the diffusers models beside it
        config.write_text(config.read_text().replace('"dtype": "float16"', '"dtype": "float32"'))
    return written


def _text_folder(cfg: TrainConfig, out: Path) -> Path:
    """Where the tokenizer and text encoder come from: this run's model folder, else the one fine-tuned."""
    if (out / "model" / "text_encoder").exists():
        return out / "model"
    for candidate in (Path(cfg.init_from) / "model", Path(cfg.init_from) / "upscaler"):
        if cfg.init_from and (candidate / "text_encoder").exists():
            return candidate
    raise FileNotFoundError(f"assemble: no text encoder in {out / 'model'} (train it, or pass --init-from)")


def _text_to_image(main: Path, dtype) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(main / "vae"), text_encoder=CLIPTextModel.from_pretrained(
            main / "text_encoder"), tokenizer=CLIPTokenizer.from_pretrained(main / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(main / "unet"), scheduler=DDIMScheduler.from_pretrained(
            main / "scheduler"), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(dtype=dtype).save_pretrained(main)


def _upscaler(up: Path, text: Path, dtype) -> None:
    from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = StableDiffusionUpscalePipeline(
        vae=AutoencoderKL.from_pretrained(up / "vae"), text_encoder=CLIPTextModel.from_pretrained(
            text / "text_encoder", torch_dtype=torch.float32), tokenizer=CLIPTokenizer.from_pretrained(
            text / "tokenizer"), unet=UNet2DConditionModel.from_pretrained(up / "unet"),
        low_res_scheduler=DDPMScheduler.from_pretrained(up / "low_res_scheduler"),
        scheduler=DDIMScheduler.from_pretrained(up / "scheduler"), max_noise_level=models.MAX_NOISE_LEVEL)
    pipe.to(dtype=dtype).save_pretrained(up)


def _denoiser(den: Path, dtype) -> None:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    pipe = DDPMPipeline(unet=UNet2DModel.from_pretrained(den / "unet"),
                        scheduler=DDPMScheduler.from_pretrained(den / "scheduler"))
    pipe.to(dtype=dtype).save_pretrained(den)
