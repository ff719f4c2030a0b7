"""Helpers for the hardening tests: a fast live app (tiny models + the embedded pixel denoiser, launched the way
app.py launches it), a recorder of when each job holds the model, a browser-like HTTP session, and test images.

Imported by tests/test_concurrency.py, test_soak.py, test_bad_input.py and test_security.py (not a test itself).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import socket
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from types import SimpleNamespace

import httpx
import numpy as np
from helpers import free_port, wait_until
from PIL import Image

# (tab module, the task function its handler calls): wrapping that name wraps every job the tab starts
TAB_TASKS = (("diffdemo.ui.text_to_image_tab", "text_to_image"), ("diffdemo.ui.inpaint_tab", "inpaint"),
             ("diffdemo.ui.denoise_tab", "denoise"), ("diffdemo.ui.super_resolution_tab", "super_resolve"),
             ("diffdemo.ui.trajectory_tab", "trajectory"))
TIMEOUT = 60


def fast_model_set(tiny_models, embedded_models):
    """The tiny model set (64 px) with the embedded pixel denoiser, so every tab, denoising included, runs."""
    return dataclasses.replace(tiny_models, denoiser=embedded_models.denoiser)


def speeds():
    """Fixed model speeds for pricing requests in tests (seconds per call; the tiny models take about this)."""
    from diffdemo.engine.speed import Speed, Speeds

    call = Speed(fixed=0.002, per_area=0.008)
    return Speeds(unet=call, vae=call, upscaler=call, upscaler_vae=call, denoiser=call)


def local_limits(**changes):
    """The limits app.py sets for a local CPU server (no environment variables), with ``changes``."""
    from diffdemo.ui.limits import Limits

    return dataclasses.replace(Limits.for_server(public=False, gpu=False, environ={}), **changes)


@contextlib.contextmanager
def launched(models, output_dir, *, delete_cache: tuple[int, int] | None = None, limits=None, auth=None):
    """The whole app for ``models``, launched as app.py does (queue, limits and request guard, errors shown);
    yields a namespace with ``url``, ``port``, ``demo`` and ``runner``. ``delete_cache`` overrides the cache
    clean-up schedule; ``limits`` (default :func:`local_limits`) and ``auth`` as app.py's options would set them."""
    from diffdemo.ui.app import build_demo, configure_queue
    from diffdemo.ui.limits import install_limits

    demo = build_demo(models, output_dir=output_dir)
    if delete_cache is not None:
        demo.delete_cache = delete_cache
    demo = configure_queue(demo)
    extra = install_limits(demo, limits or local_limits(), speeds())
    port = free_port()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=port, quiet=True, auth=auth, **extra)
    try:
        yield SimpleNamespace(url=url, port=port, demo=demo, runner=demo.runner)
    finally:
        demo.close()


def fn_index(demo, api_name: str) -> int:
    return next(i for i, fn in demo.fns.items() if fn.api_name == api_name)


# --- watching jobs -------------------------------------------------------------------------------------------

@dataclass
class Job:
    """One call of a tab's task: when it entered and left (``time.perf_counter``), and when each step ended."""

    task: str
    start: float
    end: float | None = None
    steps: list = field(default_factory=list)
    error: str | None = None


class JobRecorder:
    """Wraps every tab's task function (see :data:`TAB_TASKS`). The wrapper runs where the task runs, inside the
    runner, so ``start``/``end`` bracket the job's use of the models. ``step_delay`` slows each step down;
    ``gate`` (a threading.Event) holds each job at the door until it is set."""

    def __init__(self):
        self.jobs: list[Job] = []
        self.step_delay = 0.0
        self.gate: threading.Event | None = None
        self.failure: BaseException | None = None  # raised once, at the end of the next job's first step
        self._lock = threading.Lock()

    def install(self, monkeypatch) -> None:
        import importlib

        for module_name, name in TAB_TASKS:
            module = importlib.import_module(module_name)
            monkeypatch.setattr(module, name, self.wrap(getattr(module, name)))

    def reset(self, *, step_delay: float = 0.0, gate: threading.Event | None = None,
              failure: BaseException | None = None) -> None:
        with self._lock:
            self.jobs, self.step_delay, self.gate, self.failure = [], step_delay, gate, failure

    def wrap(self, task):
        def recorded(models, request, callback=None):
            job = Job(task.__name__, time.perf_counter())
            with self._lock:
                self.jobs.append(job)
            delay, gate = self.step_delay, self.gate
            if gate is not None:
                gate.wait(TIMEOUT)

            def on_step(step) -> None:
                time.sleep(delay)
                job.steps.append(time.perf_counter())
                with self._lock:
                    failure, self.failure = self.failure, None
                if failure is not None:
                    raise failure
                if callback is not None:
                    callback(step)

            try:
                return task(models, request, on_step)
            except BaseException as error:
                job.error = type(error).__name__
                raise
            finally:
                job.end = time.perf_counter()

        recorded.__name__ = task.__name__
        return recorded

    def wait_for(self, condition, timeout: float = TIMEOUT) -> None:
        wait_until(condition, timeout, lambda: f"a condition; jobs: {self.jobs}", interval=0.005)

    def overlapping(self) -> list[tuple[Job, Job]]:
        """Pairs of jobs that held the models at the same time (a finished job's interval is [start, end])."""
        jobs = sorted(self.jobs, key=lambda j: j.start)
        return [(a, b) for a, b in zip(jobs, jobs[1:]) if a.end is None or b.start < a.end]


# --- a browser tab over plain HTTP ---------------------------------------------------------------------------

class BrowserSession:
    """What a browser tab does over HTTP: a heartbeat connection, the queue's event stream, joining the queue and
    calling queue-less events (Stop). :meth:`close` drops both connections, as closing the tab does."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.session_hash = uuid.uuid4().hex[:12]
        self.http = httpx.Client(timeout=TIMEOUT)
        self._sockets = [self._stream(f"/gradio_api/heartbeat/{self.session_hash}")]

    def _stream(self, path: str) -> socket.socket:
        host, port = httpx.URL(self.url).host, httpx.URL(self.url).port
        sock = socket.create_connection((host, port), timeout=TIMEOUT)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
        sock.recv(1)  # the response has started: the server holds the connection
        return sock

    def join(self, fn: int, data: list) -> str:
        response = self.http.post(f"{self.url}/gradio_api/queue/join", json={
            "data": data, "fn_index": fn, "session_hash": self.session_hash, "event_data": None, "trigger_id": None})
        response.raise_for_status()
        if len(self._sockets) == 1:
            self._sockets.append(self._stream(f"/gradio_api/queue/data?session_hash={self.session_hash}"))
        return response.json()["event_id"]

    def call(self, fn: int, data: list | None = None) -> httpx.Response:
        """A queue-less event (``queue=False``), as the page calls it."""
        return self.http.post(f"{self.url}/gradio_api/run/predict", json={
            "data": data or [], "fn_index": fn, "session_hash": self.session_hash, "event_data": None,
            "trigger_id": None})

    def cancel(self, fn: int, event_id: str) -> None:
        """What the page sends for the events listed in a button's ``cancels``."""
        self.http.post(f"{self.url}/gradio_api/cancel", json={
            "session_hash": self.session_hash, "fn_index": fn, "event_id": event_id})

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self.http.close()


def raw_data(url: str, api_name: str, **values) -> list:
    """The positional ``data`` list of ``api_name`` as the page sends it: ``values`` by parameter name, the
    endpoint's defaults (from ``/gradio_api/info``) for the rest, None where there is no default."""
    parameters = _parameters(url, api_name)
    unknown = set(values) - {p["parameter_name"] for p in parameters}
    assert not unknown, f"/{api_name} has no parameter {unknown}"
    return [values[p["parameter_name"]] if p["parameter_name"] in values else p.get("parameter_default")
            for p in parameters]


@functools.cache
def _parameters(url: str, api_name: str) -> list[dict]:
    info = httpx.get(f"{url.rstrip('/')}/gradio_api/info", timeout=TIMEOUT).json()
    return info["named_endpoints"][f"/{api_name}"]["parameters"]


def upload(url: str, path) -> dict:
    """Uploads ``path`` as the page does; returns the file's payload for a queue join."""
    with open(path, "rb") as handle:
        response = httpx.post(f"{url.rstrip('/')}/gradio_api/upload", files={"files": handle}, timeout=TIMEOUT)
    response.raise_for_status()
    return {"path": response.json()[0], "orig_name": os.path.basename(str(path)),
            "meta": {"_type": "gradio.FileData"}}


def stop_fn_index(demo) -> int:
    """A Stop button's own event (``runner.stop``, queue-less), as opposed to the unload event."""
    return next(i for i, fn in demo.fns.items()
                if fn.fn == demo.runner.stop and any(trigger == "click" for _, trigger in fn.targets))


def raw_result(url: str, fn: int, data: list, session: str | None = None) -> dict:
    """Joins the queue with ``data`` sent as it is (no client-side processing; a new session unless ``session``
    is given) and returns the completed message: ``{"success": bool, "output": {"data": [...]} or {"error": ""}}``."""
    session = session or uuid.uuid4().hex[:12]
    base = url.rstrip("/")
    body = {"data": data, "fn_index": fn, "session_hash": session, "event_data": None, "trigger_id": None}
    with httpx.Client(timeout=TIMEOUT) as http:  # json.dumps writes NaN and Infinity, as some clients do
        joined = http.post(f"{base}/gradio_api/queue/join", content=json.dumps(body),
                           headers={"content-type": "application/json"})
        if joined.status_code != 200:  # refused before it was queued: the message(s), as clients show them
            return {"success": False, "status": joined.status_code, "output": {"error": refusal(joined)}}
        with http.stream("GET", f"{base}/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message
    raise AssertionError("the event stream ended without a result")


def refusal(response: httpx.Response) -> str:
    """The message of a refused queue join: a validator's messages (422), else the detail or the text."""
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text
    if isinstance(detail, list):
        return " ".join(d.get("message", "") for d in detail if isinstance(d, dict) and d.get("is_valid") is False)
    return detail if isinstance(detail, str) else response.text


# --- test images ---------------------------------------------------------------------------------------------

def write_image(path, mode: str = "RGB", size: tuple[int, int] = (64, 64), fmt: str = "PNG") -> str:
    """A seeded random picture in ``mode`` (RGB, RGBA, L, P, CMYK, I;16, 1...) saved as ``fmt``; returns the path."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    elif mode == "P":
        image = rgb.quantize(16)
    else:
        image = rgb.convert(mode)
    image.save(path, format=fmt)
    return str(path)


def write_mask(path, size: tuple[int, int] = (64, 64), box: tuple[int, int, int, int] = (16, 16, 48, 48)) -> str:
    """White (repaint) inside ``box`` (left, top, right, bottom), black elsewhere."""
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[box[1]:box[3], box[0]:box[2]] = 255
    Image.fromarray(mask).save(path)
    return str(path)


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width``×``height`` black pixels: kilobytes on disk, width·height pixels decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    rows_per_piece = max(1, 1_000_000 // len(row))
    pieces = [packer.compress(row * min(rows_per_piece, height - y)) for y in range(0, height, rows_per_piece)]
    data = b"".join(pieces) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
