"""The queue gate without a server: the per-address share beside the per-visitor one, the client address read from
the socket or from trusted proxies' X-Forwarded-For, and places given back when jobs end."""
from __future__ import annotations

import pytest

from diffdemo.ui.gate import JobGate, OperatorCancelled, Refused, client_address


def test_client_address_trusts_only_the_proxies_it_is_told_of():
    assert client_address("203.0.113.7", None, 0) == "203.0.113.7"
    assert client_address("127.0.0.1", "203.0.113.7", 0) is None  # no proxy trusted: a local peer is unknown
    assert client_address("10.0.0.1", "1.1.1.1, 203.0.113.7", 1) == "203.0.113.7"  # the entry the proxy added
    assert client_address("10.0.0.1", "1.1.1.1, 203.0.113.7, 10.0.0.2", 2) == "203.0.113.7"
    assert client_address("10.0.0.1", "203.0.113.7", 2) is None and client_address("10.0.0.1", None, 1) is None


def test_one_address_gets_its_share_across_sessions_and_gets_it_back():
    gate = JobGate(per_session=2, per_address=3)
    for session in ("a", "a", "b"):
        gate.admit(session, "203.0.113.7")
    with pytest.raises(Refused, match="You already have 2 jobs"):
        gate.admit("a", "198.51.100.1")
    with pytest.raises(Refused, match="Your address already has 3 jobs .*DIFFDEMO_JOBS_PER_ADDRESS"):
        gate.admit("c", "203.0.113.7")  # a new session from the same address
    gate.admit("d", "198.51.100.1")  # another address
    gate.admit("e", None)
    gate.admit("e", None)  # an unknown address (a loopback peer): only the visitor's share applies
    with pytest.raises(Refused, match="You already have 2 jobs"):
        gate.admit("e", None)
    ticket = gate.start("b")
    assert [j["state"] for j in gate.jobs() if j["session"] == "b"] == ["running"]
    gate.finish(ticket)
    gate.admit("c", "203.0.113.7")  # b's job ended: the address has a place again


def test_the_operators_cancel_stops_jobs_admitted_before_it():
    gate = JobGate(per_session=2, per_address=4)
    gate.admit("a", None)
    gate.admit("b", None)
    running = gate.start("b")
    assert gate.cancel() == ["b"]  # the runner stops b's running job
    with pytest.raises(OperatorCancelled):
        gate.start("a")
    gate.finish(running)
    assert gate.jobs() == []
    gate.admit("a", None)
    assert gate.start("a") is not None  # admitted after the cancel: runs
