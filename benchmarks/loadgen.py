"""A bounded load generator for the switch benchmark and the fault tests.

Sends requests at a constant rate to a service on 127.0.0.1 (nowhere else), from two kinds of
client side by side:

  fresh      a new TCP connection per request (`Connection: close`), like curl in a loop;
  keepalive  clients that keep one connection open across requests, like SDKs and browsers.
             A keep-alive request that finds its connection closed under it is a failure: that
             is exactly what an edge reload does to real clients, so it is never retried.

It stops by itself: at `duration_s` or after `max_requests` (both always set), whichever comes
first. Each kind gets `rate` requests per second, spread over `clients` threads with evenly
interleaved send times. Results: sent / ok / failed per kind, latency percentiles, and the same
per second (plus, with `track_key`, which value of that JSON key answered, e.g. which version).

Use from Python (tests, benchmarks):

    with LoadGenerator(LoadSpec(url="http://127.0.0.1:9100/v1/version", rate=20, duration_s=30)) as load:
        ...  # switch, rollback
    result = load.result()          # stops the load if still running
    assert result.failed == 0

or as a CLI: `python benchmarks/loadgen.py --url http://127.0.0.1:9100/v1/version --rate 20 --duration 10`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import socket
import struct
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable
from pathlib import Path
from urllib.parse import urlsplit

if __name__ == "__main__":  # run as a script: the repository root on sys.path for benchmarks._common
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import percentile  # noqa: E402

KINDS = ("fresh", "keepalive")
ALLOWED_HOSTS = ("127.0.0.1",)
MAX_DURATION_S = 3600.0
MAX_RATE = 2000.0
MAX_FAILURE_SAMPLES = 50


class LoadSpecError(ValueError):
    """A load spec that would send somewhere else than 127.0.0.1 or would not be bounded."""


@dataclass(frozen=True)
class LoadSpec:
    url: str                         # http://127.0.0.1:PORT/path
    rate: float = 10.0               # requests per second, per client kind
    duration_s: float = 10.0         # stop after this long ...
    max_requests: int | None = None  # ... or after this many requests in all (default: rate x duration x kinds)
    kinds: tuple[str, ...] = KINDS
    clients: int = 2                 # threads per kind (each keepalive thread holds one connection)
    method: str = "GET"
    body: bytes | None = None
    # Called per request for its body instead of `body` (e.g. a photo that differs in every request,
    # as real uploads do, so a response cache does not answer them all).
    body_factory: Callable[[], bytes] | None = None
    content_type: str = "application/json"
    timeout_s: float = 5.0           # per request
    track_key: str | None = None     # JSON key of the answer to count per second (e.g. "version")
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request (e.g. an API key)

    def check(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "http":
            raise LoadSpecError(f"url must be http://127.0.0.1:PORT/...: got {self.url!r}")
        if parts.hostname not in ALLOWED_HOSTS:
            raise LoadSpecError(f"load goes to 127.0.0.1 only, not {parts.hostname!r}")
        if not parts.port:
            raise LoadSpecError(f"url needs an explicit port: {self.url!r}")
        if not (0 < self.rate <= MAX_RATE):
            raise LoadSpecError(f"rate must be in (0, {MAX_RATE:g}] requests/s: got {self.rate}")
        if not (0 < self.duration_s <= MAX_DURATION_S):
            raise LoadSpecError(f"duration must be in (0, {MAX_DURATION_S:g}] s: got {self.duration_s}")
        if self.max_requests is not None and self.max_requests < 1:
            raise LoadSpecError(f"max_requests must be >= 1: got {self.max_requests}")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise LoadSpecError(f"kinds must be a non-empty subset of {', '.join(KINDS)}: got {self.kinds}")
        if not (1 <= self.clients <= 64):
            raise LoadSpecError(f"clients must be in [1, 64]: got {self.clients}")
        if self.timeout_s <= 0:
            raise LoadSpecError(f"timeout must be > 0: got {self.timeout_s}")

    @property
    def total_limit(self) -> int:
        if self.max_requests is not None:
            return self.max_requests
        return math.ceil(self.rate * self.duration_s) * len(self.kinds)


@dataclass
class _Sample:
    t: float          # seconds since the load started (send time)
    kind: str
    ok: bool
    latency_s: float
    error: str | None = None
    answer: str | None = None


def _latency_summary(latencies: list[float]) -> dict[str, float | None]:
    xs = sorted(latencies)
    ms = lambda v: None if v is None else round(v * 1000, 2)  # noqa: E731
    return {"p50_ms": ms(percentile(xs, 50)), "p95_ms": ms(percentile(xs, 95)),
            "p99_ms": ms(percentile(xs, 99)), "max_ms": ms(xs[-1] if xs else None)}


@dataclass
class LoadResult:
    spec: LoadSpec
    elapsed_s: float
    samples: list[_Sample] = field(default_factory=list)
    reconnects: dict[str, int] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return len(self.samples)

    @property
    def failed(self) -> int:
        return sum(1 for s in self.samples if not s.ok)

    def kind(self, kind: str) -> dict[str, Any]:
        """Totals of one client kind: sent, ok, failed, errors by type, latency percentiles."""
        mine = [s for s in self.samples if s.kind == kind]
        return {
            "sent": len(mine),
            "ok": sum(1 for s in mine if s.ok),
            "failed": sum(1 for s in mine if not s.ok),
            "errors": dict(Counter(s.error for s in mine if not s.ok)),
            "reconnects": self.reconnects.get(kind, 0),
            "latency": _latency_summary([s.latency_s for s in mine if s.ok]),
        }

    def answers(self) -> dict[str, int]:
        return dict(Counter(s.answer for s in self.samples if s.ok and s.answer is not None))

    def per_second(self) -> list[dict[str, Any]]:
        """One row per second and kind: sent, failed, latency, and the tracked answers."""
        rows: dict[tuple[int, str], list[_Sample]] = {}
        for s in self.samples:
            rows.setdefault((int(s.t), s.kind), []).append(s)
        out = []
        for (sec, kind), group in sorted(rows.items()):
            lat = _latency_summary([s.latency_s for s in group if s.ok])
            row = {"second": sec, "kind": kind, "sent": len(group),
                   "failed": sum(1 for s in group if not s.ok),
                   "p50_ms": lat["p50_ms"], "max_ms": lat["max_ms"]}
            if self.spec.track_key:
                row["answers"] = dict(Counter(s.answer for s in group if s.ok and s.answer is not None))
            out.append(row)
        return out

    def failures(self, limit: int = MAX_FAILURE_SAMPLES) -> list[dict[str, Any]]:
        bad = [s for s in self.samples if not s.ok][:limit]
        return [{"t": round(s.t, 3), "kind": s.kind, "error": s.error} for s in bad]

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.spec.url,
            "rate_per_kind": self.spec.rate,
            "clients_per_kind": self.spec.clients,
            "elapsed_s": round(self.elapsed_s, 3),
            "sent": self.sent,
            "failed": self.failed,
            "kinds": {k: self.kind(k) for k in self.spec.kinds},
            "answers": self.answers(),
            "failures": self.failures(),
            "per_second": self.per_second(),
        }


class _Client(threading.Thread):
    """One client thread: sends its share of the schedule, one request at a time."""

    def __init__(self, gen: "LoadGenerator", kind: str, index: int, quota: int):
        super().__init__(name=f"loadgen-{kind}-{index}", daemon=True)
        self.gen, self.kind, self.index, self.quota = gen, kind, index, quota
        parts = urlsplit(gen.spec.url)
        self.host, self.port = parts.hostname, parts.port
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.conn: http.client.HTTPConnection | None = None
        self.reconnects = 0

    def run(self) -> None:
        spec, gen = self.gen.spec, self.gen
        interval = spec.clients / spec.rate           # this thread's own period
        offset = self.index / spec.rate               # interleave the threads of one kind
        deadline = gen.t0 + spec.duration_s
        for i in range(self.quota):
            due = gen.t0 + offset + i * interval
            if due >= deadline or gen.stopping.wait(max(0.0, due - time.monotonic())):
                break
            gen.record(self.one_request())
        if self.conn is not None:
            self.conn.close()

    def _connection(self) -> http.client.HTTPConnection:
        if self.kind == "fresh":
            return http.client.HTTPConnection(self.host, self.port, timeout=self.gen.spec.timeout_s)
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.gen.spec.timeout_s)
        elif self.conn.sock is None:  # the server closed it politely (Connection: close): reopen
            self.reconnects += 1
        return self.conn

    def one_request(self) -> _Sample:
        spec = self.gen.spec
        started = time.monotonic()
        t = started - self.gen.t0
        headers = {**dict(spec.headers), "Connection": "close" if self.kind == "fresh" else "keep-alive"}
        payload = spec.body_factory() if spec.body_factory is not None else spec.body
        if payload is not None:
            headers["Content-Type"] = spec.content_type
        conn = self._connection()
        try:
            conn.request(spec.method, self.path, body=payload, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            latency = time.monotonic() - started
            if self.kind == "fresh":
                conn.close()
            if not (200 <= resp.status < 400):
                return _Sample(t, self.kind, False, latency, error=f"HTTP {resp.status}")
            return _Sample(t, self.kind, True, latency, answer=self._answer(body))
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            if self.kind == "keepalive":
                self.conn = None  # next request opens a new connection (counted as a reconnect)
                self.reconnects += 1
            return _Sample(t, self.kind, False, time.monotonic() - started, error=_error_name(e))

    def _answer(self, body: bytes) -> str | None:
        key = self.gen.spec.track_key
        if not key:
            return None
        try:
            value = json.loads(body).get(key)
        except (ValueError, AttributeError):
            return None
        return None if value is None else str(value)


def _error_name(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timeout"
    return type(e).__name__


class LoadGenerator:
    """Runs a LoadSpec in background threads; `result()` stops it (if still running) and reports."""

    def __init__(self, spec: LoadSpec):
        spec.check()
        self.spec = spec
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._samples: list[_Sample] = []
        self._clients: list[_Client] = []
        self.t0 = 0.0
        self._elapsed: float | None = None

    def start(self) -> "LoadGenerator":
        if self._clients:
            raise RuntimeError("this load generator was already started")
        n = len(self.spec.kinds) * self.spec.clients
        total = self.spec.total_limit
        self.t0 = time.monotonic()
        for k, kind in enumerate(self.spec.kinds):
            for j in range(self.spec.clients):
                slot = k * self.spec.clients + j
                quota = total // n + (1 if slot < total % n else 0)  # split the count limit evenly
                self._clients.append(_Client(self, kind, j, quota))
        for c in self._clients:
            c.start()
        return self

    def record(self, sample: _Sample) -> None:
        with self._lock:
            self._samples.append(sample)

    def snapshot(self) -> tuple[int, int]:
        """(sent, failed) so far, without stopping."""
        with self._lock:
            return len(self._samples), sum(1 for s in self._samples if not s.ok)

    @property
    def running(self) -> bool:
        return any(c.is_alive() for c in self._clients)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the load ends by itself (time or count limit); True if it has."""
        end = None if timeout is None else time.monotonic() + timeout
        for c in self._clients:
            c.join(None if end is None else max(0.0, end - time.monotonic()))
        return not self.running

    def stop(self) -> None:
        self.stopping.set()
        # A request in flight finishes (or times out) before its thread ends.
        for c in self._clients:
            c.join(self.spec.timeout_s + 5)
        if self._elapsed is None:
            self._elapsed = time.monotonic() - self.t0

    def result(self) -> LoadResult:
        self.stop()
        reconnects: Counter[str] = Counter()
        for c in self._clients:
            reconnects[c.kind] += c.reconnects
        with self._lock:
            samples = sorted(self._samples, key=lambda s: s.t)
        return LoadResult(self.spec, self._elapsed or 0.0, samples, dict(reconnects))

    def __enter__(self) -> "LoadGenerator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_load(spec: LoadSpec) -> LoadResult:
    """Run the load to its end (time or count limit) and return the result."""
    gen = LoadGenerator(spec).start()
    gen.wait()
    return gen.result()


def _print_table(result: LoadResult, out) -> None:
    print(f"{'sec':>4} {'kind':<10} {'sent':>5} {'failed':>6} {'p50 ms':>8} {'max ms':>8}  answers", file=out)
    for r in result.per_second():
        answers = ", ".join(f"{k}={v}" for k, v in sorted(r.get("answers", {}).items()))
        p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.1f}"
        mx = "-" if r["max_ms"] is None else f"{r['max_ms']:.1f}"
        print(f"{r['second']:>4} {r['kind']:<10} {r['sent']:>5} {r['failed']:>6} {p50:>8} {mx:>8}  {answers}",
              file=out)
    for kind in result.spec.kinds:
        k = result.kind(kind)
        print(f"{kind}: sent {k['sent']}, failed {k['failed']} {k['errors'] or ''}, "
              f"p50 {k['latency']['p50_ms']} ms, p99 {k['latency']['p99_ms']} ms", file=out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="loadgen",
        description="Bounded constant-rate HTTP load against 127.0.0.1, from fresh-connection and "
                    "keep-alive clients side by side. Stops by itself at --duration or --max-requests.")
    p.add_argument("--url", required=True, help="http://127.0.0.1:PORT/path (no other host is accepted)")
    p.add_argument("--rate", type=float, default=10.0, help="requests per second for EACH client kind (default 10)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds to run (default 10, at most 3600)")
    p.add_argument("--max-requests", type=int, default=None,
                   help="stop after this many requests in all (default: rate x duration x kinds)")
    p.add_argument("--kinds", default=",".join(KINDS), help="fresh,keepalive (default both)")
    p.add_argument("--clients", type=int, default=2, help="threads per kind (default 2)")
    p.add_argument("--method", default="GET")
    p.add_argument("--body-file", help="request body (sent with Content-Type: application/json)")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout in seconds (default 5)")
    p.add_argument("--track-key", help="count this key of each JSON answer per second (e.g. version)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON on stdout")
    args = p.parse_args(argv)
    try:
        body = open(args.body_file, "rb").read() if args.body_file else None
        spec = LoadSpec(url=args.url, rate=args.rate, duration_s=args.duration, max_requests=args.max_requests,
                        kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()),
                        clients=args.clients, method=args.method.upper(), body=body,
                        timeout_s=args.timeout, track_key=args.track_key)
        gen = LoadGenerator(spec)
    except (LoadSpecError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"loadgen: {spec.rate:g} req/s per kind ({', '.join(spec.kinds)}) to {spec.url} for at most "
          f"{spec.duration_s:g} s / {spec.total_limit} requests", file=sys.stderr)
    gen.start()
    try:
        gen.wait()
    except KeyboardInterrupt:
        pass
    result = gen.result()
    _print_table(result, sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    return 0 if result.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())


def with_nonce(png: bytes) -> bytes:
    """The same image (same pixels, same decision) in fresh bytes: a tEXt chunk with a new nonce
    before IEND. Real uploads differ in every request; a load that repeats identical bytes is
    answered by the service's response cache (warm on a live slot, cold on a candidate)."""
    text = b"nonce\x00" + uuid.uuid4().hex.encode()
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    iend = png.rindex(b"IEND") - 4  # the IEND chunk's length field
    return png[:iend] + chunk + png[iend:]
