"""benchmarks/loadgen.py against a real local HTTP server (threads, 127.0.0.1, ephemeral port)."""

from __future__ import annotations

import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import loadgen  # noqa: E402
from benchmarks.loadgen import LoadGenerator, LoadSpec, LoadSpecError, run_load  # noqa: E402


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.connections: set[tuple[str, int]] = set()
        self.requests = 0
        self.status = 200            # what /v1/* answers
        self.version = "v-blue"
        self.close_silently = False  # HTTP/1.1 keep-alive promised, then the socket is closed anyway


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        srv: _Server = self.server
        with srv.lock:
            srv.connections.add(self.client_address)
            srv.requests += 1
        body = json.dumps({"version": srv.version}).encode()
        self.send_response(srv.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if srv.close_silently:  # what a retiring nginx worker does to an idle kept-alive connection
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    do_POST = do_GET


@pytest.fixture
def server():
    srv = _Server()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv, path="/v1/version"):
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


def test_both_kinds_send_at_the_rate_and_none_fail(server):
    result = run_load(LoadSpec(url=url(server), rate=20, duration_s=1.5, clients=2, track_key="version"))
    for kind in ("fresh", "keepalive"):
        k = result.kind(kind)
        assert k["failed"] == 0
        assert 25 <= k["sent"] <= 30, k  # 20/s for 1.5 s, sends due before the deadline
        assert k["latency"]["p50_ms"] is not None
    assert result.failed == 0
    assert server.requests == result.sent
    assert result.answers() == {"v-blue": result.sent}
    assert {r["kind"] for r in result.per_second()} == {"fresh", "keepalive"}
    assert sum(r["sent"] for r in result.per_second()) == result.sent


def test_keepalive_clients_hold_one_connection_fresh_clients_open_one_per_request(server):
    ka = run_load(LoadSpec(url=url(server), rate=20, duration_s=1, kinds=("keepalive",), clients=2))
    assert ka.sent >= 4 and ka.failed == 0           # 20/s for 1 s; a loaded machine sends fewer
    assert len(server.connections) == 2            # one per keepalive client
    assert ka.kind("keepalive")["reconnects"] == 0
    server.connections.clear()
    fresh = run_load(LoadSpec(url=url(server), rate=20, duration_s=1, kinds=("fresh",), clients=2))
    assert len(server.connections) == fresh.sent   # a new source port every time


def test_the_count_limit_stops_it_before_the_time_limit(server):
    result = run_load(LoadSpec(url=url(server), rate=200, duration_s=30, max_requests=40, clients=4))
    assert result.sent == 40
    assert result.elapsed_s < 15                   # far below the 30 s time limit
    assert result.kind("fresh")["sent"] == result.kind("keepalive")["sent"] == 20


def test_5xx_answers_are_failures(server):
    server.status = 503
    result = run_load(LoadSpec(url=url(server), rate=20, duration_s=0.5))
    assert result.sent > 0 and result.failed == result.sent
    assert result.kind("fresh")["errors"] == {"HTTP 503": result.kind("fresh")["sent"]}


def test_a_kept_alive_connection_closed_under_the_client_is_a_failure_not_a_retry(server):
    server.close_silently = True
    result = run_load(LoadSpec(url=url(server), rate=20, duration_s=1.5, kinds=("keepalive", "fresh"), clients=1))
    ka = result.kind("keepalive")
    assert ka["failed"] > 0                       # every second request finds the socket closed
    assert ka["reconnects"] == ka["failed"]
    assert result.kind("fresh")["failed"] == 0    # a fresh connection never notices


def test_connection_refused_is_counted_and_the_load_still_stops():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_load(LoadSpec(url=f"http://127.0.0.1:{port}/", rate=10, duration_s=0.5, timeout_s=1))
    assert result.sent > 0 and result.failed == result.sent
    assert set(result.kind("fresh")["errors"]) == {"ConnectionRefusedError"}


def test_stop_ends_a_long_load_early_and_the_answers_show_a_change(server):
    gen = LoadGenerator(LoadSpec(url=url(server), rate=20, duration_s=60, track_key="version")).start()
    threading.Event().wait(0.6)
    server.version = "v-green"
    threading.Event().wait(0.6)
    result = gen.result()
    assert not gen.running and result.elapsed_s < 30  # far below its 60 s duration
    assert set(result.answers()) == {"v-blue", "v-green"}


@pytest.mark.parametrize("kwargs, message", [
    ({"url": "http://10.0.0.1:80/"}, "127.0.0.1 only"),
    ({"url": "http://localhost:80/"}, "127.0.0.1 only"),
    ({"url": "https://127.0.0.1:80/"}, "http://"),
    ({"url": "http://127.0.0.1/"}, "explicit port"),
    ({"url": "http://127.0.0.1:1/", "rate": 0}, "rate"),
    ({"url": "http://127.0.0.1:1/", "duration_s": 1e6}, "duration"),
    ({"url": "http://127.0.0.1:1/", "kinds": ("http2",)}, "kinds"),
    ({"url": "http://127.0.0.1:1/", "max_requests": 0}, "max_requests"),
])
def test_unbounded_or_remote_specs_are_refused(kwargs, message):
    with pytest.raises(LoadSpecError, match=message):
        LoadGenerator(LoadSpec(**kwargs))


def test_cli_prints_json_and_exits_zero_when_nothing_failed(server, capsys):
    rc = loadgen.main(["--url", url(server), "--rate", "10", "--duration", "0.5", "--json", "--track-key", "version"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["failed"] == 0 and out["sent"] == out["kinds"]["fresh"]["sent"] + out["kinds"]["keepalive"]["sent"]
    assert out["answers"] == {"v-blue": out["sent"]}


def test_cli_refuses_a_remote_host_with_one_line(capsys):
    rc = loadgen.main(["--url", "http://example.com:80/"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
