"""Switching models while the app runs (--models-dir): one model set at a time, the previous one freed, a menu and
the /list_models and /select_model endpoints."""
from __future__ import annotations

import gc

import psutil
import pytest
import torch
from checkpoints import save_pipeline, to_original, write_checkpoint
from test_loading import assert_one_sentence

from diffdemo.engine import ModelLoadError, load_models
from diffdemo.engine.switching import ModelSwitcher, scan_models

SWITCHES = 3


@pytest.fixture(scope="module")
def models_dir(tiny_components, tmp_path_factory):
    """Two models of about 120 MB of weights each (a folder and a one-file checkpoint), so that one not freed
    shows in the RSS, plus a LoRA-like file that must not be listed."""
    from diffusers import UNet2DConditionModel

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    wide = UNet2DConditionModel.from_config({**tiny_components["unet"].config,
                                             "block_out_channels": (192, 384, 384), "layers_per_block": 2})
    assert sum(p.numel() for p in wide.parameters()) * 4 > 100e6
    components = {**tiny_components, "unet": wide.eval()}
    save_pipeline(components, folder / "wide-folder")
    write_checkpoint(to_original(components, "sd1"), folder / "wide-file.safetensors")
    write_checkpoint({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, folder / "a-lora.safetensors")
    return folder


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def test_folder_lists_models_only(models_dir):
    assert list(scan_models(models_dir)) == ["wide-file.safetensors", "wide-folder"]


@pytest.mark.slow
def test_switching_back_and_forth_frees_the_previous_model(models_dir):
    config = str(models_dir / "wide-folder")
    first = load_models(config, device="cpu")
    switcher = ModelSwitcher(folder=models_dir, current=first, current_name="wide-folder",
                             current_path=models_dir / "wide-folder", options={"device": "cpu", "config": config})
    del first
    after_first_load = rss()
    for _ in range(SWITCHES):
        assert switcher.switch("wide-file.safetensors").family == "sd1"
        assert switcher.switch("wide-folder").name == config
    after_switches = rss()
    print(f"RSS after the first load {after_first_load / 2**20:.0f} MiB, after {SWITCHES} switches back and forth "
          f"{after_switches / 2**20:.0f} MiB")
    assert after_switches <= 1.10 * after_first_load


def test_unknown_or_broken_model_keeps_the_current_one(models_dir, tmp_path):
    current = load_models(str(models_dir / "wide-folder"), device="cpu")
    switcher = ModelSwitcher(folder=models_dir, current=current, current_name="wide-folder",
                             current_path=models_dir / "wide-folder", options={"device": "cpu"})
    del current
    with pytest.raises(ModelLoadError) as error:
        switcher.switch("nobody")
    assert "available: wide-file.safetensors, wide-folder" in str(error.value)
    assert_one_sentence(str(error.value))
    (models_dir / "broken").mkdir(exist_ok=True)
    (models_dir / "broken" / "model_index.json").write_text("{}")
    try:
        with pytest.raises(ModelLoadError, match="still running wide-folder"):
            switcher.switch("broken")
        assert switcher.current_name == "wide-folder" and switcher.current.unet is not None
    finally:
        (models_dir / "broken" / "model_index.json").unlink()
        (models_dir / "broken").rmdir()


@pytest.mark.slow
def test_menu_and_api_switch_the_live_app(tiny_model_dir, tiny_sd1_file, tmp_path):
    import shutil

    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from helpers import free_port
    from diffdemo.ui.app import build_demo, configure_queue
    from diffdemo.ui.limits import install_limits
    from fast_app import local_limits, speeds

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copytree(tiny_model_dir, folder / "tiny")
    shutil.copy(tiny_sd1_file, folder / "tiny.safetensors")
    options = {"device": "cpu", "config": str(tiny_model_dir)}
    models = load_models(str(folder / "tiny"), device="cpu")
    switcher = ModelSwitcher(folder=folder, current=models, current_name="tiny", current_path=folder / "tiny",
                             options=options)
    demo = configure_queue(build_demo(models, output_dir=tmp_path / "out", switcher=switcher))
    extra = install_limits(demo, local_limits(), speeds())  # as app.py: requests are priced per model
    del models
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True, **extra)
    priced = demo.pricing.speeds
    try:
        client = Client(url, verbose=False)
        assert client.predict(api_name="/list_models") == {"models": ["tiny", "tiny.safetensors"], "current": "tiny"}
        assert "tiny.safetensors" in client.predict(name="tiny.safetensors", api_name="/select_model")
        assert demo.runner.models.source == "SD 1.x single file"
        assert demo.pricing.speeds is not priced  # the new model was timed
        images, metadata, _ = client.predict(prompt="a red circle", steps=2, seed=1, api_name="/text_to_image")
        assert metadata["model"].endswith("tiny.safetensors")
        with pytest.raises(AppError, match="no model named 'nobody'"):
            client.predict(name="nobody", api_name="/select_model")
        assert client.predict(api_name="/list_models")["current"] == "tiny.safetensors"
    finally:
        demo.close()
