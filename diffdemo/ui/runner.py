"""Runs tasks for the UI: one model job at a time, progress per step, Stop per browser session, uploaded files
only, errors (out of memory included) as short messages, and result PNGs that do not pile up on disk."""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from diffdemo.engine.lora import LoraError
from diffdemo.engine.sampling import throttled
from diffdemo.engine.threads import model_thread
from diffdemo.tasks import Cancelled, InvalidRequest, save_png
from diffdemo.tasks.budget import TimeLimitExceeded
from diffdemo.tasks.common import free_memory, is_out_of_memory

log = logging.getLogger("diffdemo")
OUTPUT_TTL_SECONDS = 3600
MAX_OUTPUT_FOLDERS = 500  # result folders kept whatever their age, so disk use stays bounded under heavy load
# Progress updates sent to the browser at most this often (and at the last step): each is a queue message the
# server handles on the cores the model is using, and four a second is smooth enough for a progress bar.
PROGRESS_INTERVAL = 0.25
UPLOAD_FIELDS = ("image", "mask")  # request fields that may hold a file: only files Gradio received are accepted
OUT_OF_MEMORY = ("The server ran out of memory for this request. Please try again with a smaller size, fewer "
                 "images or fewer steps.")
_RAN_OUT = object()  # what _call returns after running out of memory (the message is OUT_OF_MEMORY)


class Runner:
    """Holds the loaded models and runs task functions on them for Gradio event handlers.

    Diffusers modules are not thread-safe, so tasks run one at a time whichever tab started them (Gradio's shared
    concurrency group already queues them; the lock also covers work that outlives its event, such as a run
    finishing its last step after Stop). Tasks and the decoding of their results run on the process's model
    thread, whichever server thread asked (:mod:`diffdemo.engine.threads` says why). ``output_ttl`` (seconds) and
    ``max_outputs`` bound the result folders.
    """

    def __init__(self, models, output_dir: str | Path | None = None, switcher=None):
        self.models = models
        self.switcher = switcher  # an engine.switching.ModelSwitcher when --models-dir was given, else None
        self.on_switch: list = []  # called before a switch: whatever keeps results of the old model forgets them
        self.after_switch: list = []  # called with the new model set, still under the model lock (ui/limits.py)
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="diffdemo-"))
        if output_dir is None:  # ours: removed when the process exits
            atexit.register(shutil.rmtree, self.output_dir, ignore_errors=True)
        self.output_ttl = OUTPUT_TTL_SECONDS
        self.max_outputs = MAX_OUTPUT_FOLDERS
        self.job_seconds: float | None = None  # a job past this is stopped at the end of its step (ui/limits.py)
        self._cancel: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._blocks, self._last_sweep = None, 0.0

    @property
    def active(self) -> int:
        """How many runs are in progress or waiting for the models (all sessions)."""
        with self._lock:
            return sum(len(events) for events in self._cancel.values())

    def stop(self, request: gr.Request | None = None) -> None:
        """Asks the runs of this browser session to stop at the end of their current step (also used when the
        session's tab is closed)."""
        with self._lock:
            events = list(self._cancel.get(_session(request), ()))
        for event in events:
            event.set()

    def run(self, task, task_request, request: gr.Request | None, progress: gr.Progress | None):
        """Calls ``task(models, task_request, callback)``; user errors become ``gr.Error`` with their message."""
        session, event = _session(request), threading.Event()
        with self._lock:
            self._cancel.setdefault(session, set()).add(event)
        try:
            check_uploads(task_request)
            with self._model_lock:
                result = self._call(task, task_request, event, progress)
        except (InvalidRequest, LoraError) as error:
            raise gr.Error(str(error), title="Please check the input", print_exception=False) from None
        except TimeLimitExceeded as error:
            raise gr.Error(str(error), title="Time limit", print_exception=False) from None
        except Cancelled:
            raise gr.Error("Stopped. Press Generate to start again.", title="Stopped", print_exception=False) from None
        except Exception:  # never show a traceback in the browser; keep it in the server log
            log.exception("task %s failed", getattr(task, "__name__", task))
            raise gr.Error("Something went wrong on the server while generating; the details are in the server "
                           "log. Please try again.", title="Error") from None
        finally:
            with self._lock:
                self._cancel[session].discard(event)
                if not self._cancel[session]:
                    del self._cancel[session]
        if result is _RAN_OUT:
            raise gr.Error(OUT_OF_MEMORY, title="Out of memory", print_exception=False)
        return result

    def model_names(self) -> list[str]:
        """The models that :meth:`switch_model` can load (empty when switching is off)."""
        return self.switcher.names() if self.switcher is not None else []

    def switch_model(self, name: str) -> str:
        """Loads the model ``name`` in place of the current one, under the model lock (runs in progress finish
        first); the previous model and the runs made with it are freed. Raises ``gr.Error`` with the reason."""
        from diffdemo.engine.loading import ModelLoadError

        if self.switcher is None:
            raise gr.Error("Switching models is off: start the app with --models-dir FOLDER.", print_exception=False)
        with self._model_lock:
            for forget in self.on_switch:
                forget()
            self.models = None
            try:
                model_thread().run(self.switcher.switch, name)
            except ModelLoadError as error:
                raise gr.Error(str(error), title="Model not loaded", print_exception=False) from None
            finally:
                self.models = self.switcher.current
            for hook in self.after_switch:
                hook(self.models)
        return self.switcher.current_name

    def _call(self, task, task_request, event: threading.Event, progress):
        """Runs the task (holding the model lock); after running out of memory, frees it and returns a marker."""
        started, limit = time.monotonic(), self.job_seconds
        report = None if progress is None else throttled(
            lambda step: progress((step.index + 1, step.total), desc="Denoising", unit="steps"), PROGRESS_INTERVAL)

        def on_step(step) -> None:
            if event.is_set():
                raise Cancelled()
            if limit is not None and time.monotonic() - started > limit:
                raise TimeLimitExceeded(limit)
            if report is not None:
                report(step)

        if event.is_set():  # stopped while waiting for the model
            raise Cancelled()
        try:
            return model_thread().run(task, self.models, task_request, on_step)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            # a string, not the error: it holds the failed run's frames and their tensors
            log.error("task %s ran out of memory: %s", getattr(task, "__name__", task), str(error))
        free_memory()  # the error and its frames are gone now, so this frees what the run held
        return _RAN_OUT

    def watch_cache(self, blocks) -> None:
        """Also cleans the Gradio cache of ``blocks`` on its ``delete_cache`` schedule (see
        :func:`clean_gradio_cache`), each time results are saved."""
        self._blocks = blocks

    def save_images(self, result) -> list[str]:
        """Writes the result's images as PNG files (with metadata chunks) and returns their paths. On the model
        thread: a trajectory's frames are decoded only now. A model event holds its queue slot until it returns, so
        this waits for no other job."""
        return model_thread().run(self._save_images, result)

    def _save_images(self, result) -> list[str]:
        self._clean_old_outputs()
        schedule = getattr(self._blocks, "delete_cache", None)
        if schedule and time.time() - self._last_sweep >= schedule[0]:
            self._last_sweep = time.time()
            clean_gradio_cache(self._blocks, schedule[1])
        folder = self.output_dir / uuid.uuid4().hex
        folder.mkdir(parents=True)
        # the file name comes from the task's own name, never from anything the user typed
        return [save_png(image, folder / f"diffdemo-{result.metadata.get('task', 'image')}-{i}.png", result.metadata)
                for i, image in enumerate(result.images)]

    def _clean_old_outputs(self) -> None:
        """Deletes result folders older than ``output_ttl`` and the oldest beyond ``max_outputs - 1``."""
        folders = []
        for folder in self.output_dir.iterdir():
            try:
                if _is_result_folder(folder):
                    folders.append((folder.stat().st_mtime, folder))
            except FileNotFoundError:  # deleted meanwhile
                continue
        folders.sort()
        cutoff, excess = time.time() - self.output_ttl, len(folders) - self.max_outputs + 1
        for index, (mtime, folder) in enumerate(folders):
            if index < excess or mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)


def clean_gradio_cache(blocks, age: float) -> None:
    """Deletes the files Gradio copied for ``blocks`` (results, uploads) that are older than ``age`` seconds, as
    ``gr.Blocks(delete_cache=...)`` does. Gradio's own scheduled clean-up (6.x) walks the live sets of files and
    stops for good the first time a request adds one meanwhile ("Set changed size during iteration"), after which
    the cache grows without bound; this walks snapshots instead.

    A file's age is read from its ctime. Gradio touches a cached copy when it hands the same content out again, so
    a reused copy counts as new (``tests/test_soak.py`` checks that this Gradio still does)."""
    now = time.time()
    keep = set().union(*(getattr(block, "keep_in_cache", set()) for block in list(blocks.blocks.values())))
    for files in list(blocks.temp_file_sets):
        for path in list(files):  # a snapshot: requests add files meanwhile
            try:
                if path in keep or now - os.lstat(path).st_ctime < age:
                    continue
                os.remove(path)
                os.rmdir(os.path.dirname(path))  # its folder (named by the file's hash) if now empty
            except OSError:  # already gone, or the folder holds another file
                pass
            if not os.path.exists(path):
                files.discard(path)


def named(name: str, function):
    """``function``, renamed ``name`` (an event handler: its endpoint's ``api_name``), for the tab handler factories.

    Gradio knows an event's function by its ``__name__`` (``BlockFunction.name``): the request prices and the queue
    gate (ui/limits.py), the ZeroGPU wrapping (ui/space.py) and the server log look a job up by it, and so do the
    runner and the live stream (ui/live.py) for a task they run. A factory's inner function would otherwise be
    called ``run`` or ``text_to_image_event``; named after its endpoint, every one of them agrees.
    """
    function.__name__ = name
    return function


def uploaded_path(payload):
    """The file path in an unprocessed file payload (Gradio's FileData, as events with ``preprocess=False``
    receive it); anything else is returned as it is, for :func:`check_uploads` and the task to judge."""
    if isinstance(payload, dict):
        return payload.get("path")
    return getattr(payload, "path", payload)


def check_uploads(task_request) -> None:
    """Raises :class:`InvalidRequest` when an ``image``/``mask`` field names a file outside Gradio's upload folder:
    a path typed by an API client, or a picture Gradio opened from one. Uploads and examples live in that folder."""
    folder = Path(get_upload_folder()).resolve()
    for name in UPLOAD_FIELDS:
        value = getattr(task_request, name, None)
        path = value if isinstance(value, (str, os.PathLike)) else getattr(value, "filename", None)
        if path and not _inside(path, folder):
            raise InvalidRequest(f"The {name} must be uploaded as a file; paths and addresses on the server are "
                                 f"not accepted.")


def _inside(path, folder: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(folder)
    except (OSError, TypeError, ValueError):  # a name too long, a NUL byte, bytes...: not an upload either
        return False


def _is_result_folder(path: Path) -> bool:
    """Folders :meth:`Runner.save_images` (and the trajectory export) create: 32 hex digits, nothing else."""
    return len(path.name) == 32 and all(c in "0123456789abcdef" for c in path.name) and path.is_dir()


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "default"
