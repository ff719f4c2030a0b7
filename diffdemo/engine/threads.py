"""Where model work runs: one long-lived thread per process, and one CPU thread for quick work beside it.

Why it matters on a CPU: OpenMP (libgomp, which PyTorch's CPU builds use) gives every thread that calls into torch
its own pool of worker threads, kept until that thread exits. While a process holds more pool threads than it has
cores, libgomp cuts the time idle workers spin before they sleep from about 3 ms to about 100 spins, and every
operation then waits for sleeping workers to wake. A small model, whose operations last microseconds, becomes
2-2.5x slower (``bench/openmp.py``; docs/BENCHMARKS.md). A web app calls the model from the server's worker
threads, after loading it on the main thread, so without care it always has two pools or more. Here the models are
loaded and run on :func:`model_thread`, and work that runs beside it (scrubbing a finished run, drawing a frame)
uses one CPU thread (:func:`one_thread`, :func:`single_threaded_beside`), which needs no pool.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import queue
import threading
from concurrent.futures import Future

import torch

_lock = threading.Lock()
_current: ModelThread | None = None
_beside = threading.Lock()  # one call beside the model thread at a time, whoever asks: one CPU core at most


class ModelThread:
    """One daemon thread that runs the calls handed to :meth:`run`, one at a time, in the order they came. It uses
    as many CPU threads as the thread that made it did (``torch.get_num_threads()``: one per core by default)."""

    def __init__(self, name: str = "diffdemo-model"):
        self.pid = os.getpid()
        self.num_threads = torch.get_num_threads()
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def is_current(self) -> bool:
        """True when the calling code already runs on this thread."""
        return threading.current_thread() is self._thread

    def run(self, fn, /, *args, **kwargs):
        """Calls ``fn(*args, **kwargs)`` on the model thread and returns its result or raises its exception.

        The caller's context variables go with the call (Gradio finds its progress bar through them). Called from
        the model thread itself, ``fn`` runs at once: a task may call another task.
        """
        if self.is_current:
            return fn(*args, **kwargs)
        future: Future = Future()
        self._calls.put((future, contextvars.copy_context(), fn, args, kwargs))
        return future.result()

    def _serve(self) -> None:
        torch.set_num_threads(self.num_threads)  # not whatever another thread's one_thread() left meanwhile
        while True:
            future, context, fn, args, kwargs = self._calls.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(context.run(fn, *args, **kwargs))
            except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
                future.set_exception(error)
            del future, context, fn, args, kwargs  # a finished call's tensors are not kept alive until the next


def model_thread() -> ModelThread:
    """The process's model thread, started on first use (again in a forked child, which inherits no threads)."""
    global _current
    with _lock:
        if _current is None or _current.pid != os.getpid():
            _current = ModelThread()
        return _current


@contextlib.contextmanager
def one_thread():
    """Runs the block with one intra-op CPU thread on the calling thread (restored afterwards). With OpenMP the
    setting belongs to the calling thread, and one thread starts no pool of workers."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def single_threaded_beside(fn):
    """Decorates quick model work that the UI may call from any thread, beside a running job (a scrub's decode):
    on the model thread it runs as it is; anywhere else under :func:`one_thread`, one such call at a time in the
    whole process, so that visitors scrubbing at once take one core from the job, not all of them."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _current is not None and _current.is_current:
            return fn(*args, **kwargs)
        with _beside, one_thread():
            return fn(*args, **kwargs)

    return wrapper
