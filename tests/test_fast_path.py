"""The opt-in fast path: each option keeps pictures within tolerance of the plain path, off changes nothing."""
from __future__ import annotations

import math

import helpers
import numpy as np
import pytest
import torch

from diffdemo.engine import load_models
from diffdemo.engine.fast import MIN_VAE_TILE, FastPath, apply_fast_path, compile_settings, warm_up
from diffdemo.engine.step_cache import StepCachedUNet
from diffdemo.engine.sampling import Step, make_scheduler, throttled
from diffdemo.tasks import TextToImageRequest, text_to_image
from helpers import psnr

PROMPT = "a large red star on a blue background"


def generate(models, callback=None, **fields):
    fields = {"prompt": PROMPT, "steps": 3, "seed": 21, **fields}
    return text_to_image(models, TextToImageRequest(**fields), callback)


def pixels(result) -> np.ndarray:
    return helpers.pixels(result, np.int16)  # signed: the tests subtract pictures


@pytest.fixture(scope="module")
def plain(tiny_models):
    return generate(tiny_models)


def fresh(tiny_model_dir, **options):
    """A separate copy of the tiny model set: layout, fusing and tiling change modules in place."""
    return load_models(str(tiny_model_dir), device="cpu", fast=FastPath(**options))


def test_all_off_returns_the_same_set_and_pictures(tiny_models, tiny_model_dir, plain):
    assert apply_fast_path(tiny_models, FastPath()) is tiny_models
    assert FastPath().is_off and FastPath().describe() == {}
    again = load_models(str(tiny_model_dir), device="cpu", fast=FastPath())
    assert np.array_equal(pixels(generate(again)), pixels(plain))


def test_callbacks_do_not_change_the_picture(tiny_models, plain):
    steps: list[Step] = []
    result = generate(tiny_models, steps.append)
    assert np.array_equal(pixels(result), pixels(plain))
    scheduler = make_scheduler("DDIM", tiny_models.scheduler.config)
    scheduler.set_timesteps(3)
    assert [s.timestep for s in steps] == [int(t) for t in scheduler.timesteps]
    assert [s.alpha_bar for s in steps] == [float(scheduler.alphas_cumprod[int(t)]) for t in scheduler.timesteps]


@pytest.mark.parametrize("option", ["channels_last", "fuse_qkv"])
def test_exact_options_stay_within_rounding(tiny_model_dir, plain, option):
    models = fresh(tiny_model_dir, **{option: True})
    assert models.extras["fast_path"].describe() == {option: True}
    diff = np.abs(pixels(generate(models)) - pixels(plain))
    assert diff.max() <= 2, f"{option}: max pixel difference {diff.max()}"


def test_fused_qkv_is_applied_once(tiny_model_dir):
    models = fresh(tiny_model_dir, fuse_qkv=True)
    attention = [m for m in models.unet.modules() if hasattr(m, "to_qkv") or hasattr(m, "to_kv")]
    assert attention and all(getattr(m, "fused_projections", False) for m in attention)
    for m in attention:  # the separate q/k/v layers are slices of the fused matrix: no second copy
        fused = m.to_qkv if hasattr(m, "to_qkv") else m.to_kv
        assert m.to_k.weight.untyped_storage().data_ptr() == fused.weight.untyped_storage().data_ptr()
    before = {id(m.to_qkv) for m in models.unet.modules() if hasattr(m, "to_qkv")}
    apply_fast_path(models, FastPath(fuse_qkv=True))
    assert {id(m.to_qkv) for m in models.unet.modules() if hasattr(m, "to_qkv")} == before


def test_vae_tiling_only_tiles_outputs_wider_than_the_minimum_tile(tiny_model_dir, tiny_models, plain,
                                                                  monkeypatch):
    models = fresh(tiny_model_dir, vae_tiling=True, vae_slicing=True)
    assert models.vae.use_tiling and models.vae.use_slicing
    assert models.vae.tile_sample_min_size == MIN_VAE_TILE and models.vae.tile_latent_min_size == MIN_VAE_TILE // 8
    tiled = []
    monkeypatch.setattr(models.vae, "tiled_decode",
                        lambda *a, _decode=models.vae.tiled_decode, **k: tiled.append(1) or _decode(*a, **k))
    assert np.array_equal(pixels(generate(models)), pixels(plain))  # at the VAE's own size: no tiles
    # above the tiny VAE's 64-px sample size but below the minimum tile: decoded whole, so nothing changes
    # (64-px tiles of flat colour would each normalise to their own statistics and blotch)
    medium = dict(width=160, height=128)
    assert np.array_equal(pixels(generate(models, **medium)), pixels(generate(tiny_models, **medium)))
    assert not tiled
    wide = generate(models, width=MIN_VAE_TILE + 64, height=64)
    assert wide.images[0].size == (MIN_VAE_TILE + 64, 64) and tiled == [1]


def test_step_cache_full_call_is_the_unet(tiny_models):
    wrapped = StepCachedUNet(tiny_models.unet, 2)
    sample, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor(500)
    embeddings = torch.randn(2, tiny_models.tokenizer.model_max_length, tiny_models.unet.config.cross_attention_dim)
    with torch.inference_mode():
        expected = tiny_models.unet(sample, t, encoder_hidden_states=embeddings).sample
        assert torch.equal(wrapped(sample, t, embeddings).sample, expected)
        # a latent side that is not a multiple of 2**levels: the upsample sizes are passed on, as diffusers does
        odd = torch.randn(1, 4, 7, 9)
        assert torch.equal(wrapped(odd, t, embeddings[:1]).sample,
                           tiny_models.unet(odd, t, encoder_hidden_states=embeddings[:1]).sample)
    assert wrapped.config is tiny_models.unet.config and wrapped.base is tiny_models.unet


def test_step_cache_covers_class_labels(tiny_models):
    unet = tiny_models.upscaler.unet  # x4-upscaler layout: noise level as class label, image as extra channels
    wrapped = StepCachedUNet(unet, 2)
    sample = torch.randn(1, unet.config.in_channels, 16, 16, generator=torch.Generator().manual_seed(1))
    embeddings, labels = torch.zeros(1, 1, unet.config.cross_attention_dim), torch.tensor([20])
    with torch.inference_mode():
        expected = unet(sample, torch.tensor(300), encoder_hidden_states=embeddings, class_labels=labels).sample
        assert torch.equal(wrapped(sample, torch.tensor(300), embeddings, labels).sample, expected)


def test_step_cache_runs_the_deep_part_every_nth_step(embedded_models):
    models = apply_fast_path(embedded_models, FastPath(step_cache=3))
    assert models.unet is not embedded_models.unet and models.vae is embedded_models.vae
    runs = []
    original = models.unet.new_run
    models.unet.new_run = lambda: runs.append(original()) or runs[-1]
    generate(models, steps=7)
    assert len(runs) == 1 and runs[0].calls == 7 and runs[0].full_calls == 3  # steps 0, 3, 6


@pytest.fixture(scope="module")
def embedded_full_and_cached(embedded_models):
    request = {"steps": 12, "seed": 5}
    return generate(embedded_models, **request), generate(apply_fast_path(embedded_models, FastPath(step_cache=2)),
                                                          **request)


def test_step_cache_changes_the_picture_a_little(embedded_full_and_cached):
    full, cached = embedded_full_and_cached
    value = psnr(pixels(full), pixels(cached))
    assert 22 < value < math.inf, f"PSNR {value:.1f} dB"


def test_step_cache_runs_do_not_share_features(embedded_models):
    first = apply_fast_path(embedded_models, FastPath(step_cache=2))
    generate(first, prompt="a small green circle in the top left corner", steps=5)
    after_other_run = generate(first, steps=5)
    alone = generate(apply_fast_path(embedded_models, FastPath(step_cache=2)), steps=5)
    assert np.array_equal(pixels(after_other_run), pixels(alone))


def test_step_cache_rejects_other_models(embedded_models):
    with pytest.raises(ValueError, match="Step caching supports diffusers' UNet2DConditionModel; got UNet2DModel"):
        StepCachedUNet(embedded_models.denoiser.unet, 2)


def test_parse_presets_and_items():
    assert FastPath.parse("") == FastPath()
    assert FastPath.parse("exact,step_cache=2") == FastPath(channels_last=True, fuse_qkv=True, step_cache=2)
    assert FastPath.parse("exact,vae_tiling").vae_tiling and not FastPath.parse("static").vae_tiling
    assert FastPath.parse("static").compile == "max-autotune" and FastPath.parse("static").static_shapes
    assert FastPath.parse("exact, channels-last=off").channels_last is False
    with pytest.raises(ValueError, match="Unknown fast-path option 'turbo'"):
        FastPath.parse("turbo")
    with pytest.raises(ValueError, match="'step_cache' takes a whole number; got 'two'"):
        FastPath.parse("step_cache=two")
    with pytest.raises(ValueError, match="Unknown compile mode"):
        FastPath(compile="fastest")


def test_compile_modes_and_zero_gpu(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert compile_settings(FastPath()) is None
    assert compile_settings(FastPath(compile="default")) == {"mode": "default", "dynamic": None}
    assert compile_settings(FastPath(compile="default", static_shapes=True))["mode"] == "reduce-overhead"
    assert compile_settings(FastPath(compile="max-autotune")) == {"mode": "max-autotune-no-cudagraphs",
                                                                   "dynamic": None}
    assert compile_settings(FastPath(compile="max-autotune", static_shapes=True)) == {"mode": "max-autotune",
                                                                                       "dynamic": False}
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert compile_settings(FastPath(compile="max-autotune", static_shapes=True)) is None


def test_warm_up_runs_one_shape(tiny_models):
    seconds = warm_up(apply_fast_path(tiny_models, FastPath(step_cache=2)), 64, 64, batch=2)
    assert 0 < seconds < 60


def test_throttled_previews_keep_the_last_step():
    seen = []
    callback = throttled(lambda step: seen.append(step.index), seconds=3600)
    for index in range(5):
        callback(Step(index=index, total=5, timestep=0, sigma=0.0, alpha_bar=1.0, latents=None, x0_pred=None))
    assert seen == [0, 4]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["DDIM", "Euler"])
def test_a_request_after_warm_up_needs_no_new_graph(tiny_model_dir, sampler):
    """warm_up exists to pay torch.compile before the first request; a compiled graph guards on the kind and the
    strides of every input tensor, so warm-up and every task must hand the U-Net the same kinds of tensors."""
    import torch._dynamo

    from diffdemo.tasks import InpaintRequest, inpaint

    models = fresh(tiny_model_dir)
    torch._dynamo.reset()
    models.unet.compile(backend="eager")  # dynamo's guards and recompiles without inductor's code generation
    try:
        warm_up(models, 64, 64)
        with torch._dynamo.config.patch(error_on_recompile=True):
            generate(models, sampler=sampler)
            generate(models, sampler=sampler, negative_prompt="blue")
            image, mask = np.full((64, 64, 3), 128, np.uint8), np.full((64, 64), 255, np.uint8)
            inpaint(models, InpaintRequest(image=image, mask=mask, prompt=PROMPT, steps=2, sampler=sampler, seed=1))
    finally:
        torch._dynamo.reset()
