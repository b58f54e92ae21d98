"""API keys, per-key rate limits, failed-key limits, the real client behind the edge, CORS, gzip.

Keys are optional in the service (the shipped compose target and Kubernetes manifests turn them
on): with none configured every request passes as the anonymous caller. With keys, `/v1/*`
needs `Authorization: Bearer <key>` or `X-API-Key: <key>`; health, readiness, metrics and the
docs stay open (probes and Prometheus carry no key). The key is compared in constant time
against every configured key, and only its id ever reaches logs and metrics.

The rate limit is a token bucket per key id (per client address when keys are off): a burst of
up to N requests, refilled at N per period; an empty bucket answers 429 with Retry-After.
Wrong keys are counted per client address in a bucket of their own: past the limit that client
gets 429 without its keys being compared, so guessing keys is slow.

Behind the edge every connection comes from the edge; the edge sets `X-Forwarded-For` to the
client it saw. `ForwardedClient` believes that header only from a trusted proxy (an IP, a CIDR
or a host name such as `edge`, resolved again when the edge's address changes), so rate limits,
failed-key limits and the audit log see the real client and nobody else can pose as one.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable

from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.errors import RateLimited, ServingError, Unauthorized, error_response
from serving.settings import ApiKey, RateLimit, Settings

log = logging.getLogger("serving.security")

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

    def wait_for(self, caller: str) -> float:
        """Seconds until `caller` has a token again (0: it has one now); takes nothing."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(caller, (float(self.limit.requests), now))
            tokens = min(float(self.limit.requests), tokens + (now - last) * self._rate)
            return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate

    def charge(self, caller: str) -> None:
        """Take one token for `caller` if it has one (never raises): counting, not refusing."""
        try:
            self.acquire(caller)
        except RateLimited:
            pass

    def _forget_full_buckets(self, now: float) -> None:
        refill_s = self.limit.per_seconds
        for caller, (_, last) in list(self._buckets.items()):
            if now - last >= refill_s:  # its bucket is full again: the same as a new one
                del self._buckets[caller]


class AccessControlMiddleware:
    """ASGI middleware: API key check and rate limits on `/v1/*`; stores the key id in scope state."""

    def __init__(self, app: ASGIApp, auth: ApiKeyAuth, limiter: RateLimiter | None,
                 failures: RateLimiter | None = None):
        self.app = app
        self.auth = auth
        self.limiter = limiter
        self.failures = failures  # wrong keys per client address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        state = scope.setdefault("state", {})
        client = f"client:{_client_host(scope)}"
        try:
            key_id = self._key_id(headers, client)
            state["key_id"] = key_id
            if self.limiter is not None:
                self.limiter.acquire(key_id if self.auth.enabled else client)
        except ServingError as e:
            await error_response(e)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _key_id(self, headers: dict[str, str], client: str) -> str:
        if self.failures is None or not self.auth.enabled:
            return self.auth.key_id_for(presented_key(headers))
        wait = self.failures.wait_for(client)
        if wait > 0:
            raise RateLimited(
                f"too many wrong API keys from this client; retry in {wait:.0f}s", code="too_many_failed_keys",
                retry_after=wait,
            )
        try:
            return self.auth.key_id_for(presented_key(headers))
        except Unauthorized as e:
            if e.code == "invalid_api_key":
                self.failures.charge(client)
            raise


def _client_host(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


class TrustedProxies:
    """Which peers may tell us the client's address: IPs, networks, and host names resolved on demand.

    A host name (compose's `edge`) is resolved at most every `refresh_s`, and again (at most once a
    second) when an unknown peer shows up, so a recreated edge with a new address is trusted at once.
    """

    def __init__(self, entries: tuple[str, ...], resolve: Callable[[str], set[str]] | None = None,
                 clock: Callable[[], float] = time.monotonic, refresh_s: float = 30.0):
        self.networks = []
        self.hosts = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.append(entry)
        self._resolve = resolve or _resolve_host
        self._clock = clock
        self._refresh_s = refresh_s
        self._resolved: set[str] = set()
        self._resolved_at: float | None = None
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.networks or self.hosts)

    def trusts(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if any(address in net for net in self.networks):
            return True
        if not self.hosts:
            return False
        now = self._clock()
        with self._lock:
            age = None if self._resolved_at is None else now - self._resolved_at
            if age is None or age >= self._refresh_s or (peer not in self._resolved and age >= 1.0):
                self._resolved = set()
                for host in self.hosts:
                    self._resolved |= self._resolve(host)
                self._resolved_at = now
            return peer in self._resolved


def _resolve_host(host: str) -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except OSError:
        return set()


def forwarded_client(header: str) -> str | None:
    """The client the nearest proxy saw: the last entry of an X-Forwarded-For value (None if not an IP)."""
    try:
        return str(ipaddress.ip_address(header.rsplit(",", 1)[-1].strip()))
    except ValueError:
        return None


class ForwardedClient:
    """ASGI middleware (outermost): `scope["client"]` = the X-Forwarded-For client, from trusted proxies only."""

    def __init__(self, app: ASGIApp, proxies: TrustedProxies):
        self.app = app
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.proxies:
            # The header first: requests without one (probes, smoke tests on a slot port) never
            # cost a name lookup.
            values = [v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"x-forwarded-for"]
            peer = scope.get("client")
            if values and peer and self.proxies.trusts(peer[0]):
                client = forwarded_client(values[-1])
                if client is not None:
                    scope["client"] = (client, 0)
        await self.app(scope, receive, send)


def add_forwarded_client(app, settings: Settings) -> None:
    """Install `ForwardedClient`; call it last, so it runs before the audit line is taken."""
    if settings.trusted_proxies:
        app.add_middleware(ForwardedClient, proxies=TrustedProxies(settings.trusted_proxies))


def add_security_middleware(app, settings: Settings) -> None:
    """Install (innermost first) access control, gzip and CORS on a Starlette/FastAPI app."""
    limiter = RateLimiter(settings.rate_limit) if settings.rate_limit else None
    failures = RateLimiter(settings.auth_failure_limit) if settings.auth_failure_limit else None
    app.add_middleware(AccessControlMiddleware, auth=ApiKeyAuth(settings.api_keys), limiter=limiter,
                       failures=failures)
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
