"""Every layout a user may have, built from tiny configs, makes a picture in text to image and in inpainting: the
one-file SDXL, SD 2.x and 9-channel inpainting checkpoints, a folder of fp16 variant files, a swapped-in VAE."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from checkpoints import (inpainting_unet, save_pipeline, sd2_components, to_original, vae_to_original,
                         write_checkpoint)

from diffdemo.engine import load_models
from diffdemo.tasks import InpaintRequest, TextToImageRequest, inpaint, text_to_image


def layout(kind: str, request, folder):
    """(model path, load_models keywords) of one layout, written under ``folder``."""
    get = request.getfixturevalue
    sd1, config = get("tiny_components"), str(get("tiny_model_dir"))
    if kind == "sdxl file":
        state, config = to_original(get("tiny_sdxl_components"), "sdxl"), str(get("tiny_sdxl_dir"))
        return write_checkpoint(state, folder / "xl.safetensors", dtype=torch.float16), {"config": config}
    if kind == "sd2 file":
        components = sd2_components(sd1)
        return write_checkpoint(to_original(components, "sd2"), folder / "sd2.ckpt"), {
            "config": str(save_pipeline(components, folder / "sd2"))}
    if kind == "inpainting file":
        state = to_original({**sd1, "unet": inpainting_unet(sd1["unet"])}, "sd1")
        return write_checkpoint(state, folder / "inpainting.safetensors"), {"config": config}
    if kind == "fp16 variant folder":
        return save_pipeline(sd1, folder / "variant", variant="fp16"), {}
    vae = {k.removeprefix("first_stage_model."): v for k, v in
           vae_to_original(sd1["vae"].state_dict(), sd1["vae"].config).items()}
    return config, {"vae": str(write_checkpoint(vae, folder / "vae.safetensors"))}


@pytest.mark.parametrize("kind", ["sdxl file", "sd2 file", "inpainting file", "fp16 variant folder", "vae file"])
def test_text_to_image_and_inpainting_run_on_every_layout(kind, request, tmp_path):
    path, options = layout(kind, request, tmp_path)
    models = load_models(str(path), device="cpu", **options)
    made = np.asarray(text_to_image(models, TextToImageRequest(prompt="a red circle", steps=2, seed=3)).images[0])
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    painted = inpaint(models, InpaintRequest(image=made, mask=mask, prompt="a blue star", steps=2, seed=1))
    assert made.shape == np.asarray(painted.images[0]).shape == (64, 64, 3) and made.std() > 0
    assert (models.unet.config.in_channels == 9) == (kind == "inpainting file")
