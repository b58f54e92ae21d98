"""`python -m serving` as a real process on a real socket: start-up, audit lines on stdout, SIGTERM drain."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import b64
from tests.processes import wait_process_ready

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(model_set, port: int, **env) -> subprocess.Popen:
    environment = {
        **os.environ,
        "AADS_HOST": "127.0.0.1",
        "AADS_PORT": str(port),
        "AADS_MODEL_DIR": str(model_set.path),
        "AADS_MANIFEST_DIR": str(model_set.version_dir),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "serving"], cwd=REPO, env=environment,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    wait_process_ready(base, proc, timeout)


@pytest.fixture
def process(tiny_model_set):
    procs: list[subprocess.Popen] = []

    def run(family: str, **env):
        port = free_port()
        proc = start_service(tiny_model_set(family), port, **env)
        procs.append(proc)
        return proc, f"http://127.0.0.1:{port}"

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def listener_closes(url: str, timeout_s: float) -> bool:
    """Poll until a new connection is refused (the server stopped accepting); False at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=5)
        except httpx.ConnectError:  # refused: not a slow answer on a loaded machine, which is a ReadTimeout
            return True
        except httpx.TimeoutException:
            pass
        time.sleep(0.05)
    return False


def test_sigterm_finishes_in_flight_requests_then_exits_cleanly(process, leaf_png):
    # A lone request waits up to 3 s for batch-mates: it is still in flight when SIGTERM arrives.
    proc, base = process("dinov3", AADS_MAX_WAIT_MS="3000", AADS_MAX_BATCH_SIZE="8")
    wait_ready(base, proc)
    result: dict = {}

    def in_flight():
        result["response"] = httpx.post(f"{base}/v1/diagnose", json={"image": b64(leaf_png)}, timeout=30)

    thread = threading.Thread(target=in_flight)
    thread.start()
    deadline = time.time() + 20
    while not re.search(r'aads_requests_in_flight\{version="[^"]+"\} 2\.0', httpx.get(f"{base}/metrics", timeout=5).text):  # diagnose + this
        assert time.time() < deadline, "the diagnose request never arrived"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert listener_closes(f"{base}/health", timeout_s=60), "still accepting connections 60 s after SIGTERM"
    thread.join(60)
    assert result["response"].status_code == 200  # the request in flight at SIGTERM was answered
    assert result["response"].json()["decision"] in ("accept", "review")
    assert proc.wait(60) == 0
    stdout = proc.stdout.read()
    audit = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert any(a["route"] == "/v1/diagnose" and a["status"] == 200 for a in audit)


def test_a_bad_setting_stops_start_up_with_one_line(tiny_model_set):
    proc = start_service(tiny_model_set("dinov2"), free_port(), AADS_MAX_UPLOAD_BYTES="huge")
    assert proc.wait(60) == 2
    err = proc.stderr.read().strip().splitlines()
    assert err == [err[0]] and err[0].startswith("error: AADS_MAX_UPLOAD_BYTES='huge'")
