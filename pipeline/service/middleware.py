"""Two plain ASGI middlewares: a request-body limit and Prometheus request metrics.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which wraps every request in
extra tasks and streams; on the hot scoring path that overhead is measurable.

Why not FastAPI's own `max_body_size`: for a declared Content-Length above the limit it
replaces whatever the app answers with a `text/plain` "Content Too Large", which
neither names the limit nor matches the JSON error schema the API publishes.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.service.metrics import ServiceMetrics

LIMIT_VARIABLE = "CRISPML_SERVICE_MAX_BODY_BYTES"


def too_large_message(max_bytes: int, size: str) -> str:
    return (
        f"request body: {size} is above the limit of {max_bytes} bytes ({LIMIT_VARIABLE}); "
        "send smaller batches"
    )


class BodyLimit:
    """Answer 413 to a body above `max_bytes`, before it is parsed.

    A declared Content-Length above the limit is refused without reading a byte; a
    chunked body is counted as it arrives and refused once it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _json(send, 400, "Content-Length is not a number")
                    return
                if declared > self.max_bytes:
                    await _json(send, 413, too_large_message(self.max_bytes, f"{declared} bytes"))
                    return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route's body read: FastAPI's handlers answer the 413.
                    raise HTTPException(
                        413, too_large_message(self.max_bytes, f"more than {received} bytes")
                    )
            return message

        await self.app(scope, counted, send)


class RequestMetrics:
    """Count and time every HTTP request by route template (never by raw path)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route: Any = scope.get("route")
            # The template (/v1/scores/{score_id}) keeps the label set small and free of ids.
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.latency.labels(method, path).observe(time.perf_counter() - started)
            self.metrics.requests.labels(method, path, str(status)).inc()


async def _json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
