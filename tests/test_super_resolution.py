"""Super-resolution: sizes, seeds, feathered tiling, evaluate mode, the img2img fallback, bad inputs and the API."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch
from PIL import Image

from diffdemo.tasks import InvalidRequest, SuperResolutionRequest, super_resolve
from diffdemo.tasks.super_resolution import back_project, run_tiled, score, tile_starts

FAST = dict(steps=2)
RED = (220, 40, 40)  # a world colour


def world_picture(size: int, seed: int = 11) -> Image.Image:
    from diffdemo.world.render import render_scenes, to_pil
    from diffdemo.world.scene import sample_scene

    return to_pil(render_scenes([sample_scene(random.Random(seed))], size))[0]


@pytest.fixture(scope="module")
def small():
    return world_picture(64).resize((16, 16), Image.BICUBIC)


@pytest.mark.parametrize("scale", [2, 4])
def test_output_sizes(tiny_models, small, scale):
    result = super_resolve(tiny_models, SuperResolutionRequest(image=small, scale=scale, seed=1, **FAST))
    assert [im.size for im in result.images] == [(16 * scale, 16 * scale)] * 3
    assert result.metadata["size"] == f"{16 * scale}x{16 * scale}" and result.metadata["metrics"] is None


def test_odd_sizes_are_padded_then_cropped(tiny_models):
    image = np.asarray(world_picture(64).resize((21, 13)))
    result = super_resolve(tiny_models, SuperResolutionRequest(image=image, scale=4, seed=1, **FAST))
    assert result.images[0].size == (84, 52)


def test_same_seed_same_output_different_seed_differs(tiny_models, small):
    first, second, other = (super_resolve(tiny_models, SuperResolutionRequest(image=small, seed=s, **FAST)).images[0]
                            for s in (5, 5, 6))
    assert np.array_equal(np.asarray(first), np.asarray(second))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def bicubic_tile(scale):
    """A stand-in for the model: bicubic-upscales each tile, so tiled and untiled results should match."""
    def process(y, x, crop):
        return torch.nn.functional.interpolate(crop, scale_factor=scale, mode="bicubic", align_corners=False)
    return process


def test_tile_starts_cover_the_image_with_overlap():
    starts = tile_starts(96, 32, 8, 8)
    assert starts[0] == 0 and starts[-1] == 64
    assert all(b - a <= 24 for a, b in zip(starts, starts[1:]))
    assert tile_starts(32, 64, 8, 8) == [0]


def test_feathered_tiles_match_untiled_and_keep_flat_colour_flat():
    low = torch.from_numpy(np.asarray(world_picture(96), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    untiled = run_tiled(low, 4, 96, 8, 8, bicubic_tile(4))
    tiled = run_tiled(low, 4, 16, 8, 8, bicubic_tile(4))
    assert score(to_pixels(untiled), to_pixels(tiled))["psnr"] > 30
    flat = torch.tensor([0.2, -0.6, 0.4]).view(1, 3, 1, 1).expand(1, 3, 96, 96).contiguous()
    assert (run_tiled(flat, 4, 16, 8, 8, bicubic_tile(4)) - flat[:, :, :1, :1]).abs().max() < 1e-4


def to_pixels(tensor):
    return ((tensor[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


@pytest.mark.slow
def test_flat_colour_stays_flat_across_upscaler_tile_seams(embedded_models):
    flat = np.zeros((96, 96, 3), np.uint8)
    flat[:] = RED
    request = SuperResolutionRequest(image=flat, scale=4, seed=1, steps=5, tile_size=32, tile_overlap=8)
    deviation = np.abs(np.asarray(super_resolve(embedded_models, request).images[0]).astype(int) - RED).max(-1)
    seams = np.zeros(384, bool)
    for start in tile_starts(96, 32, 8, 8)[1:]:  # the overlap bands, in output pixels
        seams[start * 4:(start + 8) * 4] = True
    assert deviation.mean() < 6 and np.percentile(deviation, 99) < 20
    # seams are no worse than the rest: the blend adds no visible edge (the model's own blips are elsewhere)
    assert deviation[seams].mean() <= deviation[~seams].mean() + 2
    assert deviation[:, seams].mean() <= deviation[:, ~seams].mean() + 2


def test_evaluate_mode_scores_all_three_methods(embedded_models):
    request = SuperResolutionRequest(image=world_picture(128), scale=4, seed=0, evaluate=True)
    result = super_resolve(embedded_models, request)
    metrics = result.metadata["metrics"]
    assert set(metrics) == {"diffusion", "bicubic", "lanczos"}
    assert all(0 < m["psnr"] < 100 and 0 < m["ssim"] <= 1 for m in metrics.values())
    assert result.images[0].size == (128, 128) and result.metadata["low_res_size"] == "32x32"
    assert result.metadata["method"] == "upscaler, mean of 4 samples (half mirrored) + back-projection"
    raw = super_resolve(embedded_models, dataclasses.replace(request, consistency=False)).metadata["metrics"]
    # back-projection restores the colours and low frequencies that the upscaler's small VAE shifts
    assert raw["diffusion"]["psnr"] > 25 and metrics["diffusion"]["psnr"] > raw["diffusion"]["psnr"] + 1


@pytest.mark.slow
def test_the_mean_of_samples_beats_one_sample(embedded_models):
    """The mean of samples estimates the posterior mean, which has the least squared error: over five world
    pictures the default (4 samples of 5 steps, half mirrored) beats one 20-step sample by a clear margin."""
    gains = []
    for seed in range(5):
        request = SuperResolutionRequest(image=world_picture(128, seed=100 + seed), seed=seed, evaluate=True)
        mean = super_resolve(embedded_models, request).metadata["metrics"]["diffusion"]["psnr"]
        one = super_resolve(embedded_models, dataclasses.replace(request, samples=1, steps=20))
        gains.append(mean - one.metadata["metrics"]["diffusion"]["psnr"])
    assert np.median(gains) > 0.3


def test_averaging_samples_shrinks_seed_to_seed_variation(tiny_models, small):
    def spread(samples):
        runs = [np.asarray(super_resolve(tiny_models, SuperResolutionRequest(
            image=small, seed=seed, samples=samples, mirror=False, consistency=False, **FAST)).images[0], float)
            for seed in range(4)]
        return np.std(runs, axis=0).mean()

    assert spread(4) < 0.75 * spread(1)  # independent samples: the spread of a mean of 4 is about half


def test_mirrored_samples_are_mirrored_back(monkeypatch, tiny_models):
    """A stand-in sampler that adds a left-to-right ramp: with half the samples mirrored the ramps cancel, and the
    picture itself comes back the right way round."""
    from diffdemo.tasks import super_resolution

    def ramped_nearest(models, low_res, count, generator, request, callback):
        pixels = torch.from_numpy(low_res.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        big = torch.nn.functional.interpolate(pixels, scale_factor=4, mode="nearest")
        return big + torch.linspace(0.2, -0.2, big.shape[-1])

    monkeypatch.setattr(super_resolution, "upscaler_mean", ramped_nearest)
    low = np.asarray(world_picture(64).resize((24, 16)))
    expected = np.asarray(Image.fromarray(low).resize((96, 64), Image.NEAREST)).astype(int)
    request = SuperResolutionRequest(image=low, seed=1, samples=2, consistency=False)
    mirrored = np.asarray(super_resolve(tiny_models, request).images[0]).astype(int)
    plain = np.asarray(super_resolve(tiny_models, dataclasses.replace(request, mirror=False)).images[0]).astype(int)
    assert np.abs(mirrored - expected).max() <= 1
    assert np.abs(plain - expected).mean() > 5  # the ramp, uncancelled


def test_back_projection_makes_the_downscale_match_the_input():
    rng = np.random.default_rng(0)
    low = np.array(world_picture(128).resize((32, 32), Image.BICUBIC))
    guess = np.clip(np.asarray(Image.fromarray(low).resize((128, 128), Image.NEAREST)).astype(int)
                    + rng.integers(-30, 30, (128, 128, 3)) - 20, 0, 255).astype(np.uint8)  # noisy, too dark

    def error(image):
        down = torch.nn.functional.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(32, 32),
                                               mode="bicubic", antialias=True)
        return (down[0].permute(1, 2, 0) - torch.from_numpy(low).float()).abs().mean().item()

    fixed = back_project(guess, low)
    assert fixed.shape == guess.shape and fixed.dtype == np.uint8
    assert error(guess) > 15 and error(fixed) < error(guess) / 5  # mean error in 0–255 levels
    assert np.abs(fixed.astype(int) - guess.astype(int)).mean() < 30  # a correction, not a replacement


@pytest.mark.parametrize("scale", [2, 4])
def test_fallback_without_an_upscaler(tiny_models, small, scale):
    models = dataclasses.replace(tiny_models, upscaler=None)
    image = world_picture(64).resize((32, 32))
    result = super_resolve(models, SuperResolutionRequest(image=image, scale=scale, seed=2, **FAST))
    assert result.images[0].size == (32 * scale, 32 * scale)
    assert result.metadata["method"].startswith("img2img fallback")


@pytest.mark.parametrize("kwargs, field", [
    (dict(scale=3), "scale"), (dict(scale="4"), "scale"), (dict(steps=0), "steps"),
    (dict(noise_level=-1), "noise_level"), (dict(seed=-5), "Seed"), (dict(tile_size=8), "tile_size"),
    (dict(samples=0), "samples"), (dict(samples=17), "samples"), (dict(samples=2.5), "samples"),
    (dict(image=np.zeros((7, 40, 3), np.uint8)), "8 pixels"),
    (dict(image=np.zeros((520, 520, 3), np.uint8)), "output"),
    (dict(image=np.zeros((30, 30, 3), np.uint8), evaluate=True), "evaluate mode"),
    (dict(image=None), "image"), (dict(image=b"not a picture"), "image"),
])
def test_bad_inputs_name_the_field(tiny_models, kwargs, field):
    request = SuperResolutionRequest(**{"image": np.zeros((16, 16, 3), np.uint8), **kwargs})
    with pytest.raises(InvalidRequest, match=field):
        super_resolve(tiny_models, request)


def test_non_rgb_modes_are_converted(tiny_models):
    grey = Image.fromarray(np.full((16, 16), 40000, np.uint16))
    rgba = Image.new("RGBA", (16, 16), (10, 200, 30, 128))
    for image in (grey, rgba, Image.new("P", (16, 16))):
        result = super_resolve(tiny_models, SuperResolutionRequest(image=image, seed=1, **FAST))
        assert result.images[0].size == (64, 64)


def test_api_super_resolve_with_only_an_image(live_app, tmp_path):
    from gradio_client import Client, handle_file

    path = tmp_path / "small.png"
    world_picture(128).resize((32, 32), Image.BICUBIC).save(path)
    client = Client(live_app.url, verbose=False)
    try:
        diffusion, bicubic, lanczos, metadata = client.predict(image=handle_file(str(path)), api_name="/super_resolve")
    finally:
        client.close()
    for output in (diffusion, bicubic, lanczos):
        with Image.open(output) as image:
            assert image.size == (128, 128)
    assert metadata["scale"] == 4 and metadata["steps"] == 5 and metadata["noise_level"] == 20
    assert metadata["samples"] == 4 and metadata["mirror"] is True
    assert metadata["evaluate"] is False and metadata["metrics"] is None


@pytest.mark.slow
def test_evaluate_scores_the_diffusers_pipeline_and_the_task(embedded_models):
    """``python -m diffdemo.world.evaluate``'s upscaler rows: the folder through diffusers' own pipeline, and the
    task's default beside bicubic, on fresh world pictures."""
    from diffusers import StableDiffusionUpscalePipeline

    from diffdemo.engine.loading import EMBEDDED_UPSCALER
    from diffdemo.world.evaluate import upscaler_gain

    pipeline = StableDiffusionUpscalePipeline.from_pretrained(EMBEDDED_UPSCALER, torch_dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    result = upscaler_gain(pipeline, embedded_models, n=3, seed=5)
    assert result["images"] == 3 and 0 <= result["task_beats_bicubic"] <= 3
    assert 20 < result["bicubic_db"] < 60 and 20 < result["pipeline_db"] < 60
    assert result["task_db"] > result["bicubic_db"] and result["task_gain_db"] > 0
