"""The edge keeps a slot whose /ready answers slower than the check interval: `timeout check 5s`.

HAProxy's check times out after `inter` (1 s) unless `timeout check` says otherwise. A slot on a
starved CPU answers /ready in more than a second; with `fall 2` the edge then marks it DOWN, and
when it is the only serving slot (the old one draining, `flip:drained` in the kill -9 inside the
flip test) every request gets 503. Here the real edge image runs HAProxy on the real rendered
config (images/edge/haproxy.cfg.tmpl through the orchestrator's `render_config`), in front of one
slot that answers /ready after 2 s (over `inter`, well under 5 s) and everything else at once. The
edge must see the slow checks pass, keep the slot UP, and answer every request.

Watched failing with `timeout check 5s` removed from the template: the first check ends L7TOUT.
"""

from __future__ import annotations

import csv
import io
import secrets
import socket
import time
from pathlib import Path

import docker.errors
import pytest
import requests

from orchestrator.backends.compose.haproxy import EdgeRuntime, render_config
from tests.integration.test_monitoring_stack import BASE_IMAGE
from tests.integration.test_monitoring_stack import build as build_local_image

pytestmark = [pytest.mark.engine]

REPO = Path(__file__).resolve().parents[2]
SLOW_READY_S = 2.0       # over the check interval (inter 1s), under `timeout check` (5 s)
WATCH_S = 3 * (SLOW_READY_S + 1)  # about three slow checks in a row, each followed by `inter`

# One slot: /ready after SLOW_READY_S (a starved CPU), every other path at once; threads, so the
# requests through the edge never queue behind a check.
SLOW_SLOT = f"""
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Slot(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/ready":
            time.sleep({SLOW_READY_S})
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("0.0.0.0", 8000), Slot).serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def edge_image(engine) -> str:
    """The edge image of this checkout (only its HAProxy is used: the config is mounted)."""
    return build_local_image(engine, REPO / "images" / "edge", "aads-edge")


def blue_stat(edge: EdgeRuntime) -> dict[str, str]:
    """The `show stat` row of the blue server, every column (check_duration, chkfail, chkdown...)."""
    text = edge.command("show stat")
    return next(r for r in csv.DictReader(io.StringIO(text[2:])) if r["pxname"] == "slots" and r["svname"] == "blue")


@pytest.fixture
def edge_before_a_slow_slot(engine, tmp_path):
    name = f"aadschk{secrets.token_hex(3)}"
    image = edge_image(engine)
    config_dir = tmp_path / "edge"
    config_dir.mkdir(mode=0o755)
    template = (REPO / "images" / "edge" / "haproxy.cfg.tmpl").read_text()
    (config_dir / "haproxy.cfg").write_text(render_config(template, "blue"))
    (config_dir / "haproxy.cfg").chmod(0o644)
    network = engine.networks.create(name, labels={"aads-test.suite": "integration"})
    made = []
    try:
        slot = engine.containers.create(BASE_IMAGE, ["python3", "-c", SLOW_SLOT], name=f"{name}-blue",
                                        labels={"aads-test.suite": "integration"})
        made.append(slot)
        network.connect(slot, aliases=["blue"])
        slot.start()
        port = _free_port()
        edge = engine.containers.create(image, name=f"{name}-edge", ports={"8080/tcp": ("127.0.0.1", port)},
                                        volumes={str(config_dir): {"bind": "/etc/haproxy/aads", "mode": "ro"}},
                                        labels={"aads-test.suite": "integration"})
        made.append(edge)
        network.connect(edge)
        edge.start()
        runtime = EdgeRuntime.for_container(edge)
        deadline = time.monotonic() + 60
        while True:
            try:
                runtime.stats()
                break
            except Exception:
                edge.reload()
                if edge.status != "running" or time.monotonic() > deadline:
                    raise AssertionError(f"edge did not start: {edge.logs()[-2000:].decode(errors='replace')}")
                time.sleep(0.5)
        yield runtime, f"http://127.0.0.1:{port}"
    finally:
        for c in reversed(made):
            try:
                c.remove(force=True)
            except docker.errors.APIError:
                pass
        network.remove()


def test_a_slot_whose_ready_is_slower_than_the_check_interval_stays_up(edge_before_a_slow_slot):
    edge, url = edge_before_a_slow_slot
    # The first check of the slot ends: passed though it took longer than `inter`, or timed out.
    deadline = time.monotonic() + 60
    row = blue_stat(edge)
    while row["check_status"] in ("", "INI", "UNK") or row["check_status"].startswith("*"):
        assert time.monotonic() < deadline, f"no check of the slot ended: {row['check_status']!r}"
        time.sleep(0.2)
        row = blue_stat(edge)
    assert row["check_status"] == "L7OK", (
        f"a /ready answered in {SLOW_READY_S}s failed the edge's check ({row['check_status']}, "
        f"{row['check_duration']} ms): the check gave up before `timeout check`")
    assert int(row["check_duration"]) >= SLOW_READY_S * 1000 * 0.9, row["check_duration"]

    # Through several more slow checks: every request answered, the slot never marked down.
    answers = []
    until = time.monotonic() + WATCH_S
    while time.monotonic() < until:
        answers.append(requests.get(f"{url}/v1/version", timeout=30).status_code)
        time.sleep(0.1)
    row = blue_stat(edge)
    assert set(answers) == {200}, f"{answers.count(503)} of {len(answers)} requests got 503"
    assert (row["status"], row["chkfail"], row["chkdown"]) == ("UP", "0", "0"), row
