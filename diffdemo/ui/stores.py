"""Runs kept in memory for scrubbing, comparing and branching: a few per visitor, a bounded number in all.

A session's gr.State holds only a run's id (random, 128 bits), so memory stays bounded whatever the visitors do.
Each visitor (Gradio session) keeps their last ``per_session`` runs; when all visitors together hold more than
``total``, the oldest run of whoever holds the most goes, so other visitors' runs never evict a visitor's last one
while fewer than ``total`` visitors are active.
"""
from __future__ import annotations

import threading
import uuid
from collections import OrderedDict

PER_SESSION = 2
TOTAL = 16


def session_of(request) -> str:
    """The Gradio session of ``request`` (a gr.Request, or None for direct calls)."""
    return getattr(request, "session_hash", None) or "default"


class RunStore:
    """Runs by id, at most ``per_session`` per session and ``total`` in all (see the module docstring)."""

    def __init__(self, per_session: int = PER_SESSION, total: int = TOTAL):
        self.per_session, self.total = per_session, total
        self._runs: OrderedDict[str, tuple[str, object]] = OrderedDict()  # id -> (session, run), oldest first
        self._lock = threading.Lock()

    def add(self, run, request=None) -> str:
        """Keeps ``run`` for the session of ``request``; returns its id."""
        run_id, session = uuid.uuid4().hex, session_of(request)
        with self._lock:
            self._runs[run_id] = (session, run)
            mine = [key for key, (owner, _) in self._runs.items() if owner == session]
            for key in mine[: max(0, len(mine) - self.per_session)]:
                del self._runs[key]
            while len(self._runs) > self.total:
                del self._runs[self._oldest_of_the_largest()]
        return run_id

    def clear(self) -> None:
        """Forgets every run (they hold the model set they were made with, e.g. before a model switch)."""
        with self._lock:
            self._runs.clear()

    def get(self, run_id):
        with self._lock:
            held = self._runs.get(run_id) if isinstance(run_id, str) else None
        return None if held is None else held[1]

    def __len__(self) -> int:
        return len(self._runs)

    def _oldest_of_the_largest(self) -> str:
        counts: dict[str, int] = {}
        for owner, _ in self._runs.values():
            counts[owner] = counts.get(owner, 0) + 1
        largest = max(counts.values())
        return next(key for key, (owner, _) in self._runs.items() if counts[owner] == largest)
