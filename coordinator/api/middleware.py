"""ASGI middleware: the request body size limit and Prometheus request metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coordinator.api.problems import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_PREFIX

UNMATCHED_ROUTE: Final = "unmatched"


class _TooLarge(StarletteHTTPException):
    """Raised from `receive` mid-stream; an HTTPException so that whoever was reading the
    body (FastAPI, a dependency) lets it through to the problem handler as a 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request bodies are limited to {max_bytes} bytes")


class BodySizeLimit:
    """Refuse bodies over `max_bytes` with 413, by Content-Length or while streaming.

    Paths under `streamed_prefixes` are exempt: their handlers stream the body into the
    blob store with their own, exact size limit (from the layout of the round).
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, streamed_prefixes: Collection[str] = ()
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streamed_prefixes = tuple(streamed_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope["path"]).startswith(self.streamed_prefixes):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > self.max_bytes:
                    await self._refuse(send)
                    return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not response_started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {
                "type": PROBLEM_TYPE_PREFIX + "payload-too-large",
                "title": "Payload too large",
                "status": 413,
                "detail": f"request bodies are limited to {self.max_bytes} bytes",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    """Counts requests and times them, labelled by route template (never by raw path)."""

    def __init__(self, app: ASGIApp, *, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "fmtl_http_requests",
            "HTTP requests handled, by method, route and status.",
            ("method", "route", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "fmtl_http_request_duration_seconds",
            "Time to handle an HTTP request, by method and route.",
            ("method", "route"),
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)
            method = str(scope["method"])
            self.requests.labels(method, route, str(status)).inc()
            self.latency.labels(method, route).observe(time.perf_counter() - start)
