"""The model thread and one-thread work beside it (diffdemo/engine/threads.py)."""
from __future__ import annotations

import contextvars
import os
import threading
import time

import pytest
import torch

from diffdemo.engine import threads
from diffdemo.engine.threads import ModelThread, model_thread, one_thread, single_threaded_beside

REQUEST_ID = contextvars.ContextVar("request_id", default=None)


def test_every_call_runs_on_the_same_thread_and_returns_its_result():
    worker = ModelThread(name="test-model")
    seen = {worker.run(lambda: threading.get_ident()) for _ in range(3)}
    callers = [threading.Thread(target=lambda: seen.add(worker.run(threading.get_ident))) for _ in range(3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(seen) == 1 and threading.get_ident() not in seen
    assert worker.run(lambda a, b=0: a + b, 2, b=3) == 5


def test_errors_come_back_to_the_caller_and_the_thread_goes_on():
    worker = ModelThread()

    def fails():
        raise KeyError("in the model thread")

    with pytest.raises(KeyError, match="in the model thread"):
        worker.run(fails)
    assert worker.run(lambda: "still serving") == "still serving"


def test_the_callers_context_variables_go_with_the_call():
    worker = ModelThread()
    token = REQUEST_ID.set("event-7")  # Gradio finds its progress bar through context variables
    try:
        assert worker.run(REQUEST_ID.get) == "event-7"
    finally:
        REQUEST_ID.reset(token)
    assert worker.run(REQUEST_ID.get) is None


def test_a_call_from_the_model_thread_itself_runs_at_once():
    worker = ModelThread()
    assert worker.run(lambda: worker.run(lambda: worker.is_current)) is True
    assert not worker.is_current


def test_the_model_thread_uses_its_creators_thread_count_while_another_thread_is_in_one_thread():
    assert torch.get_num_threads() > 1  # conftest: two
    entered, release = threading.Event(), threading.Event()

    def beside():
        with one_thread():  # torch hands this count to threads that start meanwhile
            entered.set()
            release.wait()

    side = threading.Thread(target=beside)
    side.start()
    entered.wait()
    try:
        worker = ModelThread()
        assert worker.run(torch.get_num_threads) == worker.num_threads == torch.get_num_threads()
    finally:
        release.set()
        side.join()


def test_one_process_has_one_model_thread_and_a_forked_child_gets_its_own(monkeypatch):
    first = model_thread()
    assert model_thread() is first
    parent = os.getpid()
    monkeypatch.setattr(threads.os, "getpid", lambda: parent + 1)  # as in a child after fork
    child = model_thread()
    assert child is not first and child.run(lambda: child.is_current)


def test_one_thread_sets_and_restores_the_count():
    before = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), one_thread():
        raise RuntimeError("a failure inside")
    assert torch.get_num_threads() == before


def test_work_beside_the_model_thread_runs_on_one_cpu_thread_and_on_it_with_all():
    counts = single_threaded_beside(torch.get_num_threads)
    worker = model_thread()
    assert counts() == 1
    assert worker.run(counts) == worker.num_threads


def test_work_beside_the_model_thread_runs_one_call_at_a_time():
    inside, most, lock = [0], [0], threading.Lock()

    @single_threaded_beside
    def decode():  # what many visitors scrubbing at once ask for
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.02)
        with lock:
            inside[0] -= 1

    threads = [threading.Thread(target=decode) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert most[0] == 1


@pytest.mark.slow
def test_the_app_runs_torch_with_more_than_one_cpu_thread_only_on_the_model_thread(tiny_models, tmp_path):
    """A second thread that uses torch with several CPU threads gives the process a second OpenMP pool, which
    slows every model call 2-2.5x on a CPU. Build and serve the app with every thread watched: only the model
    thread may call torch with more than one CPU thread (scrubbing, from here, runs with one)."""
    import sys

    from gradio_client import Client

    from helpers import free_port
    from diffdemo.tasks import TrajectoryRequest, trajectory
    from diffdemo.tasks.trajectory import frame
    from diffdemo.ui.app import build_demo, configure_queue

    worker = model_thread()
    run = worker.run(trajectory, tiny_models, TrajectoryRequest(prompt="a red circle", steps=2, seed=1)).run
    offenders = set()

    def watch(frame_, event, function):
        if event != "c_call" or worker.is_current:
            return
        owner = getattr(function, "__self__", None)
        module = getattr(function, "__module__", None) or type(owner).__module__ or ""
        settings = function in (torch.get_num_threads, torch.set_num_threads)  # one_thread() itself
        if module.startswith("torch") and not settings and torch.get_num_threads() > 1:
            offenders.add((threading.current_thread().name, getattr(function, "__qualname__", "?"),
                           f"{frame_.f_code.co_filename}:{frame_.f_lineno}"))

    threading.setprofile(watch)  # the server's threads start after this
    sys.setprofile(watch)
    try:
        demo = configure_queue(build_demo(tiny_models, output_dir=tmp_path))
        _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
        try:
            client = Client(url, verbose=False)
            client.predict(prompt="a red circle", steps=2, seed=1, api_name="/text_to_image")
            client.predict(prompt="a red circle", steps=2, seed=1, api_name="/trajectory")  # frames, GIFs, MP4s
            frame(run, 0, "x_t")  # as the scrub slider's handler does, on a server thread
        finally:
            demo.close()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    assert not offenders, sorted(offenders)[:10]
