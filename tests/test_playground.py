"""Tests of the 2-D playground: training, sample quality, the forward process, seeds, caching, drawings, API."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffdemo.tasks import InvalidRequest, PlaygroundCache, PlaygroundRequest, playground
from diffdemo.tasks.playground import frame_image, frame_size, overview_image
from diffdemo.tasks.playground.data import DATASETS, mean_distance, sample
from diffdemo.tasks.playground.model import train
from diffdemo.tasks.playground.run import Bounded

QUICK = dict(iterations=30, steps=5, points=200)  # for tests about mechanics, not quality

# Distance threshold for "the samples lie on the swiss roll": neighbouring arms of the roll are ~0.9 apart (see
# data.swiss_roll), so a point 0.1 from the nearest data point sits clearly on an arm, not between two; N(0, I)
# noise lies 0.29 from the data on average and fresh data points 0.005.
ON_THE_ROLL = 0.1


@pytest.fixture(scope="module")
def cache():
    return PlaygroundCache()


@pytest.fixture(scope="module")
def swiss_roll(cache):
    """The default run: 2,000 training iterations on the swiss roll, then 50 DDPM steps for 1,000 points."""
    return playground(None, PlaygroundRequest(), cache=cache)


def test_data_sets_are_unit_scale_and_seeded():
    for name in DATASETS:
        points = sample(name, 5000, torch.Generator().manual_seed(0))
        assert points.shape == (5000, 2)
        assert points.mean(0).abs().max() < 0.2 and ((points.std(0) > 0.7) & (points.std(0) < 1.3)).all(), name
        assert torch.equal(points, sample(name, 5000, torch.Generator().manual_seed(0)))


def test_training_reduces_the_loss():
    trained = train("two moons", seed=0, iterations=200)
    assert len(trained.losses) == 200
    assert np.mean(trained.losses[-40:]) < 0.8 * np.mean(trained.losses[:40])


def test_samples_land_on_the_swiss_roll(swiss_roll):
    distance = swiss_roll.metadata["distance_to_data"]
    assert distance["samples"] < ON_THE_ROLL < distance["noise"]
    assert distance["samples"] < distance["noise"] / 5
    assert swiss_roll.metadata["loss_end"] < swiss_roll.metadata["loss_start"]


def test_ddim_reuses_the_model_and_also_reaches_the_data(swiss_roll, cache):
    result = playground(None, PlaygroundRequest(sampler="DDIM", steps=20), cache=cache)
    assert result.metadata["reused_model"] is True
    assert result.metadata["distance_to_data"]["samples"] < ON_THE_ROLL


def test_forward_diffusion_ends_in_a_standard_normal(swiss_roll):
    run = swiss_roll.run
    assert run.timesteps[0] == 999 and run.alpha_bars[0] < 1e-4
    x_T = torch.from_numpy(run.forward[0])
    assert x_T.mean(0).abs().max() < 0.1 and ((x_T.std(0) - 1).abs() < 0.1).all()
    assert abs(float(torch.corrcoef(torch.cat([x_T, torch.from_numpy(run.data)], 1).T)[0, 2])) < 0.1
    np.testing.assert_array_equal(run.forward[-1], run.data)  # the last frame is x_0 itself
    assert run.alpha_bars[-1] == 1.0 and run.timesteps[-1] == 0


def test_frames_record_every_step_and_the_callback_sees_each(cache):
    seen = []
    result = playground(None, PlaygroundRequest(dataset="8 gaussians", **QUICK), seen.append, cache=cache)
    run = result.run
    assert len(seen) == 5 and [s.index for s in seen] == list(range(5))
    assert len(run) == 6 and run.reverse.shape == (6, 200, 2) and run.forward.shape == (6, 200, 2)
    assert run.score.shape == (6, 21, 21, 2) and np.isfinite(run.score).all()
    np.testing.assert_array_equal(run.reverse[-1], seen[-1].latents.numpy())


def test_seeds_reproduce_and_differ():
    first, second, other = (playground(None, PlaygroundRequest(seed=s, **QUICK)).run for s in (3, 3, 4))
    for name in ("reverse", "forward", "score"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert not np.array_equal(first.reverse, other.reverse)


def test_random_seed_is_reported():
    result = playground(None, PlaygroundRequest(seed=-1, **QUICK))
    assert 0 <= result.metadata["seed"] < 2**32 and result.run.request.seed == result.metadata["seed"]


def test_drawings_have_the_expected_size_and_change_with_the_frame(swiss_roll):
    run = swiss_roll.run
    first, middle, last = (frame_image(run, i) for i in (0, 25, 50))
    assert first.size == frame_size() == (3 * 256 + 4 * 8, 256 + 56)
    assert frame_image(run, 10, panel=128).size == frame_size(128)
    assert swiss_roll.images[0].size == frame_size() and swiss_roll.images[1].size == overview_image(run).size
    a, b, c = (np.asarray(im) for im in (first, middle, last))
    assert not np.array_equal(a, b) and not np.array_equal(b, c)
    assert (np.asarray(last) != 255).any(axis=-1).mean() > 0.05, "points, arrows and text are drawn"
    np.testing.assert_array_equal(np.asarray(frame_image(run, 99)), c)  # out-of-range frames clamp


def test_cache_is_bounded_and_reuses_models():
    memory = Bounded(2)
    for key in "abc":
        memory.put(key, key.upper())
    assert memory.get("a") is None and memory.get("c") == "C"
    cache = PlaygroundCache(models=Bounded(1), runs=Bounded(1))
    first = playground(None, PlaygroundRequest(**QUICK), cache=cache)
    again = playground(None, PlaygroundRequest(**QUICK), cache=cache)
    assert again.run is first.run
    more = playground(None, PlaygroundRequest(**{**QUICK, "points": 100}), cache=cache)
    assert more.metadata["reused_model"] is True and more.run.reverse.shape[1] == 100


def test_mean_distance():
    reference = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    assert mean_distance(torch.tensor([[0.0, 3.0], [10.0, -1.0]]), reference) == pytest.approx(2.0)


def test_invalid_requests():
    with pytest.raises(InvalidRequest, match="Unknown data set 'spiral'; choose one of: swiss roll"):
        playground(None, PlaygroundRequest(dataset="spiral"))
    with pytest.raises(InvalidRequest, match="Unknown sampler"):
        playground(None, PlaygroundRequest(sampler="Euler"))
    with pytest.raises(InvalidRequest, match="steps must be between 1 and 250"):
        playground(None, PlaygroundRequest(steps=0))
    with pytest.raises(InvalidRequest, match="points"):
        playground(None, PlaygroundRequest(points=10**6))


def test_handler_then_scrubbing_renders_frames_without_sampling(tiny_models, tmp_path, monkeypatch):
    from diffdemo.tasks.playground import run as playground_run
    from diffdemo.ui.playground_tab import playground_handler, scrub_handler, show_run
    from diffdemo.ui.runner import Runner

    cache = PlaygroundCache()
    handler = playground_handler(Runner(tiny_models, tmp_path), cache)
    frame, overview, loss, metadata, state = handler("checkerboard", "DDIM", 4, 100, 1, 20)
    assert len(loss) == 20 and state["seed"] == 1 and state["steps"] == 4
    slider, summary = show_run(metadata)
    assert slider.maximum == 4 == slider.value and "checkerboard" in summary

    def no_sampling(*args, **kwargs):
        raise AssertionError("scrubbing must not sample again")

    monkeypatch.setattr(playground_run, "record_run", no_sampling)
    scrub = scrub_handler(cache)
    assert scrub(state, 2).size == frame_size()
    assert not np.array_equal(np.asarray(scrub(state, 0)), np.asarray(scrub(state, 4)))


def test_live_app_playground_endpoint(live_app):
    from gradio_client import Client
    from PIL import Image

    client = Client(live_app.url, verbose=False)
    try:
        frame, overview, loss, metadata = client.predict(dataset="two moons", iterations=200, steps=10,
                                                         api_name="/playground")
    finally:
        client.close()
    with Image.open(frame) as image:
        assert image.size == frame_size()
    with Image.open(overview) as image:
        assert image.format == "PNG"
    assert metadata["dataset"] == "two moons" and metadata["steps"] == 10 and metadata["sampler"] == "DDPM"
    assert len(loss["data"]) > 10
