"""The tiny VAE (TAESD layout): loading, its decode mode in trajectories and previews, and clear errors without it."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffdemo.engine import ModelLoadError, load_models
from diffdemo.tasks import InvalidRequest
from diffdemo.tasks.compare import CompareRequest, compare
from diffdemo.tasks.trajectory import TrajectoryRequest, frame, preview, trajectory
from diffdemo.ui.trajectory_tab import decode_modes

PROMPT = "a large red star on a blue background"


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    from diffdemo.world import models

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_vae") / "tiny_vae"
    models.tiny_vae("tiny").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def with_tiny(tiny_model_dir, tiny_vae_dir):
    return load_models(str(tiny_model_dir), tiny_vae=str(tiny_vae_dir), device="cpu")


def test_a_folder_loads_next_to_the_model(with_tiny, tiny_models):
    from diffusers import AutoencoderTiny

    assert isinstance(with_tiny.tiny_vae, AutoencoderTiny) and tiny_models.tiny_vae is None
    assert with_tiny.tiny_vae.decoder.layers[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert decode_modes(with_tiny) == ["vae", "tiny", "fast"] and decode_modes(tiny_models) == ["vae", "fast"]


def test_tiny_decode_mode_draws_every_frame(with_tiny):
    seen = []
    result = trajectory(with_tiny, TrajectoryRequest(prompt=PROMPT, steps=5, seed=3, decode="tiny"),
                        lambda step: seen.append(preview(with_tiny, step, "tiny")))
    run = result.run
    assert result.metadata["decode"] == "tiny" and len(result.images) == len(run) == 5
    assert {image.size for image in result.images} == {(64, 64)} and len(seen) == 5
    assert {frame(run, i, "x_t").size for i in range(5)} == {(64, 64)}
    # the tiny decoder really decodes: its frame is what the module gives for that latent
    with torch.no_grad():
        direct = with_tiny.tiny_vae.decode(run.x0[2:3].float()).sample.clamp(-1, 1)
    expected = ((direct[0].permute(1, 2, 0) + 1) * 127.5).round().numpy()
    assert np.abs(np.asarray(result.images[2], dtype=np.float64) - expected).max() <= 1


def test_tiny_frames_differ_from_vae_frames(with_tiny):
    settings = dict(prompt=PROMPT, steps=3, seed=3)
    tiny = trajectory(with_tiny, TrajectoryRequest(**settings, decode="tiny")).images[-1]
    exact = trajectory(with_tiny, TrajectoryRequest(**settings, decode="vae")).images[-1]
    assert tiny.size == exact.size and np.asarray(tiny).tobytes() != np.asarray(exact).tobytes()


def test_without_a_tiny_vae_the_mode_says_how_to_get_one(tiny_models):
    for request in (lambda: trajectory(tiny_models, TrajectoryRequest(prompt=PROMPT, steps=2, decode="tiny")),
                    lambda: compare(tiny_models, CompareRequest(prompt=PROMPT, variants="steps=2\nsteps=3",
                                                                decode="tiny"))):
        with pytest.raises(InvalidRequest, match="no tiny VAE.*--tiny-vae"):
            request()


def test_bad_tiny_vae_sources_are_one_sentence(tiny_model_dir, tmp_path):
    from diffdemo.world import models

    with pytest.raises(ModelLoadError, match="tiny VAE folder .*missing does not exist"):
        load_models(str(tiny_model_dir), tiny_vae=str(tmp_path / "missing"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="Could not load a tiny VAE"):
        load_models(str(tiny_model_dir), tiny_vae=str(tmp_path / "empty"), device="cpu")
    wrong = tmp_path / "three_levels"
    models.tiny_vae("tiny", levels=3).save_pretrained(wrong)  # 4× per side; the model's VAE is 8×
    with pytest.raises(ModelLoadError, match="does not fit this model's latents"):
        load_models(str(tiny_model_dir), tiny_vae=str(wrong), device="cpu")


def test_embedded_tiny_vae_follows_the_vae(embedded_models):
    """The shipped tiny VAE was distilled from the VAE: on a finished image's latents it agrees closely."""
    assert embedded_models.tiny_vae is not None
    result = trajectory(embedded_models, TrajectoryRequest(prompt=PROMPT, steps=25, seed=5, decode="tiny"))
    run = result.run
    tiny = np.asarray(result.images[-1], dtype=np.float64)
    exact = np.asarray(run.image, dtype=np.float64)
    psnr = 10 * math.log10(255 ** 2 / np.mean((tiny - exact) ** 2))
    assert psnr > 24, psnr
    # and on an early, blurry x̂0 it still shows the background colour the VAE shows
    early_tiny = np.asarray(frame(run, 3, "x0"), dtype=np.float64).mean((0, 1))
    with torch.no_grad():
        early = embedded_models.vae.decode(run.x0[3:4].float() / embedded_models.vae.config.scaling_factor).sample
    early_exact = ((early[0].clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy().mean((0, 1))
    assert np.abs(early_tiny - early_exact).max() < 20
