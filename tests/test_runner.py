"""The UI runner: Stop ends a run within one step, user errors and crashes become short messages."""
import threading
import time
from types import SimpleNamespace

import gradio as gr
import pytest

from diffdemo.tasks import InvalidRequest
from diffdemo.ui.runner import OUT_OF_MEMORY, Runner
from helpers import wait_until


def slow_task(steps_done: list, total: int = 50, delay: float = 0.02):
    def task(models, request, callback):
        for index in range(total):
            time.sleep(delay)
            steps_done.append(index)
            callback(SimpleNamespace(index=index, total=total))
        return "finished"

    return task


def test_stop_ends_the_run_within_one_step_and_the_next_run_works():
    runner = Runner(models=None)
    request = SimpleNamespace(session_hash="abc")
    done: list = []
    outcome = {}

    def run():
        try:
            outcome["value"] = runner.run(slow_task(done), None, request, None)
        except gr.Error as error:
            outcome["error"] = str(error)

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: len(done) >= 5, 10, "five steps", interval=0.005)
    runner.stop(request)
    steps_at_stop = len(done)
    thread.join(timeout=5)
    assert "Stopped" in outcome["error"]
    assert len(done) <= steps_at_stop + 1  # at most the step in flight finishes
    assert runner.run(slow_task([], total=3, delay=0), None, request, None) == "finished"


def test_stop_only_affects_its_own_session():
    runner = Runner(models=None)
    mine, other = SimpleNamespace(session_hash="mine"), SimpleNamespace(session_hash="other")
    runner.stop(other)  # nothing running there: a no-op
    assert runner.run(slow_task([], total=3, delay=0), None, mine, None) == "finished"


def test_invalid_request_becomes_its_own_message():
    def task(models, request, callback):
        raise InvalidRequest("Width must be a multiple of 8; got 100 (try 96).")

    with pytest.raises(gr.Error, match="multiple of 8"):
        Runner(models=None).run(task, None, None, None)


def test_unexpected_failure_is_reported_without_internals(caplog):
    def task(models, request, callback):
        raise KeyError("conv_in.weight at 0xdeadbeef")

    with pytest.raises(gr.Error) as info:
        Runner(models=None).run(task, None, None, None)
    assert info.value.message.startswith("Something went wrong on the server")
    assert "deadbeef" not in str(info.value) and "Traceback" not in str(info.value)
    assert "try again" in str(info.value)
    assert "conv_in.weight at 0xdeadbeef" in caplog.text  # the details stay in the server log


def test_running_out_of_memory_says_so_and_what_to_try(caplog):
    def task(models, request, callback):
        raise RuntimeError("CUDA out of memory at 0xdeadbeef")

    with pytest.raises(gr.Error) as info:
        Runner(models=None).run(task, None, None, None)
    assert info.value.message == OUT_OF_MEMORY
    assert "CUDA out of memory" in caplog.text  # the details stay in the server log


def test_saved_png_keeps_parameters_chunk(tmp_path):
    from PIL import Image

    image = Image.new("RGB", (16, 16), "red")
    image.info["parameters"] = "a red square\nSteps: 2, Seed: 5"
    result = SimpleNamespace(images=[image], metadata={"task": "text_to_image", "seed": 5})
    (path,) = Runner(models=None, output_dir=tmp_path).save_images(result)
    reopened = Image.open(path)
    assert reopened.format == "PNG"
    assert reopened.info["parameters"].endswith("Seed: 5")
    assert '"seed": 5' in reopened.info["diffdemo"]
