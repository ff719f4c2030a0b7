"""Tests of the forward-process explorer: q(x_t|x_0) statistics, schedules, seeds, sizes, errors, /forward."""
from __future__ import annotations

import math

import helpers
import numpy as np
import pytest
import torch
from PIL import Image

from diffdemo.tasks import ForwardRequest, InvalidRequest, forward, noise_schedule
from diffdemo.tasks.forward import latent_picture, noised


@pytest.fixture(scope="module")
def picture():
    """A 96×64 picture: the task must resize it so its longer side is the model's native size."""
    rng = np.random.default_rng(0)
    pixels = np.zeros((64, 96, 3), np.uint8)
    pixels[:, :48] = (200, 40, 40)
    pixels[16:48, 48:] = rng.integers(0, 255, (32, 48, 3))
    return Image.fromarray(pixels)


def pixels(image) -> np.ndarray:
    return helpers.pixels(image, np.int16)  # signed: the tests subtract pictures


def test_q_sample_has_the_closed_form_mean_and_variance():
    x0 = torch.full((200_000,), 0.6)
    eps = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    for alpha_bar in (0.999, 0.5, 0.02, 0.0):
        x_t = noised(x0, eps, alpha_bar)
        assert abs(float(x_t.mean()) - math.sqrt(alpha_bar) * 0.6) < 0.01
        assert abs(float(x_t.std()) - math.sqrt(1 - alpha_bar)) < 0.01
    assert torch.equal(noised(x0, eps, 0.0), eps), "ᾱ = 0 is pure noise"
    assert torch.equal(noised(x0, eps, 1.0), x0), "ᾱ = 1 is the clean input"


@pytest.mark.parametrize("sampler", ["DDIM", "Euler"])
def test_schedule_curves(tiny_models, sampler):
    schedule = noise_schedule(tiny_models, sampler)
    assert set(schedule) == {"t", "beta", "log10_beta", "alpha_bar", "snr", "log10_snr"}
    assert len(schedule["t"]) == 1000
    assert np.all(np.diff(schedule["alpha_bar"]) < 0), "ᾱ_t falls with t"
    assert np.all((schedule["beta"] > 0) & (schedule["beta"] <= 1))
    np.testing.assert_allclose(schedule["snr"][:-1], schedule["alpha_bar"][:-1] / (1 - schedule["alpha_bar"][:-1]))
    assert np.isfinite(schedule["log10_snr"][:-1]).all()
    if sampler == "DDIM":  # the zero-terminal-SNR schedule: ᾱ_T = 0, SNR 0, log SNR undefined
        assert schedule["alpha_bar"][-1] == 0 and schedule["snr"][-1] == 0 and np.isnan(schedule["log10_snr"][-1])
    else:  # Euler-type samplers floor ᾱ_T at 2^-24 so that σ_T stays finite
        assert schedule["alpha_bar"][-1] > 0 and np.isfinite(schedule["log10_snr"][-1])


def test_outputs_sizes_and_numbers(tiny_models, picture):
    result = forward(tiny_models, ForwardRequest(image=picture, t=300, seed=1))
    source, latent, pixel, values, row = result.images
    assert source.size == latent.size == pixel.size == values.size == (64, 40)  # 96×64 -> longer side 64, ×8
    assert row.width > 6 * 20 and row.height > 2 * 20
    meta = result.metadata
    alpha_bar = float(tiny_models.scheduler.alphas_cumprod[300])
    assert meta["t"] == 300 and meta["alpha_bar"] == pytest.approx(alpha_bar, rel=1e-6)
    assert meta["snr"] == pytest.approx(alpha_bar / (1 - alpha_bar), rel=1e-5)
    assert meta["row"] == [0, 100, 250, 500, 750, 999] and meta["zero_terminal_snr"] is True
    assert meta["input_size"] == "96x64" and meta["size"] == "64x40"


def test_pixel_space_noise_grows_with_t(tiny_models, picture):
    clean = pixels(forward(tiny_models, ForwardRequest(image=picture, t=0, seed=1)).images[0])
    errors = []
    for t in (0, 200, 999):
        noisy = pixels(forward(tiny_models, ForwardRequest(image=picture, t=t, seed=1, row=(t,))).images[2])
        errors.append(np.abs(noisy - clean).mean())
    assert errors[0] < 5 < errors[1] < errors[2]  # at t = 0 the noise std is 0.03 (3.7 pixel units)


def test_terminal_latents_are_pure_noise(tiny_models, picture):
    """At t = T (ᾱ = 0) the latent x_t no longer depends on the image: two images give the same x_T."""
    other = Image.new("RGB", picture.size, (0, 90, 200))
    first = forward(tiny_models, ForwardRequest(image=picture, t=999, seed=3, row=(999,)))
    second = forward(tiny_models, ForwardRequest(image=other, t=999, seed=3, row=(999,)))
    np.testing.assert_array_equal(pixels(first.images[1]), pixels(second.images[1]))
    assert first.metadata["log10_snr"] is None and first.metadata["snr"] == 0


def test_seeds_reproduce_and_differ(tiny_models, picture):
    first, second, other = (forward(tiny_models, ForwardRequest(image=picture, t=400, seed=s, row=(400,)))
                            for s in (5, 5, 6))
    for a, b in zip(first.images, second.images):
        np.testing.assert_array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(first.images[2]), pixels(other.images[2]))


def test_latent_picture_is_one_block_per_cell():
    z = torch.zeros(4, 2, 3)
    z[0, 1, 2] = 3.0  # channel 1 at its maximum in one cell
    image = latent_picture(z, 8)
    assert image.size == (24, 16)
    array = np.asarray(image)
    assert (array[8:, 16:, 0] == 255).all() and (array[:8, :, 0] == 128).all()


def test_invalid_requests(tiny_models, picture):
    with pytest.raises(InvalidRequest, match="No image"):
        forward(tiny_models, ForwardRequest(image=None))
    with pytest.raises(InvalidRequest, match="t must be between 0 and 999"):
        forward(tiny_models, ForwardRequest(image=picture, t=1000))
    with pytest.raises(InvalidRequest, match="Unknown sampler"):
        forward(tiny_models, ForwardRequest(image=picture, sampler="nope"))
    with pytest.raises(InvalidRequest, match="row"):
        forward(tiny_models, ForwardRequest(image=picture, row=tuple(range(9))))
    with pytest.raises(InvalidRequest, match="could not be read"):
        forward(tiny_models, ForwardRequest(image=b"not a picture"))


def test_plot_frames_mark_the_chosen_t(tiny_models):
    from diffdemo.ui.forward_tab import MARKER, schedule_frames

    frames = schedule_frames(noise_schedule(tiny_models, "DDIM"), 999)
    assert len(frames) == 3
    for frame in frames:
        assert np.isfinite(frame["value"]).all(), "log SNR(T) = −∞ is left out, not plotted"
        marker = frame[frame["curve"] == MARKER]
        assert list(marker["t"]) == [999, 999] and marker["value"].iloc[0] < marker["value"].iloc[1]
    curve = frames[2][frames[2]["curve"] != MARKER]
    assert curve["t"].max() == 998 and 250 < len(curve) < 400  # every 4th t, and every t of the steep end


def test_moving_t_renoises_only_x_t(tiny_models, picture, tmp_path):
    import gradio as gr

    from diffdemo.ui.forward_tab import refresh_handler
    from diffdemo.ui.runner import Runner

    refresh = refresh_handler(Runner(tiny_models, tmp_path))
    assert refresh(None, 300, 0, "DDIM") == (gr.skip(),) * 6, "no image: nothing to run"
    *views, row, metadata = refresh(picture, 300, 0, "DDIM")
    assert len(views) == 4 and all(Image.open(path).size == (64, 40) for path in views)
    assert row == gr.skip() and metadata["t"] == 300 and metadata["row"] == [300]


def test_live_app_forward_endpoint(live_app, tmp_path):
    from gradio_client import Client, handle_file

    from diffdemo.world.examples import example_images

    path = tmp_path / "world.png"
    example_images()[0][0].save(path)  # a 128×128 world scene the embedded VAE knows well
    client = Client(live_app.url, verbose=False)
    try:
        *images, metadata = client.predict(image=handle_file(str(path)), t=250, api_name="/forward")
    finally:
        client.close()
    assert len(images) == 5
    for image_path in images[:4]:
        with Image.open(image_path) as image:
            assert image.size == (128, 128)
    assert metadata["t"] == 250 and metadata["seed"] == 0 and metadata["sampler"] == "DDIM"
    assert metadata["vae_round_trip_psnr"] > 25 and metadata["zero_terminal_snr"] is True
