"""One structured audit line per request, and the request metrics, from one outermost middleware.

A line is JSON on the `aads.audit` logger:
    {"event": "request", "ts": ..., "request_id": ..., "key_id": ..., "client": ...,
     "method": "POST", "route": "/v1/diagnose", "status": 200, "latency_ms": 41.3, "bytes_out": 512}
It names the key by its id, never the key, and never carries the image, the body or the query.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
import uuid
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.metrics import ServiceMetrics

AUDIT_LOGGER = "aads.audit"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class AuditLog:
    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or logging.getLogger(AUDIT_LOGGER)

    def record(self, **fields: object) -> None:
        line = {"event": "request", "ts": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")}
        line.update(fields)
        self.logger.info(json.dumps(line, separators=(",", ":"), default=str))


def route_of(scope: Scope, routes: Sequence[BaseRoute] = ()) -> str:
    """The route template (`/v1/adapters/{crop}`), so metrics do not grow a label per crop or typo.

    A request refused before routing (401, 429) is matched against `routes` here.
    """
    route = scope.get("route")
    if route is None:
        for candidate in routes:
            match, child = candidate.matches(scope)
            if match is not Match.NONE:
                route = child.get("route", candidate)
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestRecorder:
    """ASGI middleware: request id, audit line, request metrics; sees every answer (401s and 429s too)."""

    def __init__(self, app: ASGIApp, audit: AuditLog, metrics: ServiceMetrics, routes: Sequence[BaseRoute] = ()):
        self.app = app
        self.audit = audit
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        bytes_out = 0

        async def send_recorded(message: Message) -> None:
            nonlocal status, bytes_out
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                bytes_out += len(message.get("body", b""))
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_recorded)
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - started
            route = route_of(scope, self.routes)
            self.metrics.observe_request(scope["method"], route, status, seconds)
            client = scope.get("client")
            self.audit.record(
                request_id=request_id,
                key_id=state.get("key_id", "-"),
                client=client[0] if client else None,
                method=scope["method"],
                route=route,
                status=status,
                latency_ms=round(seconds * 1000.0, 2),
                bytes_out=bytes_out,
            )


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name.lower() == b"x-request-id":
            text = value.decode("latin-1").strip()
            return text if _REQUEST_ID.match(text) else None  # never echo arbitrary bytes into logs
    return None
