"""Live streaming for generator event handlers: run a task in a worker thread and yield an update per step."""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator

import gradio as gr

from diffdemo.ui.runner import Runner


def stream_task(runner: Runner, task, task_request, request: gr.Request | None,
                on_step: Callable[[object], object | None]) -> Generator:
    """Runs ``runner.run(task, task_request, ...)`` in a thread; yields ``on_step(step)`` for every step where it
    returns something (it runs in the worker, so it may decode a preview), and returns the task's result.

    Use as ``result = yield from stream_task(...)``. Errors (``gr.Error`` from the runner) are re-raised here.
    Closing the generator (Stop, or the page went away) stops the run at the end of its current step.
    """
    updates: queue.Queue = queue.Queue()

    def with_updates(models, req, callback):
        def chained(step) -> None:
            callback(step)  # the runner's: raises Cancelled after Stop
            update = on_step(step)
            if update is not None:
                updates.put(("step", update))

        return task(models, req, chained)

    with_updates.__name__ = getattr(task, "__name__", "task")  # the runner logs failures by this name

    def work() -> None:
        try:
            updates.put(("done", runner.run(with_updates, task_request, request, None)))
        except BaseException as error:  # noqa: BLE001 - handed to the handler's thread and raised there
            updates.put(("error", error))

    threading.Thread(target=work, name=getattr(task, "__name__", "task"), daemon=True).start()
    try:
        while True:
            kind, payload = updates.get()
            if kind == "error":
                raise payload
            if kind == "done":
                return payload
            yield payload
    except GeneratorExit:
        runner.stop(request)
        raise
