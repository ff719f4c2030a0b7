"""Runs tasks for the UI: progress per step, Stop per browser session, errors as short messages, PNG files."""
from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import gradio as gr

from diffdemo.tasks import Cancelled, InvalidRequest, save_png

log = logging.getLogger("diffdemo")
OUTPUT_TTL_SECONDS = 3600


class Runner:
    """Holds the loaded models and runs task functions on them for Gradio event handlers."""

    def __init__(self, models, output_dir: str | Path | None = None):
        self.models = models
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="diffdemo-"))
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def stop(self, request: gr.Request | None = None) -> None:
        """Asks the run of this browser session to stop at the end of its current step."""
        with self._lock:
            event = self._cancel.get(_session(request))
        if event is not None:
            event.set()

    def run(self, task, task_request, request: gr.Request | None, progress: gr.Progress | None):
        """Calls ``task(models, task_request, callback)``; user errors become ``gr.Error`` with their message."""
        session = _session(request)
        event = threading.Event()
        with self._lock:
            self._cancel[session] = event

        def on_step(step) -> None:
            if event.is_set():
                raise Cancelled()
            if progress is not None:
                progress((step.index + 1, step.total), desc="Denoising", unit="steps")

        try:
            return task(self.models, task_request, on_step)
        except InvalidRequest as error:
            raise gr.Error(str(error), title="Please check the input", print_exception=False) from None
        except Cancelled:
            raise gr.Error("Stopped. Press Generate to start again.", title="Stopped", print_exception=False) from None
        except Exception:  # never show a traceback in the browser; keep it in the server log
            log.exception("task %s failed", getattr(task, "__name__", task))
            raise gr.Error("Something went wrong on the server while generating; the details are in the server "
                           "log. Please try again.", title="Error") from None
        finally:
            with self._lock:
                if self._cancel.get(session) is event:
                    del self._cancel[session]

    def save_images(self, result) -> list[str]:
        """Writes the result's images as PNG files (with metadata chunks) and returns their paths."""
        self._clean_old_outputs()
        folder = self.output_dir / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return [save_png(image, folder / f"diffdemo-{result.metadata.get('task', 'image')}-{i}.png", result.metadata)
                for i, image in enumerate(result.images)]

    def _clean_old_outputs(self) -> None:
        cutoff = time.time() - OUTPUT_TTL_SECONDS
        for folder in self.output_dir.glob("*"):
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "default"
