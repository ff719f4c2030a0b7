"""The request guard: ASGI middleware in front of Gradio's routes, for what the app's events cannot see.

Installed through ``launch(app_kwargs={"middleware": [...]})`` (:func:`diffdemo.ui.limits.install_limits`); it
never changes Gradio, only answers some requests itself, in one line and a 4xx status, before Gradio would:

- with a login, every route but the login page and its static files needs it, and the login page carries no API
  description (Gradio embeds the whole API schema in it);
- bodies are bounded (uploads by :mod:`.uploads`, everything else by MAX_BODY) and must declare their length;
- an event call naming no event of this app, a session or event id that is not a short token, an input list of
  the wrong length or a keyword the endpoint does not take is answered 4xx (Gradio answers 500 with a traceback);
- queue joins and cancels keep the job gate's tickets in step with Gradio's queue (:mod:`.gate`);
- routes this app does not use (screen-recording conversion, the vibe editor, profiling...) are closed;
- ``/diffdemo/admin/...`` lets an operator with the admin token list and cancel jobs;
- anything that still fails is logged in one line, never a traceback.
"""
from __future__ import annotations

import json
import logging
import re
import secrets
from types import SimpleNamespace

from diffdemo.tasks.common import shown
from diffdemo.ui.asgi import Answer, capture, content_length, header, query, read_body, replay, reply
from diffdemo.ui.gate import JOIN, Join, client_address

log = logging.getLogger("diffdemo")
API = "/gradio_api"
MAX_BODY = 1_000_000  # bytes: prompts and settings; files come through the upload route
ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")  # session hashes (browser: 11 characters, Python client: a UUID), event ids
ADMIN = "/diffdemo/admin/"
EVENT_ROUTES = re.compile(rf"{API}/(queue/join|run/[^/]+|api/[^/]+|call/v2/[^/]+|call/[^/]+|cancel|reset)/?")
UNUSED = (f"{API}/process_recording", f"{API}/vibe", f"{API}/undo-vibe-edit", f"{API}/dev/", f"{API}/run-history",
          f"{API}/runs", f"{API}/profiling", "/monitoring")
OPEN_WITHOUT_LOGIN = {"/", "/login", "/login/", "/logout", "/favicon.ico", "/manifest.json", "/robots.txt",
                      "/theme.css", f"{API}/theme.css"}
STATIC = ("/assets/", "/static/", "/svelte/", "/pwa_icon")
API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.DOTALL)
NO_API_INFO = b'window.gradio_api_info = {"named_endpoints": {}, "unnamed_endpoints": {}};</script>'


class RequestGuard:
    """The middleware: ``guard`` holds the limits, the job gate, the upload guard and the runner."""

    def __init__(self, app, guard):
        self.app, self.guard = app, guard

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = []

        async def tracked(message):
            started.append(message["type"] == "http.response.start")
            await send(message)

        try:
            await self.guard.handle(self.app, scope, receive, tracked)
        except Answer as answer:
            log.warning("refused %s %s: %s", scope["method"], scope["path"][:200], answer.detail)
            await reply(tracked, answer.status, answer.detail)
        except Exception as error:  # noqa: BLE001 - one line in the log, never a traceback
            log.error("%s %s failed: %s: %s", scope["method"], scope["path"][:200], type(error).__name__,
                      shown(str(error), limit=200, quote=False))
            if not any(started):
                await reply(tracked, 500, "The server could not handle this request.")


def logged_in(server, scope) -> bool:
    """True when the request carries one of Gradio's login cookies (``server``, Gradio's App, maps them to users
    in ``tokens``)."""
    cookies = {}
    for part in (header(scope, b"cookie") or "").split(";"):
        name, _, value = part.strip().partition("=")
        cookies[name] = value
    for name in (f"access-token-{server.cookie_id}", f"access-token-unsecure-{server.cookie_id}"):
        if cookies.get(name) in server.tokens:
            return True
    return False


def needs_login(server) -> bool:
    return server.auth is not None or server.auth_dependency is not None


def open_without_login(path: str) -> bool:
    return path in OPEN_WITHOUT_LOGIN or path.startswith(STATIC)


def file_paths(data, found: set, depth: int = 0) -> set:
    """Every ``"path"`` of a file payload inside ``data`` (what a request refers to), to depth 6."""
    if depth > 6:
        return found
    if isinstance(data, dict):
        if isinstance(data.get("path"), str):
            found.add(data["path"])
        for value in data.values():
            file_paths(value, found, depth + 1)
    elif isinstance(data, list):
        for value in data:
            file_paths(value, found, depth + 1)
    return found


def check_payload(block, value) -> None:
    """Raises :class:`Answer` when ``value`` does not have the form of ``block``'s data model (a file payload for
    an image, say): Gradio would answer with the raw pydantic error, several lines long."""
    model = getattr(block, "data_model", None)
    if model is None or value is None:
        return
    try:
        model.model_validate(value)
    except ValueError:  # pydantic's ValidationError
        label = getattr(block, "label", None) or type(block).__name__.lower()
        raise Answer(422, f"The {label} is not in the form this event takes (a file is uploaded first, then sent "
                          f"as {{\"path\": ...}}); got {shown(value)}.") from None


def check_id(name: str, value) -> None:
    if value is not None and not (isinstance(value, str) and ID.fullmatch(value)):
        raise Answer(422, f"{name} must be 1 to 64 letters, digits, '-' or '_'; got {shown(value)}.")


def admin_token_ok(scope, token: str | None) -> bool:
    given = header(scope, b"authorization") or ""
    return token is not None and secrets.compare_digest(given.encode(), f"Bearer {token}".encode())


def address_of(scope, proxy_hops: int) -> str | None:
    peer = scope.get("client")
    return client_address(peer[0] if peer else None, header(scope, b"x-forwarded-for"), proxy_hops)


def new_join() -> Join:
    join = Join()
    JOIN.set(join)
    return join


def without_api_info(status: int, body: bytes):
    """The login page without Gradio's embedded API description (it needs none: it only logs in)."""
    return API_INFO.sub(NO_API_INFO, body, count=1) if status == 200 else None


class Guard:
    """What the middleware enforces, and the state it needs: the app's Blocks, its Limits, the job gate, the
    upload guard and the runner (for the operator's cancel)."""

    def __init__(self, blocks, limits, gate, uploads, runner):
        self.blocks, self.limits, self.gate, self.uploads, self.runner = blocks, limits, gate, uploads, runner
        self._parameters: dict[str, set] | None = None

    async def handle(self, app, scope, receive, send) -> None:
        path, method = scope["path"], scope["method"]
        if path.startswith(ADMIN):
            return await self.admin(scope, send)
        server = self.blocks.server_app  # Gradio's App: its login settings and tokens
        if needs_login(server) and not logged_in(server, scope):
            # launch() itself asks for startup-events, once, before anyone can log in
            starting = path == f"{API}/startup-events" and not server.startup_events_triggered
            if not (open_without_login(path) or starting):
                raise Answer(401, "Please log in first.")
            if path == "/" and method == "GET":
                return await app(scope, receive, capture(send, without_api_info))
            return await app(scope, receive, send)
        if path.startswith(UNUSED):
            raise Answer(404, "This app does not use this route.")
        if method == "POST" and path.rstrip("/") == f"{API}/upload":
            return await self.upload(app, scope, receive, send)
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            return await self.post(app, scope, receive, send)
        self.check_query(path, scope)
        if path == f"{API}/queue/data":
            return await self.stream(app, scope, receive, send)
        await app(scope, receive, send)

    async def post(self, app, scope, receive, send) -> None:
        path = scope["path"]
        limit = self.limits.upload_request_bytes if path.startswith(f"{API}/mcp") else MAX_BODY
        length = content_length(scope)
        if length is None:
            raise Answer(411, "The request must say its size (Content-Length).")
        if length > limit:
            raise Answer(413, f"The request is larger than {limit // 1000} kB.")
        route = EVENT_ROUTES.fullmatch(path)
        if route is None:
            return await app(scope, receive, send)
        raw = await read_body(receive, limit)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None  # Gradio answers 422 itself
        name = route.group(1)
        if isinstance(body, dict):
            self.check_event(name, body)
            self.uploads.mark_used(file_paths(body, set()))
        receive = replay(raw, receive)
        if name == "queue/join" or name.startswith("call/"):
            join = new_join()  # the validator puts the job's ticket here; the answer names its event
            return await app(scope, receive, capture(send, lambda status, answer: self.joined(join, status, answer)))
        await app(scope, receive, send)
        if name == "cancel" and isinstance(body, dict) and isinstance(body.get("event_id"), str):
            self.gate.drop_event(body["event_id"])  # a queued job cancelled before it started frees its place

    def joined(self, join: Join, status: int, answer: bytes) -> None:
        if join.ticket is None:
            return
        try:
            event_id = json.loads(answer).get("event_id") if status == 200 else None
        except (ValueError, AttributeError):
            event_id = None
        if isinstance(event_id, str):
            self.gate.link(join.ticket, event_id)
        else:
            self.gate.finish(join.ticket)

    def check_event(self, route: str, body: dict) -> None:
        """Raises :class:`Answer` for an event call Gradio would answer with a 500 and a traceback."""
        check_id("session_hash", body.get("session_hash"))
        check_id("event_id", body.get("event_id"))
        if route.startswith("call/"):
            return self.check_call(route, body)
        index = body.get("fn_index")
        if index is None:
            name = route.split("/", 1)[-1]
            if route.startswith(("run/", "api/")) and name != "predict" and name not in self.parameters():
                raise Answer(404, f"This app has no endpoint /{shown(name, quote=False)}.")
            return None
        if isinstance(index, bool) or not isinstance(index, int) or index not in self.blocks.fns:
            raise Answer(404, f"This app has no event {shown(index)}.")
        data, inputs = body.get("data"), self.blocks.fns[index].inputs
        if route != "cancel" and isinstance(data, list):
            if len(data) != len(inputs):  # Gradio: a 500, or a message listing the components' internals
                raise Answer(422, f"This event takes {len(inputs)} inputs (null for a gr.State); got {len(data)}.")
            for block, value in zip(inputs, data):
                check_payload(block, value)
        return None

    def check_call(self, route: str, body: dict) -> None:
        name = route.rsplit("/", 1)[-1]
        parameters = self.parameters().get(name)
        if parameters is None:
            raise Answer(404, f"This app has no endpoint /{shown(name, quote=False)}.")
        unknown = set(body) - parameters - {"oauth_token", "session_hash"} if route.startswith("call/v2/") else ()
        if unknown:
            raise Answer(422, f"/{name} has no parameter {', '.join(sorted(shown(k) for k in unknown))}; its "
                              f"parameters are: {', '.join(sorted(parameters))}.")

    def parameters(self) -> dict[str, set]:
        """Each named endpoint's parameter names (from Gradio's own API description, read once)."""
        if self._parameters is None:
            named = self.blocks.get_api_info(all_endpoints=True)["named_endpoints"]
            self._parameters = {name.lstrip("/"): {p["parameter_name"] for p in info["parameters"]}
                                for name, info in named.items()}
        return self._parameters

    def check_query(self, path: str, scope) -> None:
        if path.startswith(f"{API}/heartbeat/"):
            check_id("session_hash", path.rstrip("/").rsplit("/", 1)[-1])
        elif path == f"{API}/queue/data":
            check_id("session_hash", query(scope, "session_hash"))
        elif re.fullmatch(rf"{API}/call/(v2/)?[^/]+/[^/]+/?", path):
            check_id("event_id", path.rstrip("/").rsplit("/", 1)[-1])

    async def stream(self, app, scope, receive, send) -> None:
        """The session's event stream; when its client goes away, Gradio drops the session's queued jobs, and the
        gate their tickets."""
        gone = []

        async def watched():
            message = await receive()
            gone.append(message["type"] == "http.disconnect")
            return message

        await app(scope, watched, send)
        session = query(scope, "session_hash")
        if any(gone) and session:
            self.gate.drop_waiting(session)

    async def upload(self, app, scope, receive, send) -> None:
        refusal = self.uploads.admit(address_of(scope, self.limits.proxy_hops), content_length(scope))
        if refusal is not None:
            raise Answer(*refusal)
        self.uploads.sweep(self.blocks.upload_file_set)

        def check(status: int, answer: bytes):
            try:
                paths = json.loads(answer) if status == 200 else None
            except ValueError:
                return None
            reason = self.uploads.too_many(paths) if isinstance(paths, list) else None
            if reason is not None:
                log.warning("refused POST %s/upload: %s", API, reason)
                return 413, reason
            return None

        await app(scope, receive, capture(send, check))

    async def admin(self, scope, send) -> None:
        """``GET /diffdemo/admin/jobs``: the jobs waiting and running; ``POST /diffdemo/admin/cancel[?session=…]``:
        cancels them (one session's, or everyone's). Needs ``Authorization: Bearer <admin token>``."""
        token = self.limits.admin_token
        if not admin_token_ok(scope, token):
            raise Answer(404 if token is None else 401, "Not Found" if token is None else "Wrong admin token.")
        action, method = scope["path"][len(ADMIN):].strip("/"), scope["method"]
        if action == "jobs" and method == "GET":
            return await reply(send, 200, {"jobs": self.gate.jobs()})
        if action == "cancel" and method == "POST":
            session = query(scope, "session")
            running = self.gate.cancel(session)
            for name in running:
                self.runner.stop(SimpleNamespace(session_hash=name))
            log.warning("the operator cancelled the jobs of %s", session or "every session")
            return await reply(send, 200, {"cancelled": session or "all", "stopping": running})
        raise Answer(404, "Unknown admin action: use GET jobs or POST cancel (?session=...).")
