"""Fair shares of the queue: at most N jobs per visitor (session) and per client address, and an operator's cancel.

Gradio's queue is first come, first served and only bounded in total, so one client could take every place. The
gate gives each job a ticket when the queue accepts it (the event's validator, before the job is queued) and takes
it back when the job ends. A job can also leave the queue without running, and its ticket goes with it: cancelled
while waiting (``/cancel`` names its event id, which the request guard learned from the join's answer), or dropped
by Gradio when its session's event stream disconnects; at the latest after ``ticket_seconds``. Nothing else frees
a place (pressing a Stop button alone leaves queued jobs queued), so a client cannot free places it still holds.

Client addresses: the socket's peer, unless the app runs behind ``proxy_hops`` trusted proxies (1 on a Hugging
Face Space, env DIFFDEMO_PROXY_HOPS), which append it to X-Forwarded-For. Loopback peers without a proxy (a share
link's tunnel, the machine itself) are unknown: no per-address limit applies to them.
"""
from __future__ import annotations

import contextvars
import ipaddress
import threading
import time
from dataclasses import dataclass, field


class Refused(Exception):
    """The gate will not take this job; the message says why and what to do, in one sentence."""


class OperatorCancelled(Exception):
    """The operator cancelled this job while it waited."""


@dataclass(eq=False)
class Ticket:
    session: str
    address: str | None
    admitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    what: str = ""
    event_id: str | None = None  # Gradio's id for the queued job, once the join has answered


@dataclass
class Join:
    """The ticket a queue join was given: the request guard sets one per join request (:data:`JOIN`), the
    validator fills it in, and the guard links it to the event id the join answers with."""

    ticket: Ticket | None = None


JOIN: contextvars.ContextVar[Join | None] = contextvars.ContextVar("diffdemo_join", default=None)


def client_address(peer: str | None, forwarded_for: str | None, proxy_hops: int) -> str | None:
    """The client's address: the peer, or the one ``proxy_hops`` trusted proxies put in X-Forwarded-For; None when
    unknown (a loopback peer with no proxy in front, or fewer forwarded addresses than trusted hops)."""
    if proxy_hops > 0:
        hops = [part.strip() for part in (forwarded_for or "").split(",") if part.strip()]
        return hops[-proxy_hops] if len(hops) >= proxy_hops else None
    try:
        return None if peer is None or ipaddress.ip_address(peer).is_loopback else peer
    except ValueError:  # "testclient" and other non-addresses
        return None


class JobGate:
    """Tickets for queued and running jobs, by session and by address (thread-safe)."""

    def __init__(self, per_session: int, per_address: int, ticket_seconds: float = 3600):
        self.per_session, self.per_address, self.ticket_seconds = per_session, per_address, ticket_seconds
        self._tickets: list[Ticket] = []
        self._cancelled_before: dict[str | None, float] = {}  # session (None: everyone) -> operator's cancel time
        self._lock = threading.Lock()

    def admit(self, session: str, address: str | None, what: str = "") -> None:
        """Gives the job a ticket, or raises :class:`Refused` when its session or address already holds its share."""
        with self._lock:
            self._expire()
            if sum(t.session == session for t in self._tickets) >= self.per_session:
                raise Refused(f"You already have {self.per_session} jobs waiting or running; wait for one to finish, "
                              f"then try again (the limit per visitor: --jobs-per-session, env "
                              f"DIFFDEMO_JOBS_PER_SESSION).")
            if address is not None and sum(t.address == address for t in self._tickets) >= self.per_address:
                raise Refused(f"Your address already has {self.per_address} jobs waiting or running; wait for one to "
                              f"finish, then try again (env DIFFDEMO_JOBS_PER_ADDRESS).")
            ticket = Ticket(session, address, what=what)
            self._tickets.append(ticket)
        join = JOIN.get()
        if join is not None:
            join.ticket = ticket

    def start(self, session: str) -> Ticket | None:
        """The session's oldest waiting ticket, now running (None if it has none: a job the gate never saw).
        Raises :class:`OperatorCancelled` for a job admitted before the operator cancelled its session's jobs."""
        with self._lock:
            ticket = next((t for t in self._tickets if t.session == session and t.started is None), None)
            cutoff = max(self._cancelled_before.get(session, 0.0), self._cancelled_before.get(None, 0.0))
            if ticket is not None and ticket.admitted < cutoff:
                self._tickets.remove(ticket)
                raise OperatorCancelled()
            if ticket is not None:
                ticket.started = time.monotonic()
            return ticket

    def finish(self, ticket: Ticket | None) -> None:
        with self._lock:
            if ticket in self._tickets:
                self._tickets.remove(ticket)

    def link(self, ticket: Ticket, event_id: str) -> None:
        ticket.event_id = event_id

    def drop_event(self, event_id: str) -> None:
        """Forgets the ticket of the queued job ``event_id`` if it has not started (it was cancelled)."""
        with self._lock:
            self._tickets = [t for t in self._tickets if t.event_id != event_id or t.started is not None]

    def drop_waiting(self, session: str) -> None:
        """Forgets the session's tickets whose jobs have not started (Gradio dropped them: the session's event
        stream disconnected)."""
        with self._lock:
            self._tickets = [t for t in self._tickets if t.session != session or t.started is not None]

    def cancel(self, session: str | None = None) -> list[str]:
        """The operator's cancel: jobs of ``session`` (None: everyone's) admitted until now will not start; returns
        the sessions whose jobs are running, for the runner to stop."""
        with self._lock:
            self._cancelled_before[session] = time.monotonic()
            return sorted({t.session for t in self._tickets if t.started is not None and session in (None, t.session)})

    def jobs(self) -> list[dict]:
        """What the gate holds, for the operator: one dict per job, oldest first."""
        now = time.monotonic()
        with self._lock:
            return [{"session": t.session, "address": t.address, "what": t.what,
                     "state": "waiting" if t.started is None else "running",
                     "seconds": round(now - (t.started or t.admitted), 1)} for t in self._tickets]

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.ticket_seconds
        self._tickets = [t for t in self._tickets if t.started is not None or t.admitted >= cutoff]
