"""What a U-Net needs beyond x_t, t and the prompt's hidden states when it makes a picture from noise:

* SDXL: the pooled prompt and the size/crop ids (``added_cond_kwargs``).
* A 9-channel inpainting U-Net (x_t + mask + masked-image latents) run without an image, as in text to image:
  a mask of ones (repaint everything) and the latents of a mid-grey image, which is what its masked image is
  when everything is masked (AUTOMATIC1111 does the same), so every tab can use an inpainting checkpoint.
"""
from __future__ import annotations

import torch

from diffdemo.engine.images import encode_pixels


def whole_image_mask_channels(models, batch: int, height: int, width: int) -> torch.Tensor | None:
    """``B×(1+C)×h×w`` extra input channels of an inpainting U-Net asked to paint the whole picture (mask 1, the
    VAE latents of grey, i.e. 0 in [-1, 1]); None for a plain U-Net."""
    if not models.is_inpainting:
        return None
    grey = torch.zeros(1, 3, height, width, device=models.device, dtype=models.vae.dtype)
    masked = encode_pixels(models.vae, grey).to(models.dtype)
    mask = torch.ones_like(masked[:, :1])
    return torch.cat([mask, masked], dim=1).expand(batch, -1, -1, -1)


def generation_inputs(models, prompt, batch: int, height: int, width: int) -> dict:
    """Keyword arguments for :func:`~diffdemo.engine.sampling.guided` when generating ``batch`` images of
    ``height``×``width`` pixels from noise: ``added`` (SDXL) and ``extra_channels`` (inpainting U-Nets)."""
    return {"added": prompt.added_conditions(height, width),
            "extra_channels": whole_image_mask_channels(models, batch, height, width)}
