"""Small ASGI helpers for the request guard: headers, bounded bodies read and replayed, answers held back."""
from __future__ import annotations

import json
from urllib.parse import parse_qs


class Answer(Exception):
    """An answer the guard gives instead of Gradio: HTTP ``status`` and a one-line ``detail``."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


async def reply(send, status: int, detail, headers: list | None = None) -> None:
    """A JSON answer ``{"detail": ...}`` (or ``detail`` itself when it is not a string)."""
    body = json.dumps({"detail": detail} if isinstance(detail, str) else detail).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def content_length(scope) -> int | None:
    value = header(scope, b"content-length")
    if value is None:
        return None if header(scope, b"transfer-encoding") else 0
    try:
        return int(value)
    except ValueError:
        raise Answer(400, "Content-Length is not a number.") from None


async def read_body(receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Answer(400, "The client went away before sending its request.")
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            raise Answer(413, f"The request is larger than {limit // 1000} kB.")
        if not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes, receive):
    """A ``receive`` that hands the app ``body`` (already read), then whatever the client sends next."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed():
        return pending.pop() if pending else await receive()

    return replayed


def capture(send, keep):
    """A ``send`` that holds the response back (``keep`` gets status and body once it is complete, and may return
    a replacement ``(status, detail)``); for small JSON or HTML answers only."""
    held: dict = {"body": b""}

    async def captured(message):
        if message["type"] == "http.response.start":
            held["start"] = message
            return
        held["body"] += message.get("body", b"")
        if message.get("more_body"):
            return
        start, body = held["start"], held["body"]
        replacement = keep(start["status"], body)
        if isinstance(replacement, tuple):
            await reply(send, *replacement)
            return
        if isinstance(replacement, bytes):
            body = replacement
        headers = [(k, str(len(body)).encode() if k.lower() == b"content-length" else v)
                   for k, v in start.get("headers", [])]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return captured


def query(scope, name: str) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[0] if values else None
