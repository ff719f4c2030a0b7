"""How the app is served: address, login, share link and MCP server, decided from the command line and environment.

A share link is public, so it gets a login unless the user opts out: ``--auth user:pass``, or else a password made
up for this run and printed once. Offline, a share link cannot be made; the app then says so in one line and keeps
serving locally.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import secrets
import signal
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from diffdemo.ui.space import on_spaces, server_address

SHARE_USER = "diffdemo"
PASSWORD_BYTES = 12  # 16 URL-safe characters


@dataclass(frozen=True)
class LaunchPlan:
    """Keyword arguments for ``Blocks.launch`` and the lines to print once before launching."""

    kwargs: dict
    notes: list[str] = field(default_factory=list)

    @property
    def share(self) -> bool:
        return bool(self.kwargs.get("share"))


def mcp_available() -> bool:
    """True when the ``mcp`` package (``pip install "gradio[mcp]"``) is installed."""
    return importlib.util.find_spec("mcp") is not None


def plan_launch(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> LaunchPlan:
    """Decides where to listen, whether to share, the login and the MCP server from parsed ``args`` (``host``,
    ``port``, ``share``, ``auth`` as a (user, password) tuple or None, ``no_auth``, ``mcp``)."""
    host, port = server_address(args.host, args.port, environ)
    auth = None if args.no_auth else args.auth
    share, notes = args.share, []
    if share and on_spaces(environ):
        notes.append("diffdemo: --share is ignored on a Hugging Face Space: the Space already has a public URL.")
        share = False
    if share and auth is None and not args.no_auth:
        auth = (SHARE_USER, secrets.token_urlsafe(PASSWORD_BYTES))
        notes.append(f"diffdemo: login for this run: user '{auth[0]}', password '{auth[1]}' "
                     f"(made up now and shown only here; choose your own with --auth user:pass).")
    if share and args.no_auth:
        notes.append("diffdemo: warning: --no-auth: the share link is public and has no login; anyone who has it "
                     "can use this app and this machine's GPU/CPU.")
    mcp = bool(args.mcp)
    if mcp and not mcp_available():
        notes.append('diffdemo: --mcp needs the mcp package (pip install "gradio[mcp]"); starting without the MCP '
                     'server.')
        mcp = False
    if mcp and auth is not None:  # Gradio's MCP server calls the app without the login, and lists tools to anyone
        notes.append("diffdemo: --mcp does not work behind a login (--auth, or the one --share makes up); starting "
                     "without the MCP server.")
        mcp = False
    return LaunchPlan(dict(server_name=host, server_port=port, share=share, auth=auth, mcp_server=mcp), notes)


def with_limits(demo, plan: LaunchPlan, args: argparse.Namespace, models, speeds) -> LaunchPlan:
    """Installs the app's limits (:mod:`diffdemo.ui.limits`: stricter when strangers can reach it, from ``args``'
    ``max_cost``, ``job_seconds``, ``jobs_per_session``, ``admin_token`` and the environment) and returns the plan
    with what ``launch()`` needs for them, and a line saying what they are."""
    from diffdemo.ui.limits import Limits, install_limits, is_public

    limits = Limits.for_server(public=is_public(plan.kwargs["server_name"], plan.share),
                               gpu=getattr(models.device, "type", str(models.device)) != "cpu",
                               **{name: getattr(args, name, None) for name in
                                  ("max_cost", "job_seconds", "jobs_per_session", "admin_token")})
    extra = install_limits(demo, limits, speeds)
    return replace(plan, kwargs={**plan.kwargs, **extra}, notes=[*plan.notes, limits.describe()])


def _stop(signum, frame) -> None:
    """SIGTERM (a container or Space stopping) closes the app as Ctrl-C does, so the server shuts down and its temp
    folders go; a second one while it closes is ignored."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def launch(demo, plan: LaunchPlan, **extra) -> None:
    """Prints the plan's notes, starts the server and blocks until interrupted. ``extra`` goes to ``launch``.

    With a share link, Gradio's own output is held back until the link is made: if it could not be (offline, share
    server down), one line says so instead of Gradio's several, and the app keeps serving locally.
    """
    for note in plan.notes:
        print(note, flush=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    # A State input (the trajectory run the branch event reads) keeps its default for MCP callers; docs/API.md
    # says to pass run_file instead, so Gradio's generic warning about it is noise at every start.
    warnings.filterwarnings("ignore", message="This MCP server includes a tool that has a gr.State input")
    if not plan.share:
        demo.launch(**plan.kwargs, **extra)
        return
    with contextlib.redirect_stdout(io.StringIO()) as held:
        demo.launch(**plan.kwargs, **extra, prevent_thread_lock=True)
    if demo.share_url:
        print(held.getvalue(), end="", flush=True)
    else:
        print(f"diffdemo: no share link (the Gradio share server could not be reached: offline?); serving locally "
              f"only at {demo.local_url}", flush=True)
        if demo.mcp_server:
            print(f"diffdemo: MCP server at {demo.local_url}gradio_api/mcp/", flush=True)
    demo.block_thread()
