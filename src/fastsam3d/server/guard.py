"""Checks on every request before its body is read: Host header, API key, body size.

A pure ASGI middleware: it looks at the headers only, so a request without the key or with a
declared size over the limit is refused before a byte of its body is read, and a chunked body is
counted as it streams in and refused at the first chunk past the limit.
"""

from __future__ import annotations

import hmac
import json
import re

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UPLOAD_PATH = re.compile(r"^/api/sessions/(upload|[^/]+/mask)$")
MULTIPART_OVERHEAD = 64 << 10  # boundaries and part headers around an upload
DRAIN_BYTES = 1 << 20  # a refused request declaring at most this much is read first (see refuse)


class RequestGuard:
    """Refuse requests to a wrong Host, API calls without the key, and bodies over the limits.

    ``allowed_hosts``: Host header names accepted (``*`` accepts any); ``api_key``: required in
    ``X-API-Key`` for paths under ``/api/``; uploads (volume, mask) may carry ``upload_bytes``,
    every other request ``body_bytes``.
    """

    def __init__(
        self,
        app: ASGIApp,
        allowed_hosts: tuple[str, ...],
        api_key: str | None,
        upload_bytes: int,
        body_bytes: int = 1 << 20,
    ) -> None:
        self.app = app
        self.allowed_hosts = {host.lower().strip("[]") for host in allowed_hosts}
        self.api_key = api_key.encode() if api_key else None
        self.upload_bytes = upload_bytes + MULTIPART_OVERHEAD
        self.body_bytes = body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])  # raw bytes; the last of a repeated header wins
        if "*" not in self.allowed_hosts and host_name(headers.get(b"host", b"")) not in self.allowed_hosts:
            await refuse(
                headers, receive, send, 400, "Host header not allowed (start the server with --allowed-hosts NAME)"
            )
            return
        if self.api_key and scope["path"].startswith("/api/"):
            given = headers.get(b"x-api-key", b"")
            if not hmac.compare_digest(given, self.api_key):  # constant time, on bytes: any byte is fine
                await refuse(headers, receive, send, 401, "missing or wrong API key (header X-API-Key)")
                return
        limit = self.upload_bytes if UPLOAD_PATH.match(scope["path"]) else self.body_bytes
        declared = headers.get(b"content-length", b"")
        if declared and (not declared.isdigit() or int(declared) > limit):
            await reply(
                send, 413, f"request body larger than {limit >> 10} kB" if declared.isdigit() else "bad Content-Length"
            )
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, f"request body larger than {limit >> 10} kB")
            return message

        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except HTTPException as error:  # the body limit, raised where nothing turned it into a reply
            if started or error.status_code != 413:
                raise
            await reply(send, 413, error.detail)


def host_name(host: bytes) -> str:
    """The name part of a Host header value (``[::1]:8000`` -> ``::1``)."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:].split("]", 1)[0]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


async def refuse(headers: dict, receive: Receive, send: Send, status: int, detail: str) -> None:
    """Answer an error; a small declared body (≤ ``DRAIN_BYTES``) is read first, because clients
    that send the whole body before reading (urllib, the Slicer module) otherwise see a broken pipe
    instead of the answer. Larger bodies are never read: the answer goes at once."""
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and 0 < int(declared) <= DRAIN_BYTES:
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
    await reply(send, status, detail)


async def reply(send: Send, status: int, detail: str) -> None:
    """A JSON error answer ``{"detail": ...}``, as FastAPI gives."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
