"""The engine and text-to-image task on a tiny random model: seeds, callbacks, samplers, cancellation, metadata."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffdemo.engine import SAMPLERS, Cancelled
from diffdemo.tasks import InvalidRequest, TextToImageRequest, text_to_image
from diffdemo.tasks.common import save_png
from helpers import pixels

PROMPT = "a large red circle on a blue background"


def generate(models, callback=None, **fields):
    fields = {"prompt": PROMPT, "steps": 3, "seed": 1234, **fields}
    return text_to_image(models, TextToImageRequest(**fields), callback)


def assert_nearly_same(a, b, max_diff: int = 2, max_fraction: float = 0.01):
    """Same picture up to float rounding: a batch of 2 runs different CPU kernels than a batch of 1."""
    diff = np.abs(pixels(a).astype(int) - pixels(b).astype(int))
    assert diff.max() <= max_diff, f"max pixel difference {diff.max()}"
    assert (diff > 0).mean() <= max_fraction, f"{(diff > 0).mean():.1%} of values differ"


def test_same_seed_reproduces_bit_for_bit(tiny_models):
    first = generate(tiny_models, seed=42)
    second = generate(tiny_models, seed=42)
    assert first.metadata["seeds"] == second.metadata["seeds"] == [42]
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0]))


def test_different_seeds_differ(tiny_models):
    a = pixels(generate(tiny_models, seed=1).images[0])
    b = pixels(generate(tiny_models, seed=2).images[0])
    assert not np.array_equal(a, b)


def test_native_size_is_default(tiny_models):
    assert tiny_models.native_size == 64
    image = generate(tiny_models, steps=1).images[0]
    assert image.size == (64, 64)


def test_step_callback_reports_every_step(tiny_models):
    steps = []
    generate(tiny_models, steps=4, num_images=2, width=64, height=32, callback=steps.append)
    assert [s.index for s in steps] == [0, 1, 2, 3]
    assert all(s.total == 4 for s in steps)
    # B×4×h×w latents, h = height / 8, w = width / 8
    for s in steps:
        assert tuple(s.latents.shape) == (2, 4, 4, 8)
        assert tuple(s.x0_pred.shape) == tuple(s.latents.shape)
        assert torch.isfinite(s.x0_pred).all()
    timesteps = [s.timestep for s in steps]
    assert timesteps == sorted(timesteps, reverse=True) and len(set(timesteps)) == 4
    alpha_bars = [s.alpha_bar for s in steps]
    assert alpha_bars == sorted(alpha_bars) and all(0 <= a <= 1 for a in alpha_bars)
    for s in steps[1:]:  # sigma is the noise-to-signal ratio of alpha_bar
        assert s.sigma == pytest.approx(((1 - s.alpha_bar) / s.alpha_bar) ** 0.5)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_runs(tiny_models, sampler):
    steps = []
    result = generate(tiny_models, sampler=sampler, steps=2, width=48, height=32, callback=steps.append)
    assert len(result.images) == 1
    assert result.images[0].size == (48, 32)
    assert result.metadata["sampler"] == sampler
    assert [s.index for s in steps] == [0, 1]
    assert all(tuple(s.x0_pred.shape) == (1, 4, 4, 6) for s in steps)
    assert all(torch.isfinite(s.latents).all() for s in steps)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_is_reproducible(tiny_models, sampler):
    a = generate(tiny_models, sampler=sampler, steps=2, seed=7).images[0]
    b = generate(tiny_models, sampler=sampler, steps=2, seed=7).images[0]
    assert np.array_equal(pixels(a), pixels(b))


def test_cancel_stops_after_that_step_and_propagates(tiny_models):
    seen = []

    def callback(step):
        seen.append(step.index)
        if step.index == 1:
            raise Cancelled()

    with pytest.raises(Cancelled):
        generate(tiny_models, steps=6, callback=callback)
    assert seen == [0, 1]


def test_batch_uses_consecutive_seeds(tiny_models):
    batch = generate(tiny_models, seed=100, num_images=2)
    assert len(batch.images) == 2
    assert batch.metadata["seeds"] == [100, 101]
    assert batch.metadata["seed"] == 100
    assert not np.array_equal(pixels(batch.images[0]), pixels(batch.images[1]))
    single = generate(tiny_models, seed=101, num_images=1)
    assert_nearly_same(batch.images[1], single.images[0])
    first = generate(tiny_models, seed=100, num_images=1)
    assert_nearly_same(batch.images[0], first.images[0])
    assert "Seed: 100," in batch.images[0].info["parameters"]
    assert "Seed: 101," in batch.images[1].info["parameters"]


@pytest.mark.parametrize("sampler", ["Euler a", "DDPM"])
def test_batch_image_reproducible_alone_with_stochastic_sampler(tiny_models, sampler):
    """Image i of a batch claims seed+i (metadata and PNG text); a single run with that seed must match it."""
    batch = generate(tiny_models, sampler=sampler, seed=100, num_images=2)
    single = generate(tiny_models, sampler=sampler, seed=101, num_images=1)
    assert_nearly_same(batch.images[1], single.images[0])


@pytest.mark.parametrize("side", ["width", "height"])
@pytest.mark.parametrize("value", [100, 60, 36])
def test_size_not_multiple_of_8_is_rejected(tiny_models, side, value):
    with pytest.raises(InvalidRequest, match="multiple of 8") as error:
        generate(tiny_models, **{side: value})
    message = str(error.value)
    assert side in message.lower()
    suggestion = int(message.rsplit("try ", 1)[1].rstrip(").").strip())
    assert suggestion % 8 == 0 and abs(suggestion - value) <= 4


def test_pipeline_shares_modules(tiny_models):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    pipe = tiny_models.pipeline()
    assert type(pipe) is StableDiffusionPipeline
    img2img = tiny_models.pipeline(StableDiffusionImg2ImgPipeline)
    assert type(img2img) is StableDiffusionImg2ImgPipeline
    for p in (pipe, img2img):
        assert p.unet is tiny_models.unet
        assert p.vae is tiny_models.vae
        assert p.text_encoder is tiny_models.text_encoder
        assert p.tokenizer is tiny_models.tokenizer
        # the same storage, not a copy with equal values
        for name in ("unet", "vae", "text_encoder"):
            ours = next(getattr(tiny_models, name).parameters())
            theirs = next(getattr(p, name).parameters())
            assert ours.data_ptr() == theirs.data_ptr()


def test_shared_pipeline_generates(tiny_models):
    from PIL import Image

    pipe = tiny_models.pipeline()
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, num_inference_steps=1, guidance_scale=2.0, height=64, width=64,
               generator=torch.Generator().manual_seed(0)).images[0]
    assert out.size == (64, 64)
    from diffusers import StableDiffusionImg2ImgPipeline

    img2img = tiny_models.pipeline(StableDiffusionImg2ImgPipeline)
    img2img.set_progress_bar_config(disable=True)
    out = img2img(PROMPT, image=Image.new("RGB", (64, 64), (220, 40, 40)), strength=0.5, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(0)).images[0]
    assert out.size == (64, 64)


def test_metadata_and_png_parameters(tiny_models, tmp_path):
    result = generate(tiny_models, seed=987, steps=2, sampler="Euler", guidance_scale=3.5)
    meta = result.metadata
    for key in ("seed", "steps", "sampler", "model", "versions", "device", "dtype"):
        assert key in meta, key
    assert meta["seed"] == 987 and meta["steps"] == 2 and meta["sampler"] == "Euler"
    assert meta["model"] == tiny_models.name
    assert meta["device"] == "cpu" and meta["dtype"] == "float32"
    assert {"diffusers", "transformers", "torch"} <= set(meta["versions"])
    json.dumps(meta)  # JSON-able
    params = result.images[0].info["parameters"]
    assert params.splitlines()[0] == PROMPT
    assert "Seed: 987" in params and "Steps: 2" in params and "Sampler: Euler" in params
    assert "Size: 64x64" in params

    from PIL import Image

    path = save_png(result.images[0], tmp_path / "out.png", meta)
    with Image.open(path) as reloaded:
        assert reloaded.info["parameters"] == params
        assert json.loads(reloaded.info["diffdemo"])["seed"] == 987
        assert np.array_equal(pixels(reloaded), pixels(result.images[0]))


def test_random_seed_is_recorded_and_reproduces(tiny_models):
    first = generate(tiny_models, seed=-1, steps=1)
    seed = first.metadata["seed"]
    assert isinstance(seed, int) and 0 <= seed <= 2**32 - 1
    again = generate(tiny_models, seed=seed, steps=1)
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))


def test_long_prompt_is_reported_truncated(tiny_models):
    prompt = " ".join(["a large red circle on a blue background"] * 6)
    result = generate(tiny_models, prompt=prompt, steps=1)
    assert "truncated" in result.metadata
    assert "background" in result.metadata["truncated"]
    assert "truncated" not in generate(tiny_models, steps=1).metadata
