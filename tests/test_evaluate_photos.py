"""Tests of the photo evaluation's rows (python -m diffdemo.world.evaluate_photos) on small world scenes."""
from __future__ import annotations

import numpy as np

from diffdemo.world.evaluate_photos import (clipped_rows, denoise_rows, inpaint_figure, inpaint_rows, linear_code_rows,
                                            patch_code, upscale_rows, upscaler_vae_rows, world_set)


def test_world_set_is_fresh_scenes_drawn_the_same_way_each_time():
    first, again = world_set(3, size=64), world_set(3, size=64)
    assert sorted(first) == ["scene00", "scene01", "scene02"]
    assert all(first[k].shape == (64, 64, 3) and first[k].dtype == np.uint8 for k in first)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["scene00"], first["scene01"])


def test_upscale_rows_score_the_tabs_default_against_bicubic_and_lanczos(embedded_models):
    result = upscale_rows(embedded_models, world_set(2))
    assert [r["image"] for r in result["rows"]] == ["scene00", "scene01"]
    assert set(result["median"]) == {"diffusion", "bicubic", "lanczos"}
    assert result["worst_gain_db"] <= result["gain_over_bicubic_db"]
    assert result["worst_gain_db"] > 0  # the built-in upscaler beats bicubic on every world scene


def test_upscaler_vae_rows_bound_the_upscale_by_its_autoencoder(embedded_models):
    """Back-projection can only pull the true latents' decode towards the low-res image: at least the raw round trip
    on flat world scenes, and the built-in autoencoder keeps their edges sharper than bicubic."""
    result = upscaler_vae_rows(embedded_models, world_set(2))
    assert [r["image"] for r in result["rows"]] == ["scene00", "scene01"]
    assert all(r["back_projected"] > r["round_trip"] - 0.5 for r in result["rows"])
    assert 20 < result["median"]["bicubic"] < 50
    assert result["ceiling_gain_over_bicubic_db"] > 0


def test_a_linear_code_of_pixel_blocks_bounds_an_autoencoder_of_that_width():
    """Fitted on other scenes: a code with more of a 4×4×3 block's 48 components keeps more detail (40 of them
    nearly all of it), and back-projection restores what too narrow a code loses in the low frequencies."""
    import torch

    scenes = world_set(4, seed=7, size=64)
    crops = torch.stack([torch.from_numpy(np.array(v)).permute(2, 0, 1).float() / 127.5 - 1 for v in scenes.values()])
    codes = {c: patch_code(crops, c) for c in (2, 8, 40)}
    assert codes[8][1].shape == (48, 8)
    result = linear_code_rows(world_set(2, size=64), codes)
    trips = [result[c]["median"]["round_trip"] for c in (2, 8, 40)]
    assert trips[0] < trips[1] < trips[2] and trips[2] > 45
    assert result[2]["median"]["back_projected"] > trips[0] + 5
    assert all(r["back_projected"] > r["round_trip"] - 0.5 for r in result[2]["rows"])


def test_denoise_rows_compare_the_diffusion_result_with_tuned_classical_methods(embedded_models):
    result = denoise_rows(embedded_models, world_set(2, size=64), sigmas=(50,))["50"]
    assert len(result["rows"]) == 2
    assert {"noisy", "denoised", "x0_hat", "nl_means", "tv"} <= set(result["median"])
    assert result["median"]["denoised"] > result["median"]["noisy"] + 10
    best = [max(r["nl_means"], r["tv"]) for r in result["rows"]]
    assert result["gain_over_best_classical_db"] == round(float(np.median(
        [r["denoised"] - b for r, b in zip(result["rows"], best)])), 2)


def test_clipped_rows_give_every_method_the_estimated_sigma(embedded_models):
    result = clipped_rows(embedded_models, world_set(2, size=64), sigma=25)
    assert len(result["rows"]) == 2
    assert all(10 < r["estimated_sigma"] < 40 for r in result["rows"])
    assert {"noisy", "denoised", "x0_hat", "nl_means", "tv"} <= set(result["median"])
    assert result["median"]["nl_means"] > result["median"]["noisy"]


def test_inpaint_rows_score_the_hole_against_two_classical_fills(tiny_models):
    """On a smooth ramp the biharmonic continuation is nearly exact and far better than the border's mean colour;
    the settings reach the task (with "fill" at strength 0 the hole is the smooth continuation itself)."""
    ys, xs = np.mgrid[:64, :64]
    ramp = np.stack([40 + 3 * xs, 20 + 2 * ys + xs * ys // 40, 200 - xs - ys], -1).astype(np.uint8)
    result = inpaint_rows(tiny_models, {"ramp": ramp}, seeds=(0,), hole=16, masked_content="fill", strength=0.0,
                          steps=2)
    assert result["settings"] == {"masked_content": "fill", "strength": 0.0, "steps": 2}
    assert result["outside_unchanged"]
    median = result["median"]
    assert median["smooth_fill_db"] > median["mean_fill_db"] + 10
    assert result["gain_over_mean_fill_db"] == round(median["hole_db"] - median["mean_fill_db"], 2)


def test_inpaint_figure_is_a_strip_of_five_pictures_per_photo(tiny_models, tmp_path):
    from PIL import Image

    path = tmp_path / "docs" / "inpaint.png"
    inpaint_figure(tiny_models, world_set(2, size=64), path, hole=16)
    figure = np.asarray(Image.open(path).convert("RGB"))
    assert figure.shape == (16 + 2 * 64, 5 * 64, 3)
    hole = figure[16 + 24: 16 + 40, 24:40]
    assert (hole == 128).all()  # the first column shows the hole in grey
