"""Conversions between PIL images, pixel tensors (``B×3×H×W`` in [-1, 1]) and VAE latents."""
from __future__ import annotations

import numpy as np
import torch


def pil_to_tensor(images, device=None, dtype=torch.float32) -> torch.Tensor:
    """PIL RGB images of one size -> ``B×3×H×W`` in [-1, 1]."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    array = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1
    return tensor.to(device=device, dtype=dtype)


def tensor_to_pil(images: torch.Tensor) -> list:
    """``B×3×H×W`` in [-1, 1] -> PIL RGB images."""
    from PIL import Image

    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a) for a in array.permute(0, 2, 3, 1).cpu().numpy()]


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents ``B×4×h×w`` -> pixels ``B×3×8h×8w`` in [-1, 1] (one image at a time to bound memory)."""
    with torch.no_grad():
        scaled = latents.to(vae.dtype) / vae.config.scaling_factor
        return torch.cat([vae.decode(z[None]).sample for z in scaled]).clamp(-1, 1)


def encode_pixels(vae, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixels ``B×3×H×W`` in [-1, 1] -> scaled latents (the posterior mean; deterministic)."""
    with torch.no_grad():
        return vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode() * vae.config.scaling_factor


def initial_noise(shape, seed, device, dtype) -> torch.Tensor:
    """Gaussian noise drawn on the CPU from ``seed`` (an int or a CPU generator), so a seed gives the same
    picture on any device."""
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
