"""Trajectory viewer: the recorder keeps what the one loop reports; scrubbing, exports and reloads need no U-Net."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from diffdemo.tasks import InvalidRequest
from diffdemo.tasks.trajectory import TrajectoryRequest, epsilon, frame, load_run, save_run, trajectory
from diffdemo.tasks.trajectory_export import contact_sheet, export_gif
from helpers import psnr, wait_until

PROMPT = "a large red star on a blue background"


def run_of(models, **settings):
    settings = {"prompt": PROMPT, "steps": 4, "seed": 7, **settings}
    return trajectory(models, TrajectoryRequest(**settings))


def as_array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


@pytest.fixture(scope="module")
def embedded_run(embedded_models):
    return run_of(embedded_models, steps=25)


@pytest.mark.parametrize("steps, every", [(4, 1), (7, 3), (8, 3)])
def test_kept_frames(tiny_models, steps, every):
    result = run_of(tiny_models, steps=steps, every=every, decode="fast")
    run = result.run
    assert len(result.images) == len(run) == math.ceil(steps / every)
    assert [n["step"] for n in run.numbers] == list(range(0, steps, every))
    assert str(run.x_t.dtype) == str(run.x0.dtype) == "torch.float16" and run.x_t.device.type == "cpu"
    assert result.metadata["numbers"][0]["t"] == run.numbers[0]["t"]
    assert all(n["snr"] >= 0 and n["guidance_scale"] == 5.0 for n in run.numbers)


def test_callback_is_chained(tiny_models):
    seen = []
    trajectory(tiny_models, TrajectoryRequest(prompt=PROMPT, steps=3, seed=1), seen.append)
    assert [s.index for s in seen] == [0, 1, 2]


def test_last_x0_is_the_final_image(embedded_run):
    run = embedded_run.run
    assert (run.x0[-1:].float() - run.final).abs().max() < 0.1
    assert psnr(as_array(embedded_run.images[-1]), as_array(run.image)) > 35


def test_epsilon_is_consistent_with_ddim_update(embedded_run):
    """DDIM (η = 0): x_{next} = √ᾱ_next·x̂_0 + √(1−ᾱ_next)·ε̂, with ε̂ derived from the kept x_t and x̂_0."""
    run = embedded_run.run
    for i in (0, 5, 12):
        a = run.numbers[i]
        eps = epsilon(run.x_t[i:i + 1], run.x0[i:i + 1], a["alpha_bar"], euler_type=False)
        b = run.numbers[i + 1]["alpha_bar"]
        x_next = math.sqrt(b) * run.x0[i:i + 1].float() + math.sqrt(1 - b) * eps
        assert (x_next - run.x_t[i + 1:i + 2].float()).abs().max() < 0.05


def test_euler_epsilon_is_finite(tiny_models):
    run = run_of(tiny_models, sampler="Euler", decode="fast").run
    assert run.metadata["euler_type"]
    for i in range(len(run)):
        eps = epsilon(run.x_t[i:i + 1], run.x0[i:i + 1], run.numbers[i]["alpha_bar"], euler_type=True)
        assert eps.isfinite().all()
        assert frame(run, i, "eps").size == frame(run, i, "x_t").size == (64, 64)


@pytest.mark.slow
def test_scrubbing_calls_no_unet(embedded_models, embedded_run, monkeypatch):
    run = embedded_run.run
    calls = []
    forward = embedded_models.unet.forward
    monkeypatch.setattr(embedded_models.unet, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    run.cache.clear()
    for i in range(len(run)):
        for view in ("x_t", "x0", "eps"):
            frame(run, i, view)
    assert len(run) == 25 and calls == []


def test_fast_decode_matches_vae_colours(embedded_models, embedded_run):
    fast = run_of(embedded_models, steps=25, decode="fast")
    vae_frame, fast_frame = as_array(embedded_run.images[-1]), as_array(fast.images[-1])
    assert fast_frame.shape == vae_frame.shape == (128, 128, 3)
    assert np.abs(fast_frame.mean((0, 1)) - vae_frame.mean((0, 1))).max() < 30
    assert np.corrcoef(fast_frame.ravel(), vae_frame.ravel())[0, 1] > 0.5


def test_exports_and_reload(tiny_models, tmp_path):
    run = run_of(tiny_models, steps=5, every=2).run
    gif = export_gif(run, tmp_path / "x0.gif")
    with Image.open(gif) as image:
        assert image.n_frames == len(run) == 3
    with Image.open(export_gif(run, tmp_path / "x_t.gif", "x_t")) as image:
        assert image.n_frames == 3
    with Image.open(contact_sheet(run, tmp_path / "sheet.png")) as sheet:
        assert sheet.format == "PNG" and sheet.width >= 2 * 64
    path, json_path = save_run(run, tmp_path / "run.safetensors")
    loaded = load_run(path, tiny_models)
    assert loaded.numbers == run.numbers and loaded.metadata["seed"] == 7
    for i in range(len(run)):
        for view in ("x_t", "x0", "eps"):
            np.testing.assert_array_equal(as_array(frame(loaded, i, view)), as_array(frame(run, i, view)))


def test_invalid_requests(tiny_models):
    with pytest.raises(InvalidRequest, match="decode"):
        run_of(tiny_models, decode="png")
    with pytest.raises(InvalidRequest, match="every"):
        run_of(tiny_models, every=0)
    run = run_of(tiny_models, steps=2, decode="fast").run
    with pytest.raises(InvalidRequest, match="index"):
        frame(run, 2)


@pytest.mark.slow
def test_live_app_prompt_only(live_app):
    from gradio_client import Client

    client = Client(live_app.url, verbose=False)
    try:
        gallery, gif, sheet, metadata, files, _, status = client.predict(prompt="a green heart",
                                                                         api_name="/trajectory")
    finally:
        client.close()
    assert len(gallery) == 25 == metadata["kept_steps"] == len(metadata["numbers"])
    assert metadata["steps"] == 25 and metadata["sampler"] == "DDIM" and status.startswith("done")
    with Image.open(gif) as image:
        assert image.n_frames == 25
    with Image.open(sheet) as image:
        assert image.format == "PNG"
    assert sorted(str(f).rsplit(".", 1)[-1] for f in files) == ["gif", "gif", "json", "mp4", "mp4", "png",
                                                                 "safetensors"]


def test_handler_streams_previews_then_the_run(tiny_models, tmp_path):
    from diffdemo.ui.runner import Runner
    from diffdemo.ui.trajectory_tab import RunStore, scrub_handler, trajectory_handler

    runner, store = Runner(tiny_models, tmp_path), RunStore(per_session=2)
    handler = trajectory_handler(runner, store)
    updates = list(handler(PROMPT, steps=4, every=2, seed=3, decode="fast", preview_every=3))
    assert [u[6] for u in updates[:-2]] == ["step 1/4", "step 4/4"]
    assert updates[-2][6].startswith("done") and updates[-2][7] == updates[-1][7]  # scrubbable before downloads
    gallery, gif, sheet, metadata, files, image, status, run_id = updates[-1]
    assert len(gallery) == 2 and status == "done: 2 frames" and len(files) == 7
    *views, line = scrub_handler(store)(run_id, 1)
    assert all(v.size == (64, 64) for v in views) and "step 3/4" in line
    for _ in range(2):  # older runs are dropped: at most `per_session` are held for one session
        list(handler(PROMPT, steps=1, seed=3, decode="fast"))
    assert store.get(run_id) is None


def test_closing_the_handler_stops_the_run(tiny_models, tmp_path, monkeypatch):
    from diffdemo.ui.runner import Runner
    from diffdemo.ui.trajectory_tab import RunStore, trajectory_handler

    calls, forward = [], tiny_models.unet.forward
    monkeypatch.setattr(tiny_models.unet, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    runner = Runner(tiny_models, tmp_path)
    updates = trajectory_handler(runner, RunStore())(PROMPT, steps=150, seed=3, decode="fast")
    assert next(updates)[6] == "step 1/150"
    updates.close()  # what gradio does on Stop or a closed page: GeneratorExit in the handler
    wait_until(lambda: runner.active == 0, 30, "the run to end")  # it deregisters when Cancelled ends it
    assert len(calls) < 150
