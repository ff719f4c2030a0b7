"""Share links are safe by default: the command line's login wiring, and a real ``--share`` launch without network.

No test here reaches the internet: the launch test points the proxy variables at a closed local port, so the
Gradio share server is unreachable whether or not the machine is online.
"""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import app
from diffdemo.ui import launch
from diffdemo.ui.launch import SHARE_USER, plan_launch

ROOT = Path(__file__).resolve().parents[1]
SERVER_ENV = ("SYSTEM", "SPACE_ID", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "PORT", "DIFFDEMO_AUTH")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No Space, no server or login variables from the machine running the tests."""
    for name in SERVER_ENV:
        monkeypatch.delenv(name, raising=False)


def plan(*argv):
    return plan_launch(app.parse_args(list(argv)))


def test_default_is_local_without_login():
    result = plan()
    assert result.kwargs["server_name"] == "127.0.0.1" and result.kwargs["server_port"] == 7860
    assert result.kwargs["share"] is False and result.kwargs["auth"] is None and result.kwargs["mcp_server"] is False
    assert result.notes == []


def test_share_without_auth_gets_a_generated_login_printed_once():
    first, second = plan("--share"), plan("--share")
    user, password = first.kwargs["auth"]
    assert first.kwargs["share"] is True and user == SHARE_USER
    assert len(password) >= 16 and password != second.kwargs["auth"][1]
    lines_with_password = [note for note in first.notes if password in note]
    assert len(lines_with_password) == 1 and "--auth" in lines_with_password[0]


def test_share_with_auth_uses_it_and_prints_no_password():
    result = plan("--share", "--auth", "ada:pass:with:colons")
    assert result.kwargs["auth"] == ("ada", "pass:with:colons")
    assert not any("pass:with:colons" in note for note in result.notes)


def test_auth_can_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("DIFFDEMO_AUTH", "ada:secret")
    assert plan("--share").kwargs["auth"] == ("ada", "secret")


def test_no_auth_is_an_explicit_opt_out_with_a_warning():
    result = plan("--share", "--no-auth")
    assert result.kwargs["share"] is True and result.kwargs["auth"] is None
    assert len(result.notes) == 1 and "warning" in result.notes[0] and "anyone" in result.notes[0]


@pytest.mark.parametrize("argv, message", [
    (["--auth", "ada"], "expected user:password"),
    (["--auth", ":secret"], "expected user:password"),
    (["--auth", "ada:"], "expected user:password"),
    (["--auth", "ada:pw", "--no-auth"], "not allowed with"),
], ids=["no-colon", "no-user", "no-password", "auth-and-no-auth"])
def test_bad_login_options_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        app.parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_share_is_ignored_on_a_space(monkeypatch):
    monkeypatch.setenv("SYSTEM", "spaces")
    result = plan("--share")
    assert result.kwargs["share"] is False and result.kwargs["auth"] is None
    assert result.kwargs["server_name"] == "0.0.0.0"
    assert any("--share is ignored" in note for note in result.notes)


def test_mcp_without_the_package_is_one_line(monkeypatch):
    monkeypatch.setattr(launch, "mcp_available", lambda: False)
    result = plan("--mcp")
    assert result.kwargs["mcp_server"] is False
    assert len(result.notes) == 1 and 'pip install "gradio[mcp]"' in result.notes[0]


def test_mcp_is_not_combined_with_a_login(monkeypatch):
    monkeypatch.setattr(launch, "mcp_available", lambda: True)
    assert plan("--mcp").kwargs["mcp_server"] is True
    assert plan("--share", "--no-auth", "--mcp").kwargs["mcp_server"] is True
    behind_login = plan("--share", "--mcp")
    assert behind_login.kwargs["mcp_server"] is False
    assert any("--mcp does not work behind a login" in note for note in behind_login.notes)


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))


@pytest.mark.slow
def test_share_offline_says_so_in_one_line_and_keeps_serving(tmp_path):
    from helpers import free_port

    port = free_port()
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the share server is unreachable
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "ALL_PROXY": closed, "NO_PROXY": "127.0.0.1,localhost",
           "GRADIO_TEMP_DIR": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "app.py", "--share", "--port", str(port)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    output = []
    try:
        deadline = time.monotonic() + 180
        while not any("share link" in line for line in output) and time.monotonic() < deadline:
            try:
                output.append(lines.get(timeout=1))
            except queue.Empty:
                assert process.poll() is None, "\n".join(output)
        with httpx.Client(trust_env=False, timeout=30) as http:
            page = http.get(f"http://127.0.0.1:{port}/")
            locked = http.get(f"http://127.0.0.1:{port}/config")
            login_line = next(line for line in output if "password" in line)
            password = login_line.split("password '")[1].split("'")[0]
            login = http.post(f"http://127.0.0.1:{port}/login", data={"username": SHARE_USER, "password": password})
            unlocked = http.get(f"http://127.0.0.1:{port}/config")
        assert process.poll() is None, "the app stopped after the share link failed"
    finally:
        process.terminate()
        process.wait(timeout=30)
    share_lines = [line for line in output if "share" in line.lower()]
    assert len(share_lines) == 1 and share_lines[0].startswith("diffdemo: no share link"), output
    assert f"127.0.0.1:{port}" in share_lines[0]
    assert not any("Traceback" in line or "Could not create share link" in line for line in output), output
    assert page.status_code == 200
    assert locked.status_code == 401  # the generated login protects the app
    assert login.status_code == 200 and unlocked.status_code == 200
