"""One model job at a time across all tabs, a bounded queue, 20 concurrent users, Stop and closed tabs, running out
of memory: against a live app on the tiny model set (tests/fast_app.py), whose task functions are wrapped to
record when each job holds the models."""
from __future__ import annotations

import gc
import threading
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import pytest
import torch

from diffdemo.ui.app import GPU_GROUP, QUEUE_SIZE
from diffdemo.ui.runner import Runner
from fast_app import (BrowserSession, JobRecorder, fast_model_set, fn_index, launched, raw_data,
                      stop_fn_index, write_image, write_mask)
from helpers import pixels

PROMPT = "a red circle"
TABS = ("text_to_image", "inpaint", "denoise", "super_resolve", "trajectory")
CLIENTS = 5


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    return SimpleNamespace(picture=write_image(folder / "picture.png"), mask=write_mask(folder / "mask.png"),
                           small=write_image(folder / "small.png", size=(16, 16)))


@pytest.fixture(scope="module")
def app(tiny_models, embedded_models, tmp_path_factory):
    recorder = JobRecorder()
    with pytest.MonkeyPatch.context() as monkeypatch:
        recorder.install(monkeypatch)
        with launched(fast_model_set(tiny_models, embedded_models), tmp_path_factory.mktemp("outputs")) as live:
            live.recorder = recorder
            yield live


@pytest.fixture(scope="module")
def clients(app):
    """Five API users, each with its own session."""
    from gradio_client import Client

    with ThreadPoolExecutor(CLIENTS) as pool:
        users = list(pool.map(lambda _: Client(app.url, verbose=False), range(CLIENTS)))
    yield users
    for user in users:
        user.close()


@pytest.fixture
def recorder(app):
    app.recorder.reset()
    yield app.recorder
    if app.recorder.gate is not None:
        app.recorder.gate.set()  # never leave a job held at the door


def call(tab: str, images, *, seed: int = 1, steps: int = 2) -> dict:
    """``client.predict``/``submit`` keyword arguments for one job on ``tab``."""
    from gradio_client import handle_file

    settings = {"text_to_image": dict(prompt=PROMPT),
                "inpaint": dict(image=handle_file(images.picture), mask=handle_file(images.mask), prompt=PROMPT),
                "denoise": dict(image=handle_file(images.picture), sigma=100),
                "super_resolve": dict(image=handle_file(images.small), scale=2),
                "trajectory": dict(prompt=PROMPT, decode="fast")}[tab]
    return dict(api_name=f"/{tab}", seed=seed, steps=steps, **settings)


def main_image(result) -> np.ndarray:
    """The first image output of any tab (galleries: their last image)."""
    first = result[0]
    if isinstance(first, list):
        first = first[-1]["image"]
    return pixels(first)


def press_stop(app, client, job) -> float:
    """What the Stop button does: runs ``runner.stop`` for the session and cancels the running event. Returns
    when ``runner.stop`` had returned (``time.perf_counter``)."""
    httpx.post(f"{app.url}gradio_api/run/predict", timeout=30, json={
        "fn_index": stop_fn_index(app.demo), "data": [], "session_hash": client.session_hash, "event_data": None,
        "trigger_id": None}).raise_for_status()
    stopped_at = time.perf_counter()
    job.cancel()
    return stopped_at


# --- 1. one lock across tabs ---------------------------------------------------------------------------------

def test_every_model_event_is_in_the_one_gpu_group(app):
    queued = {fn.name: fn for fn in app.demo.fns.values() if fn.queue and fn.fn != app.runner.stop}
    assert set(TABS) <= set(queued)
    for name, fn in queued.items():
        assert fn.concurrency_id == GPU_GROUP, name
        assert fn.concurrency_limit in (1, "default"), name
    assert app.demo._queue.default_concurrency_limit == 1


@pytest.mark.slow
def test_jobs_on_different_tabs_never_interleave(app, recorder, clients, images):
    recorder.reset(step_delay=0.02)
    jobs = [client.submit(**call(tab, images, steps=3)) for client, tab in zip(clients, TABS)]
    for job in jobs:
        job.result(timeout=120)
    assert sorted(j.task for j in recorder.jobs) == sorted(TABS)
    assert all(j.end is not None and j.error is None for j in recorder.jobs)
    assert recorder.overlapping() == []


def test_the_runner_runs_one_task_at_a_time_whoever_calls_it():
    runner, inside, most = Runner(models=None), [], []
    lock = threading.Lock()

    def task(models, request, callback):
        with lock:
            inside.append(request)
            most.append(len(inside))
        time.sleep(0.02)
        with lock:
            inside.remove(request)
        return request

    threads = [threading.Thread(target=runner.run, args=(task, i, SimpleNamespace(session_hash=str(i)), None))
               for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(most) == 6 and max(most) == 1


@pytest.mark.slow
def test_a_stopped_run_finishes_its_step_before_the_next_job_starts(app, recorder, clients):
    recorder.reset(step_delay=1.0)
    running = clients[0].submit(api_name="/trajectory", prompt=PROMPT, steps=30, seed=1, decode="fast")
    recorder.wait_for(lambda: recorder.jobs and recorder.jobs[0].steps)
    press_stop(app, clients[0], running)  # Gradio frees the queue slot now; the run ends its step after
    clients[1].predict(api_name="/text_to_image", prompt=PROMPT, steps=2, seed=1)
    stopped, following = recorder.jobs
    assert stopped.error == "Cancelled" and following.error is None
    assert following.start >= stopped.end


def test_the_21st_waiting_job_is_told_the_queue_is_full(app, recorder, clients):
    recorder.reset(gate=threading.Event())
    fn = fn_index(app.demo, "text_to_image")
    data = raw_data(app.url, "text_to_image", prompt=PROMPT, steps=1, seed=1)

    def join():
        session = uuid.uuid4().hex[:12]
        response = httpx.post(f"{app.url}gradio_api/queue/join", timeout=30, json={
            "data": data, "fn_index": fn, "session_hash": session, "event_data": None, "trigger_id": None})
        return session, response

    _, first = join()
    recorder.wait_for(lambda: recorder.jobs)  # running, held at the door: the next ones wait in the queue
    waiting = [join() for _ in range(QUEUE_SIZE)]
    assert [response.status_code for _, response in waiting] == [200] * QUEUE_SIZE
    _, refused = join()
    assert refused.status_code == 503 and "Queue is full" in refused.json()["detail"]
    with pytest.raises(Exception, match="(?i)queue is full"):
        clients[0].predict(api_name="/text_to_image", prompt=PROMPT, steps=1, seed=1)
    for session, response in waiting:  # clear the queue rather than run 20 jobs
        httpx.post(f"{app.url}gradio_api/cancel", timeout=30, json={
            "session_hash": session, "fn_index": fn, "event_id": response.json()["event_id"]})
    recorder.gate.set()
    recorder.wait_for(lambda: recorder.jobs[0].end is not None)
    assert len(recorder.jobs) == 1


# --- 2. load -------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_twenty_concurrent_jobs_across_tabs_match_serial_runs(app, recorder, clients, images):
    distinct = [(tab, seed) for tab in TABS[:4] for seed in (1, 2)] + [("trajectory", 1)]
    serial = {key: main_image(clients[0].predict(**call(key[0], images, seed=key[1]))) for key in distinct}
    load = (distinct * 3)[:20]
    started = time.perf_counter()
    jobs = [clients[i % CLIENTS].submit(**call(tab, images, seed=seed)) for i, (tab, seed) in enumerate(load)]
    results = [job.result(timeout=180) for job in jobs]
    seconds = time.perf_counter() - started
    for (tab, seed), result in zip(load, results):
        np.testing.assert_array_equal(main_image(result), serial[(tab, seed)], err_msg=f"{tab} seed {seed}")
    assert len(recorder.jobs) == len(distinct) + 20
    assert all(j.error is None for j in recorder.jobs) and recorder.overlapping() == []
    print(f"20 concurrent jobs across {len(TABS)} tabs in {seconds:.1f} s")


# --- 4. cancel -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tab", TABS)
def test_stop_ends_the_run_within_one_step_and_the_next_job_runs(app, recorder, clients, images, tab):
    recorder.reset(step_delay=0.1)
    running = clients[0].submit(**call(tab, images, steps=40))
    recorder.wait_for(lambda: recorder.jobs and len(recorder.jobs[0].steps) >= 2)
    stopped_at = press_stop(app, clients[0], running)
    recorder.wait_for(lambda: recorder.jobs[0].end is not None, timeout=10)
    run = recorder.jobs[0]
    assert run.error == "Cancelled"
    assert sum(t > stopped_at for t in run.steps) <= 1
    recorder.step_delay = 0
    clients[0].predict(**call(tab, images, seed=2))
    assert len(recorder.jobs) == 2 and recorder.jobs[1].error is None


@pytest.mark.slow
def test_closing_the_tab_ends_the_run_within_one_step(app, recorder, clients):
    recorder.reset(step_delay=0.5)  # longer than it takes the server to notice the closed connections
    tab = BrowserSession(app.url)
    tab.join(fn_index(app.demo, "text_to_image"),
             raw_data(app.url, "text_to_image", prompt=PROMPT, steps=40, seed=1))
    recorder.wait_for(lambda: recorder.jobs and len(recorder.jobs[0].steps) >= 2)
    closed_at = time.perf_counter()
    tab.close()
    recorder.wait_for(lambda: recorder.jobs[0].end is not None, timeout=10)
    run = recorder.jobs[0]
    assert run.error == "Cancelled"
    assert sum(t > closed_at for t in run.steps) <= 1
    clients[1].predict(api_name="/text_to_image", prompt=PROMPT, steps=2, seed=1)
    assert len(recorder.jobs) == 2 and recorder.jobs[1].error is None


# --- 7. out of memory ----------------------------------------------------------------------------------------

FAILURES = {"cuda": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0)"),
            "cpu": lambda: MemoryError()}


@pytest.mark.parametrize("kind", FAILURES)
def test_out_of_memory_gets_a_clear_message_and_the_next_request_works(app, recorder, clients, kind):
    recorder.reset(failure=FAILURES[kind]())
    with pytest.raises(Exception) as caught:
        clients[0].predict(api_name="/text_to_image", prompt=PROMPT, steps=2, seed=1)
    message = str(caught.value)
    assert "ran out of memory" in message and "smaller size" in message
    assert "Traceback" not in message and "GiB" not in message
    gallery, metadata, _ = clients[0].predict(api_name="/text_to_image", prompt=PROMPT, steps=2, seed=1)
    assert metadata["seed"] == 1 and len(gallery) == 1


@pytest.mark.parametrize("kind", FAILURES)
def test_out_of_memory_frees_what_the_failed_run_held(monkeypatch, kind):
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    held = []

    def task(models, request, callback):
        latents = torch.zeros(256, 256)
        cycle = [latents]
        cycle.append(cycle)  # only the garbage collector frees a reference cycle
        held.append(weakref.ref(latents))
        raise FAILURES[kind]()

    gc.disable()  # so that only an explicit collection can free it
    try:
        with pytest.raises(gr.Error, match="ran out of memory"):
            Runner(models=None).run(task, None, None, None)
        assert held[0]() is None
    finally:
        gc.enable()
    assert emptied == [True]
