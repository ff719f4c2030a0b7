"""Public hosting, probed as a hostile or careless visitor would, on a live app launched with the limits of a
public CPU server (tests/fast_app.py): an over-budget request is refused before it is queued, one session cannot
take more than its share of the queue, a job past its time limit stops, the operator can list and cancel jobs, a
crafted saved run is refused, other visitors do not evict your run, and 30 clients at once are all served or told
to retry."""
from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diffdemo.ui.limits import Limits
from fast_app import (TIMEOUT, JobRecorder, fast_model_set, fn_index, launched, raw_data, raw_result, refusal,
                      upload, write_image, write_mask)
from helpers import wait_until

PROMPT = "a red circle"
ADMIN = "operator-secret"


@pytest.fixture(scope="module")
def app(tiny_models, embedded_models, tmp_path_factory):
    recorder = JobRecorder()
    limits = Limits.for_server(public=True, gpu=False, environ={}, admin_token=ADMIN)
    with pytest.MonkeyPatch.context() as monkeypatch:
        recorder.install(monkeypatch)
        with launched(fast_model_set(tiny_models, embedded_models), tmp_path_factory.mktemp("outputs"),
                      limits=limits) as live:
            live.recorder, live.limits = recorder, limits
            yield live


@pytest.fixture
def recorder(app):
    app.recorder.reset()
    yield app.recorder
    if app.recorder.gate is not None:
        app.recorder.gate.set()


@pytest.fixture(scope="module")
def files(app, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    return {"picture": upload(app.url, write_image(folder / "picture.png")),
            "mask": upload(app.url, write_mask(folder / "mask.png")),
            "small": upload(app.url, write_image(folder / "small.png", size=(16, 16))),
            "large": upload(app.url, write_image(folder / "large.png", size=(512, 512)))}


def join(app, api: str, session: str | None = None, **values) -> httpx.Response:
    """A raw queue join for ``api`` (fire and forget: nobody reads its event stream)."""
    return httpx.post(f"{app.url}gradio_api/queue/join", timeout=TIMEOUT, json={
        "data": raw_data(app.url, api, **values), "fn_index": fn_index(app.demo, api),
        "session_hash": session or uuid.uuid4().hex, "event_data": None, "trigger_id": None})


# --- 1. one request cannot hold the model for hours -----------------------------------------------------------

def test_an_over_budget_request_is_refused_before_it_is_queued(app, recorder, files):
    from gradio_client import Client
    from gradio_client.exceptions import ValidationError

    holds = [("text_to_image", dict(prompt=PROMPT, width=2048, height=2048, steps=150, num_images=8)),
             ("super_resolve", dict(image=files["large"], scale=4, samples=16, steps=100)),
             ("psnr_vs_noise", dict(image=files["large"], steps=100)),
             ("playground", dict(iterations=10_000, points=3000, steps=250))]
    slowest = 0.0
    for api, values in holds:
        started = time.perf_counter()
        answer = join(app, api, **values)
        took = time.perf_counter() - started
        message, slowest = refusal(answer), max(slowest, took)
        assert answer.status_code == 422 and took < 1.0, (api, answer.status_code, took)
        assert "would take about" in message and "--max-cost" in message and "DIFFDEMO_MAX_COST" in message, message
    print(f"over-budget requests refused in at most {1000 * slowest:.0f} ms")
    client = Client(app.url, verbose=False)
    try:
        with pytest.raises(ValidationError, match="--max-cost"):
            client.predict(api_name="/text_to_image", prompt=PROMPT, width=2048, height=2048, steps=150,
                           num_images=8)
    finally:
        client.close()
    assert recorder.jobs == []  # nothing ran


# --- 3. one client cannot fill the queue ----------------------------------------------------------------------

def test_one_session_cannot_take_more_than_its_share_while_another_job_runs(app, recorder):
    recorder.reset(gate=threading.Event())
    assert join(app, "text_to_image", prompt=PROMPT, steps=1, seed=1).status_code == 200  # another visitor's job
    recorder.wait_for(lambda: recorder.jobs)  # it runs, held at the door
    greedy = uuid.uuid4().hex
    answers = [join(app, "text_to_image", greedy, prompt=PROMPT, steps=1, seed=i) for i in range(22)]
    share = app.limits.jobs_per_session
    assert [a.status_code for a in answers] == [200] * share + [422] * (22 - share)
    assert "You already have 2 jobs waiting or running" in refusal(answers[-1])
    assert join(app, "text_to_image", prompt=PROMPT, steps=1, seed=9).status_code == 200  # others still get in
    recorder.gate.set()
    recorder.wait_for(lambda: len(recorder.jobs) == share + 2 and all(j.end for j in recorder.jobs))
    assert all(j.error is None for j in recorder.jobs)
    assert join(app, "text_to_image", greedy, prompt=PROMPT, steps=1).status_code == 200  # its jobs ended: room


def test_a_cancelled_or_abandoned_waiting_job_frees_its_place(app, recorder):
    recorder.reset(gate=threading.Event())
    join(app, "text_to_image", prompt=PROMPT, steps=1)
    recorder.wait_for(lambda: recorder.jobs)
    session = uuid.uuid4().hex
    first, second = (join(app, "text_to_image", session, prompt=PROMPT, steps=1) for _ in range(2))
    assert join(app, "text_to_image", session, prompt=PROMPT, steps=1).status_code == 422
    httpx.post(f"{app.url}gradio_api/cancel", timeout=TIMEOUT, json={
        "session_hash": session, "fn_index": fn_index(app.demo, "text_to_image"),
        "event_id": second.json()["event_id"]}).raise_for_status()
    assert join(app, "text_to_image", session, prompt=PROMPT, steps=1).status_code == 200
    # a bogus cancel frees nothing: the gate follows Gradio's queue, not the client's word
    httpx.post(f"{app.url}gradio_api/cancel", timeout=TIMEOUT, json={
        "session_hash": session, "fn_index": fn_index(app.demo, "text_to_image"), "event_id": "bogus"})
    assert join(app, "text_to_image", session, prompt=PROMPT, steps=1).status_code == 422
    with httpx.stream("GET", f"{app.url}gradio_api/queue/data", params={"session_hash": session},
                      timeout=TIMEOUT) as stream:
        next(stream.iter_lines())  # connected; leaving the block disconnects: Gradio drops the session's jobs
    wait_until(lambda: join(app, "text_to_image", session, prompt=PROMPT, steps=1).status_code == 200, 15,
               "the abandoned jobs to give up their places", interval=0.2)
    recorder.gate.set()


# --- a hard time limit, and the operator -----------------------------------------------------------------------

def test_a_job_past_its_time_limit_stops_at_the_end_of_a_step(app, recorder):
    recorder.reset(step_delay=0.2)
    app.runner.job_seconds = 0.5
    try:
        answer = raw_result(app.url, fn_index(app.demo, "text_to_image"),
                            raw_data(app.url, "text_to_image", prompt=PROMPT, steps=40, seed=1))
    finally:
        app.runner.job_seconds = app.limits.job_seconds
    assert not answer["success"] and "the most one job may run" in answer["output"]["error"]
    assert "--job-seconds" in answer["output"]["error"] and len(recorder.jobs[0].steps) <= 5


def test_the_operator_lists_and_cancels_jobs(app, recorder):
    admin = f"{app.url}diffdemo/admin/"
    assert httpx.get(admin + "jobs", timeout=TIMEOUT).status_code == 401
    assert httpx.get(admin + "jobs", headers={"Authorization": "Bearer wrong"}, timeout=TIMEOUT).status_code == 401
    token = {"Authorization": f"Bearer {ADMIN}"}
    recorder.reset(gate=threading.Event())
    results = {}

    def run(name):
        results[name] = raw_result(app.url, fn_index(app.demo, "text_to_image"),
                                   raw_data(app.url, "text_to_image", prompt=PROMPT, steps=3, seed=1))

    threads = [threading.Thread(target=run, args=(name,)) for name in ("running", "waiting")]
    threads[0].start()
    recorder.wait_for(lambda: recorder.jobs)
    threads[1].start()

    def both_listed() -> list | None:
        jobs = httpx.get(admin + "jobs", headers=token, timeout=TIMEOUT).json()["jobs"]
        return jobs if len(jobs) >= 2 else None

    jobs = wait_until(both_listed, TIMEOUT, "both jobs in the operator's list", interval=0.05)
    assert [job["state"] for job in jobs] == ["running", "waiting"] and jobs[0]["what"] == "text_to_image"
    answer = httpx.post(admin + "cancel", headers=token, timeout=TIMEOUT).json()
    assert answer["cancelled"] == "all" and len(answer["stopping"]) == 1
    recorder.gate.set()
    for thread in threads:
        thread.join(TIMEOUT)
    assert "Stopped" in results["running"]["output"]["error"]
    assert "operator cancelled this job" in results["waiting"]["output"]["error"]
    assert len(recorder.jobs) == 1  # the waiting one never reached the models


# --- 2. a crafted saved run ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_crafted_run_file_is_refused_with_a_message(app, recorder, tmp_path, capfd):
    from gradio_client import Client, handle_file

    client = Client(app.url, verbose=False, download_files=str(tmp_path))
    try:
        *_, files, _, _ = client.predict(api_name="/trajectory", prompt=PROMPT, steps=3, seed=1, decode="fast")
        run_path = next(f for f in files if str(f).endswith(".safetensors"))
        for change, words in (({"steps": 300}, "steps must be between 1 and 150"),
                              ({"sampler": "../../etc/passwd"}, "Unknown sampler"),
                              ({"latent": 320}, "320×320")):
            crafted = craft(run_path, tmp_path / "crafted.safetensors", change)
            with pytest.raises(Exception, match=words):
                client.predict(api_name="/branch", step=1, run_file=handle_file(str(crafted)))
    finally:
        client.close()
    assert "Traceback" not in capfd.readouterr().err


def craft(source, target, change: dict):
    with safe_open(str(source), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
        meta = json.loads(f.metadata()["diffdemo"])
    if "latent" in change:
        side = change.pop("latent")
        tensors["x_t"], tensors["x0"] = (torch.zeros(len(tensors["t"]), 4, side, side, dtype=torch.float16)
                                         for _ in range(2))
    save_file(tensors, str(target), metadata={"diffdemo": json.dumps({**meta, **change})})
    return target


# --- the kept-run store ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_five_other_visitors_do_not_evict_your_trajectory(app, recorder):
    visitors = [uuid.uuid4().hex for _ in range(6)]
    for seed, session in enumerate(visitors):  # yours first, then five other visitors' (4 were kept in all)
        ran = raw_result(app.url, fn_index(app.demo, "trajectory"),
                         raw_data(app.url, "trajectory", prompt=PROMPT, steps=2, seed=seed, decode="fast"), session)
        assert ran["success"], ran
    branched = raw_result(app.url, fn_index(app.demo, "branch"),
                          [*raw_data(app.url, "branch", step=1, prompt="a blue square"), None],  # + the run id
                          visitors[0])
    assert branched["success"], branched["output"]  # not "There is no recorded run to branch from"
    assert branched["output"]["data"][0]["branched_from"]["step"] == 1


# --- 30 clients at once ------------------------------------------------------------------------------------------

RETRY = ("Queue is full", "waiting or running")  # what a refused honest client is told: try again


@pytest.mark.slow
def test_thirty_clients_are_all_served_or_told_to_retry(app, recorder, files):
    mix = [("text_to_image", dict(prompt=PROMPT, steps=1)), ("denoise", dict(image=files["picture"], steps=1)),
           ("inpaint", dict(image=files["picture"], mask=files["mask"], prompt=PROMPT, steps=1)),
           ("super_resolve", dict(image=files["small"], scale=2, steps=1, samples=1)),
           ("forward", dict(image=files["picture"], t=100)), ("playground", dict(points=100, iterations=200, steps=5))]
    calls = {api: (fn_index(app.demo, api), raw_data(app.url, api, **values)) for api, values in mix}
    greedy = uuid.uuid4().hex

    def honest(number):
        api = mix[number % len(mix)][0]
        started, told_to_retry = time.perf_counter(), 0
        while time.perf_counter() - started < 120:
            answer = raw_result(app.url, *calls[api])
            if answer["success"]:
                return SimpleNamespace(api=api, wait=time.perf_counter() - started, retries=told_to_retry)
            error = answer["output"].get("error") or ""
            assert any(word in error for word in RETRY), (api, error)  # anything else is a failure
            told_to_retry += 1
            time.sleep(0.25)
        return SimpleNamespace(api=api, wait=None, retries=told_to_retry)

    held, done = [0], threading.Event()

    def watch():  # the most places the greedy session ever held at once
        while not done.is_set():
            held[0] = max(held[0], sum(j["session"] == greedy for j in app.demo.guard.gate.jobs()))
            time.sleep(0.01)

    with ThreadPoolExecutor(35) as pool:
        pool.submit(watch)
        flood = pool.submit(lambda: [join(app, "text_to_image", greedy, prompt=PROMPT, steps=1).status_code
                                     for _ in range(22)])
        hold = pool.submit(lambda: [join(app, "text_to_image", prompt=PROMPT, width=2048, height=2048, steps=150,
                                         num_images=8).status_code for _ in range(5)])
        clients = list(pool.map(honest, range(30)))
        done.set()
    # the queue answers "full" (503) before the job is priced
    assert held[0] <= app.limits.jobs_per_session and set(flood.result()) <= {200, 422, 503}
    assert set(hold.result()) <= {422, 503}
    served = sorted(c.wait for c in clients if c.wait is not None)
    assert len(served) == 30, [c for c in clients if c.wait is None]
    p95 = float(np.percentile(served, 95))
    print(f"30 clients: all served; p95 wait {p95:.2f} s, median {np.median(served):.2f} s, "
          f"{sum(c.retries for c in clients)} told to retry")
