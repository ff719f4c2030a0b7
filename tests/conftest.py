"""Shared fixtures: a tiny untrained Stable-Diffusion-layout model set built from configs, and the embedded model.

Nothing here touches the network: HF_HUB_OFFLINE is set before diffusers/transformers are imported.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Must precede the first torch import (OpenMP reads it when loaded). With the default busy-waiting workers, two
# threads on a 2-core machine that is also running anything else make small models 5-10x slower, not faster.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import random

import pytest
import torch

torch.set_num_threads(2)

pytest_plugins = ["checkpoints"]  # fixtures of tiny models in the layouts users have (SDXL, single files, ...)

TINY_IMAGE_SIZE = 64  # latent 8x8 (the VAE is 8x per side)
UPSCALER_IMAGE_SIZE = 64  # the upscaler's VAE is 4x per side; low-res inputs are 16x16


def _tiny_tokenizer():
    from transformers import CLIPTokenizer

    from diffdemo.world.scene import sample_scene

    rng = random.Random(0)
    captions = [sample_scene(rng, mention_prob=0.7).caption for _ in range(400)]
    tokenizer = CLIPTokenizer().train_new_from_iterator(captions, vocab_size=300)
    tokenizer.model_max_length = 24
    return tokenizer


@pytest.fixture(scope="session")
def tiny_components():
    """Untrained tiny modules (seeded), shared by the model folder and the upscaler folder."""
    from diffdemo.world import models

    tokenizer = _tiny_tokenizer()
    torch.manual_seed(0)
    text_encoder = models.text_encoder("tiny", tokenizer).eval()
    vae = models.vae("tiny", TINY_IMAGE_SIZE).eval()
    unet = models.unet("tiny", TINY_IMAGE_SIZE // 8, text_encoder.config.hidden_size).eval()
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, unet=unet)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_root, tiny_components):
    """A standard diffusers StableDiffusionPipeline folder with tiny random weights."""
    from diffusers import StableDiffusionPipeline

    from diffdemo.world import models

    folder = tiny_root / "model"
    pipe = StableDiffusionPipeline(**tiny_components, scheduler=models.latent_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_upscaler_dir(tiny_root, tiny_components):
    """A StableDiffusionUpscalePipeline-layout folder with tiny random weights."""
    from diffusers import DDPMScheduler, StableDiffusionUpscalePipeline

    from diffdemo.world import models

    folder = tiny_root / "upscaler"
    torch.manual_seed(1)
    vae = models.upscaler_vae("tiny", UPSCALER_IMAGE_SIZE).eval()
    vae.register_to_config(scaling_factor=models.UPSCALER_SCALING_FACTOR)
    unet = models.upscaler_unet("tiny", UPSCALER_IMAGE_SIZE // 4,
                                tiny_components["text_encoder"].config.hidden_size).eval()
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=tiny_components["text_encoder"], tokenizer=tiny_components["tokenizer"], unet=unet,
        low_res_scheduler=DDPMScheduler(**models.UPSCALER_NOISE_SCHEDULE), scheduler=models.latent_scheduler(),
        max_noise_level=models.MAX_NOISE_LEVEL)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dir, tiny_upscaler_dir):
    from diffdemo.engine import load_models

    return load_models(str(tiny_model_dir), upscaler=str(tiny_upscaler_dir), device="cpu")


@pytest.fixture(scope="session")
def embedded_models():
    from diffdemo.engine import load_models

    return load_models()  # default device: accelerate picks the CPU here (fp32)


@pytest.fixture(scope="session")
def live_app(embedded_models, tmp_path_factory):
    """The whole app with the embedded model, launched once in this process with app.py's limits; has ``url`` and
    ``port``."""
    from diffdemo.ui.app import build_demo, configure_queue
    from diffdemo.ui.limits import install_limits
    from fast_app import local_limits, speeds
    from helpers import free_port

    demo = configure_queue(build_demo(embedded_models, output_dir=tmp_path_factory.mktemp("outputs")))
    extra = install_limits(demo, local_limits(), speeds())
    port = free_port()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=port, quiet=True, **extra)
    try:
        yield SimpleNamespace(url=url, port=port, demo=demo)
    finally:
        demo.close()


@pytest.fixture(scope="session")
def fast_live_app(tiny_models, embedded_models, tmp_path_factory):
    """The whole app on the fast model set (tiny models, the embedded pixel denoiser), launched once for the files
    that only call it; files that wrap its tasks (test_concurrency.py) or change its limits launch their own."""
    from fast_app import fast_model_set, launched

    with launched(fast_model_set(tiny_models, embedded_models), tmp_path_factory.mktemp("outputs")) as live:
        yield live
