"""Request costs and saved runs, without a server: prices grow with the work, an over-limit request gets one
sentence naming the limit, a job stops at the end of the step that passes its time limit, every field of a saved
run is checked against the live endpoints' limits, and the kept-run store is fair between visitors."""
from __future__ import annotations

import dataclasses
import json
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diffdemo.engine.speed import Speed, Speeds, measure_speeds
from diffdemo.tasks import (DenoiseRequest, InvalidRequest, NoiseSweepRequest, PlaygroundRequest,
                            SuperResolutionRequest, TextToImageRequest, TrajectoryRequest)
from diffdemo.tasks.branch import BranchRequest, read_run
from diffdemo.tasks.budget import Estimate, area, check_cost, estimate
from diffdemo.tasks.trajectory import save_run, trajectory
from diffdemo.ui.limits import Limits, is_public
from diffdemo.ui.stores import RunStore
from fast_app import fast_model_set, write_image

CALL = Speed(fixed=0.0, per_area=0.01)  # no fixed part: prices in proportion to the work
SPEEDS = Speeds(unet=CALL, vae=CALL, upscaler=CALL, upscaler_vae=CALL, denoiser=CALL)
PROMPT = "a red circle"


def seconds(models, request, **kw) -> float:
    return estimate(models, SPEEDS, request, **kw).seconds


def test_measured_speeds_split_each_call_into_a_fixed_part_and_a_part_per_area(tiny_models, embedded_models):
    speeds = measure_speeds(fast_model_set(tiny_models, embedded_models))
    calls = (speeds.unet, speeds.vae, speeds.upscaler, speeds.upscaler_vae, speeds.denoiser)
    assert speeds.measured and all(call.fixed >= 0 and call.per_area > 0 for call in calls)
    assert Speed.fit(1.0, 0.4) == Speed(fixed=pytest.approx(0.2), per_area=pytest.approx(0.8))
    assert Speed.fit(1.0, 1.2) == Speed(fixed=0.75, per_area=0.25)  # noise: at least a quarter scales
    assert Speed(0.2, 0.8).seconds(area=4, batch=2) == pytest.approx(6.6)


def test_a_price_grows_with_steps_images_and_size(tiny_models):
    base = TextToImageRequest(prompt=PROMPT, steps=10)
    one = seconds(tiny_models, base)
    assert seconds(tiny_models, dataclasses.replace(base, steps=20)) > 1.8 * one
    assert seconds(tiny_models, dataclasses.replace(base, num_images=4)) == pytest.approx(4 * one)
    assert seconds(tiny_models, dataclasses.replace(base, width=128, height=128)) == pytest.approx(4 * one)
    assert area(16 * 64, 64) == 16 and area(64 * 64, 64) == 256  # linear up to KNEE (16)× the area, then square
    hold = TextToImageRequest(prompt=PROMPT, width=2048, height=2048, steps=150, num_images=8)
    assert seconds(tiny_models, hold) > 1000 * seconds(tiny_models, TextToImageRequest(prompt=PROMPT))


def test_every_task_has_a_price(tiny_models, embedded_models, tmp_path):
    models = fast_model_set(tiny_models, embedded_models)
    small, large = write_image(tmp_path / "small.png", size=(16, 16)), write_image(tmp_path / "large.png",
                                                                                    size=(512, 512))
    sr = SuperResolutionRequest(image=small, scale=4, steps=5, samples=4)
    assert seconds(models, SuperResolutionRequest(image=large, scale=4, steps=100, samples=16)) > \
        1000 * seconds(models, sr)  # more tiles, steps and samples
    once = seconds(models, DenoiseRequest(image=large, steps=10))
    assert seconds(models, NoiseSweepRequest(image=large, steps=10)) == pytest.approx(5 * once)  # five σ
    assert seconds(models, PlaygroundRequest(iterations=10_000)) > 4 * seconds(models, PlaygroundRequest())
    run = trajectory(models, TrajectoryRequest(prompt=PROMPT, steps=10, seed=1, decode="fast")).run
    assert seconds(models, BranchRequest(step=8), run=run) < seconds(models, BranchRequest(step=2), run=run)
    with pytest.raises(InvalidRequest, match="No image"):  # bad input: the task's own message
        seconds(models, DenoiseRequest(image=None))


def test_over_the_limit_is_one_sentence_naming_the_flag():
    check_cost(Estimate(29.0, "64×64"), 30)
    with pytest.raises(InvalidRequest) as refused:
        check_cost(Estimate(72_000, "2048×2048, 150 steps, 8 image(s)"), 30)
    message = str(refused.value)
    assert "20 h" in message and "30 s" in message and "2048×2048" in message
    assert "--max-cost" in message and "DIFFDEMO_MAX_COST" in message and "\n" not in message


def test_defaults_are_stricter_in_public_and_on_a_cpu():
    public = Limits.for_server(public=True, gpu=False, environ={})
    local_gpu = Limits.for_server(public=False, gpu=True, environ={})
    assert (public.max_cost, public.job_seconds, public.jobs_per_session) == (30, 60, 2)
    assert (local_gpu.max_cost, local_gpu.job_seconds, local_gpu.jobs_per_session) == (60, 120, 4)
    env = {"DIFFDEMO_MAX_COST": "120", "DIFFDEMO_JOBS_PER_SESSION": "3", "SYSTEM": "spaces"}
    spaced = Limits.for_server(public=True, gpu=False, environ=env, jobs_per_session=5)
    assert (spaced.max_cost, spaced.job_seconds, spaced.jobs_per_session, spaced.proxy_hops) == (120, 240, 5, 1)
    assert is_public("0.0.0.0", False, {}) and is_public("127.0.0.1", True, {})
    assert not is_public("127.0.0.1", False, {}) and not is_public("localhost", False, {})


def test_a_job_stops_at_the_end_of_the_step_past_its_time_limit():
    from diffdemo.engine.sampling import Step
    from diffdemo.ui.runner import Runner
    import gradio as gr

    runner, steps = Runner(models=None), []
    runner.job_seconds = 0.3

    def slow(models, request, callback):
        for index in range(50):
            time.sleep(0.05)
            steps.append(index)
            callback(Step(index, 50, 0, 1.0, 0.5, torch.zeros(1), torch.zeros(1)))

    with pytest.raises(gr.Error, match="the most one job may run") as stopped:
        runner.run(slow, None, SimpleNamespace(session_hash="s"), None)
    assert "--job-seconds" in stopped.value.message and 5 <= len(steps) <= 8


# --- saved runs are untrusted input --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tiny_models, tmp_path_factory):
    run = trajectory(tiny_models, TrajectoryRequest(prompt=PROMPT, steps=3, seed=2, decode="fast")).run
    path, _ = save_run(run, tmp_path_factory.mktemp("runs") / "trajectory-run.safetensors")
    return path


def crafted(path, folder, metadata=None, **tensors):
    """A copy of the saved run at ``path`` with ``metadata`` fields and ``tensors`` replaced."""
    with safe_open(path, framework="pt") as f:
        found = {key: f.get_tensor(key) for key in f.keys()}
        meta = json.loads(f.metadata()["diffdemo"])
    target = folder / "crafted.safetensors"
    save_file({**found, **tensors}, str(target), metadata={"diffdemo": json.dumps({**meta, **(metadata or {})})})
    return target


@pytest.mark.parametrize("change, message", [
    (dict(metadata={"steps": 300}), "steps must be between 1 and 150; got 300"),
    (dict(metadata={"steps": 5000}), "steps must be between 1 and 150; got 5000"),
    (dict(metadata={"sampler": "../../etc/passwd"}), "Unknown sampler '../../etc/passwd'"),
    (dict(metadata={"guidance_scale": 1e9}), "guidance_scale must be between"),
    (dict(metadata={"prompt": "x" * 5000}), "the limit is 2000"),
    (dict(metadata={"seed": -5}), "(?i)seed must be"),
    (dict(x_t=torch.zeros(3, 4, 320, 320, dtype=torch.float16)), "320×320 .2560×2560 pixels."),
    (dict(x0=torch.full((3, 4, 8, 8), float("nan"), dtype=torch.float16)), "not finite"),
    (dict(t=torch.tensor([999.0, 1.0, 0.0], dtype=torch.float64)), "step numbers"),
    (dict(metadata={"euler_type": True}), "euler_type"),
], ids=["steps 300", "steps 5000", "sampler path", "guidance", "prompt", "seed", "2560² latent", "NaN",
        "timesteps", "euler type"])
def test_a_crafted_saved_run_is_refused_field_by_field(tiny_models, saved, tmp_path, change, message):
    path = crafted(saved, tmp_path, **change)
    with pytest.raises(InvalidRequest, match=message) as refused:
        read_run(path, tiny_models)
    assert str(refused.value).startswith("Saved run: ") and "\n" not in str(refused.value)


def test_the_saved_run_as_recorded_is_accepted(tiny_models, saved):
    assert len(read_run(saved, tiny_models)) == 3


# --- kept runs --------------------------------------------------------------------------------------------------

def test_five_other_visitors_do_not_evict_your_run():
    store = RunStore(per_session=2, total=8)
    mine = store.add("my run", SimpleNamespace(session_hash="me"))
    for visitor in range(5):
        for run in range(3):  # each keeps at most 2
            store.add(f"run {run} of {visitor}", SimpleNamespace(session_hash=f"visitor-{visitor}"))
    assert store.get(mine) == "my run" and len(store) == 8
    newest = [store.add(f"mine {i}", SimpleNamespace(session_hash="me")) for i in range(2)]
    assert store.get(mine) is None and all(store.get(i) for i in newest)  # my own runs: mine to replace


def test_a_model_switch_times_the_new_model(tiny_models):
    from diffdemo.engine.speed import GPU_GUESS
    from diffdemo.ui.limits import Pricing

    measured = Pricing(SPEEDS)
    measured.retime(tiny_models)  # what Runner.switch_model calls, under the model lock, once the model is in
    assert measured.speeds is not SPEEDS and measured.speeds.measured
    guessed = Pricing(GPU_GUESS)  # ZeroGPU: nothing to time outside a request
    guessed.retime(tiny_models)
    assert guessed.speeds is GPU_GUESS
