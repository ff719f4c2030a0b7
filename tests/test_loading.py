"""Loading model sets: local diffusers folders, the embedded model, and the errors users see."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch

from diffdemo.engine import ModelLoadError, load_models
from diffdemo.engine.loading import EMBEDDED_MODEL


def assert_one_sentence(message: str) -> None:
    assert message.endswith("."), message
    assert "\n" not in message, message
    # no sentence break: a full stop, then space, then a capital letter
    assert not re.search(r"[.!?]\s+[A-Z]", message), message


def test_local_folder_loads_fp32_on_cpu(tiny_models, tiny_model_dir):
    m = tiny_models
    assert m.name == str(tiny_model_dir)
    assert m.device == torch.device("cpu") and m.dtype == torch.float32
    for module in (m.text_encoder, m.vae, m.unet):
        assert next(module.parameters()).dtype == torch.float32
        assert next(module.parameters()).device.type == "cpu"
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert m.vae_scale == 8 and m.native_size == 64
    assert m.tokenizer.model_max_length == 24
    assert type(m.scheduler).__name__ == "DDIMScheduler"
    assert m.scheduler.config.prediction_type == "v_prediction"
    assert m.denoiser is None  # only the embedded model brings a denoiser


def test_local_upscaler_loads(tiny_models):
    up = tiny_models.upscaler
    assert up is not None
    assert up.unet.config.in_channels == up.vae.config.latent_channels + 3
    assert up.vae.config.scaling_factor == pytest.approx(0.08333)
    assert up.max_noise_level == 350
    assert type(up.low_res_scheduler).__name__ == "DDPMScheduler"
    assert up.vae is not tiny_models.vae  # the upscaler's VAE is its own


def test_explicit_dtype(tiny_model_dir):
    m = load_models(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert m.dtype == torch.bfloat16
    assert next(m.unet.parameters()).dtype == torch.bfloat16
    with pytest.raises(ModelLoadError, match="float16"):
        load_models(str(tiny_model_dir), device="cpu", dtype="float8")


@pytest.mark.parametrize("name", ["/nonexistent/diffdemo/model", "nobody/no-such-model"])
def test_missing_model_raises_model_load_error(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as error:
        load_models(name, device="cpu")
    message = str(error.value)
    assert name in message
    if name.startswith("/"):  # clearly a folder: saying that it does not exist is the useful answer
        assert "HF_HUB_OFFLINE" in message or "local" in message or "does not exist" in message, message
    else:
        assert "HF_HUB_OFFLINE" in message or "local" in message, message
    assert_one_sentence(message)


def test_upscaler_that_does_not_exist(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="no-such-upscaler"):
        load_models(str(tiny_model_dir), upscaler="/nonexistent/no-such-upscaler", device="cpu")


def test_main_model_is_not_an_upscaler(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="x4-upscaler"):
        load_models(str(tiny_model_dir), upscaler=str(tiny_model_dir), device="cpu")


@pytest.mark.parametrize("part", ["unet", "vae", "text_encoder"])
def test_folder_missing_a_part(tiny_model_dir, tmp_path, part):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / part)
    with pytest.raises(ModelLoadError) as error:
        load_models(str(broken), device="cpu")
    message = str(error.value)
    assert str(broken) in message
    assert part in message
    assert_one_sentence(message)


def test_folder_missing_tokenizer(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_models(str(broken), device="cpu")


def test_embedded_model(embedded_models):
    m = embedded_models
    assert m.native_size == 128
    assert m.name == "diffdemo-shapes (embedded)"
    assert m.upscaler is not None and m.denoiser is not None
    assert m.upscaler.unet.config.in_channels == m.upscaler.vae.config.latent_channels + 3 == 19  # 16 latent + image
    assert m.denoiser.unet.config.in_channels == 3
    if m.device.type == "cpu":
        assert m.dtype == torch.float32
        assert all(next(mod.parameters()).dtype == torch.float32 for mod in (m.text_encoder, m.vae, m.unet))


def test_embedded_model_loads_in_plain_diffusers():
    """The shipped folder is a standard pipeline: no code of ours, no dtype argument."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(EMBEDDED_MODEL))
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        assert module.dtype == torch.float32  # stored fp16, but loads fp32 like any SD folder
    image = pipe("a large red circle on a blue background", num_inference_steps=2, height=128, width=128,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (128, 128)
    array = np.asarray(image)
    assert array.std() > 1  # not a blank (NaN -> black) image
