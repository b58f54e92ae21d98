"""API keys, per-key rate limits, CORS and gzip.

Keys are optional: with none configured every request passes as the anonymous caller. With keys,
`/v1/*` needs `Authorization: Bearer <key>` or `X-API-Key: <key>`; health, readiness, metrics
and the docs stay open (probes and Prometheus carry no key). The key is compared in constant
time against every configured key, and only its id ever reaches logs and metrics.

The rate limit is a token bucket per key id (per client address when keys are off): a burst of
up to N requests, refilled at N per period; an empty bucket answers 429 with Retry-After.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable

from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.errors import RateLimited, ServingError, Unauthorized, error_response
from serving.settings import ApiKey, RateLimit, Settings

ANONYMOUS = "anonymous"
PROTECTED_PREFIX = "/v1/"


class ApiKeyAuth:
    """Constant-time lookup of a presented key among the configured ones."""

    def __init__(self, keys: tuple[ApiKey, ...]):
        # Compare fixed-length digests so neither the length nor the content of a key leaks through timing.
        self._digests = [(k.key_id, hashlib.sha256(k.secret.encode()).digest()) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def key_id_for(self, presented: str | None) -> str:
        """Return the id of the key `presented`.

        Raises:
            Unauthorized: keys are enabled and `presented` is missing or matches none.
        """
        if not self.enabled:
            return ANONYMOUS
        if not presented:
            raise Unauthorized(
                "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                code="missing_api_key",
            )
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for key_id, expected in self._digests:  # no early exit: every key is compared
            if hmac.compare_digest(digest, expected):
                found = key_id
        if found is None:
            raise Unauthorized("the API key is not valid", code="invalid_api_key")
        return found


def presented_key(headers: dict[str, str]) -> str | None:
    """The key from `X-API-Key`, or from `Authorization: Bearer ...`."""
    key = headers.get("x-api-key", "").strip()
    if key:
        return key
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


class RateLimiter:
    """Token buckets per caller id; thread-safe."""

    MAX_CALLERS = 10_000  # forget idle buckets past this many, so memory stays bounded

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self._rate = limit.requests / limit.per_seconds  # tokens per second
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, last refill)
        self._lock = threading.Lock()

    def acquire(self, caller: str) -> None:
        """Take one token for `caller`.

        Raises:
            RateLimited: the caller's bucket is empty; `retry_after` says when one token is back.
        """
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(caller, (float(self.limit.requests), now))
            tokens = min(float(self.limit.requests), tokens + (now - last) * self._rate)
            if tokens < 1.0:
                self._buckets[caller] = (tokens, now)
                wait = (1.0 - tokens) / self._rate
                raise RateLimited(
                    f"rate limit of {self.limit.requests} requests per {self.limit.per_seconds:g}s exceeded; "
                    f"retry in {wait:.1f}s",
                    retry_after=wait,
                )
            self._buckets[caller] = (tokens - 1.0, now)
            if len(self._buckets) > self.MAX_CALLERS:
                self._forget_full_buckets(now)

    def _forget_full_buckets(self, now: float) -> None:
        refill_s = self.limit.per_seconds
        for caller, (_, last) in list(self._buckets.items()):
            if now - last >= refill_s:  # its bucket is full again: the same as a new one
                del self._buckets[caller]


class AccessControlMiddleware:
    """ASGI middleware: API key check and rate limit on `/v1/*`; stores the key id in scope state."""

    def __init__(self, app: ASGIApp, auth: ApiKeyAuth, limiter: RateLimiter | None):
        self.app = app
        self.auth = auth
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        state = scope.setdefault("state", {})
        try:
            key_id = self.auth.key_id_for(presented_key(headers))
            state["key_id"] = key_id
            if self.limiter is not None:
                caller = key_id if self.auth.enabled else f"client:{_client_host(scope)}"
                self.limiter.acquire(caller)
        except ServingError as e:
            await error_response(e)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _client_host(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def add_security_middleware(app, settings: Settings) -> None:
    """Install (innermost first) access control, gzip and CORS on a Starlette/FastAPI app."""
    limiter = RateLimiter(settings.rate_limit) if settings.rate_limit else None
    app.add_middleware(AccessControlMiddleware, auth=ApiKeyAuth(settings.api_keys), limiter=limiter)
    app.add_middleware(GZipMiddleware, minimum_size=1024)
    if settings.cors_origins:
        # Only the configured origins; without any, no CORS headers are sent and browsers refuse cross-origin calls.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["Retry-After", "X-Request-ID"],
            max_age=600,
        )
