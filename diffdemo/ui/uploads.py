"""Uploads a visitor may send: a total size and a number of files per request, a total per client over a window,
and a sweep that deletes uploads no request used.

Gradio's upload route (``POST /gradio_api/upload``) caps each file (``max_file_size``) but takes up to 1,000 files per
request, runs outside the queue and keeps what it receives for an hour; it also carries no session, so the window
is per client address (everyone whose address is unknown shares one). The request guard (:mod:`.guard`) asks
:meth:`UploadGuard.admit` before Gradio reads a byte (from the request's Content-Length) and
:meth:`UploadGuard.too_many` after, with the list of files Gradio wrote.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace

from gradio.utils import get_upload_folder

from diffdemo.tasks.inputs import open_image
from diffdemo.ui.runner import check_uploads, uploaded_path

SWEEP_EVERY = 60  # seconds between sweeps (each walks the set of uploaded files once)
MB = 1_000_000


class UploadGuard:
    """Bookkeeping for the upload limits (thread-safe). Sizes are bytes, times seconds."""

    def __init__(self, request_bytes: int, files: int, window_bytes: int, window_seconds: float,
                 unused_seconds: float):
        self.request_bytes, self.files = request_bytes, files
        self.window_bytes, self.window_seconds, self.unused_seconds = window_bytes, window_seconds, unused_seconds
        self._sent: dict[str | None, deque] = {}  # address -> (time, bytes) of its recent uploads
        self._used: set[str] = set()
        self._last_sweep = 0.0
        self._lock = threading.Lock()

    def admit(self, address: str | None, length: int | None) -> tuple[int, str] | None:
        """None if an upload of ``length`` bytes from ``address`` may go ahead (and counts it), else the HTTP
        status and one-line reason."""
        if length is None:
            return 411, "An upload must say its size (Content-Length)."
        if length > self.request_bytes:
            return 413, (f"An upload may hold at most {self.request_bytes / MB:g} MB in all; this one has "
                         f"{length / MB:.1f} MB (env DIFFDEMO_UPLOAD_MB).")
        now = time.monotonic()
        with self._lock:
            sent = self._sent.setdefault(address, deque())
            while sent and sent[0][0] < now - self.window_seconds:
                sent.popleft()
            if sum(size for _, size in sent) + length > self.window_bytes:
                return 429, (f"Too many uploads: at most {self.window_bytes / MB:g} MB per "
                             f"{self.window_seconds / 60:g} minutes from one address; try again later (env "
                             f"DIFFDEMO_UPLOAD_WINDOW_MB).")
            sent.append((now, length))
        return None

    def too_many(self, paths: list[str]) -> str | None:
        """The reason to refuse a finished upload of ``paths`` (deleting them), or None."""
        if len(paths) <= self.files:
            return None
        for path in paths:
            _remove(path)
        return f"An upload may hold at most {self.files} files; this one had {len(paths)}."

    def mark_used(self, paths) -> None:
        """Files a request referred to: the sweep leaves them to Gradio's own clean-up."""
        with self._lock:
            self._used.update(paths)

    def sweep(self, uploaded: set, now: float | None = None) -> int:
        """Deletes uploads in ``uploaded`` (Blocks.upload_file_set) older than ``unused_seconds`` that no request
        used, and partial uploads Gradio left in the upload folder (a client that disconnected mid-upload); at most
        once a minute unless ``now`` is given. Returns how many files went."""
        wall = time.time() if now is None else now
        with self._lock:
            if now is None and time.monotonic() - self._last_sweep < SWEEP_EVERY:
                return 0
            self._last_sweep = time.monotonic()
            used = set(self._used)
        removed = 0
        for path in list(uploaded):  # a snapshot: uploads add files meanwhile
            if path not in used and _age(path, wall) > self.unused_seconds:
                removed += _remove(path)
                uploaded.discard(path)
        folder = Path(get_upload_folder())
        for entry in folder.glob("tmp*"):  # NamedTemporaryFile names, only ever at the top of the folder
            if entry.is_file() and _age(str(entry), wall) > self.unused_seconds:
                removed += _remove(str(entry), folder=False)
        with self._lock:
            self._used = {path for path in self._used if os.path.exists(path)}
            recent = time.monotonic() - self.window_seconds  # addresses with nothing in the window are forgotten
            self._sent = {address: sent for address, sent in self._sent.items() if sent and sent[-1][0] >= recent}
        return removed


def uploaded_image(payload, name: str, *, max_pixels: int, max_side: int, mode: str):
    """An image event input sent unprocessed (a FileData payload, or None): only a file Gradio received, its size
    checked before it is decoded, converted to ``mode``. Raises InvalidRequest (the task's own messages)."""
    path = uploaded_path(payload)
    if path is None:
        return None
    check_uploads(SimpleNamespace(image=path))  # "The image must be uploaded as a file..."
    return open_image(path, name, max_pixels=max_pixels, max_side=max_side).convert(mode)


def _age(path: str, now: float) -> float:
    try:
        return now - os.lstat(path).st_ctime
    except OSError:
        return 0.0


def _remove(path: str, folder: bool = True) -> int:
    try:
        os.remove(path)
    except OSError:
        return 0
    if folder:
        try:
            os.rmdir(os.path.dirname(path))  # its folder, named by the file's hash, if now empty
        except OSError:
            pass
    return 1
