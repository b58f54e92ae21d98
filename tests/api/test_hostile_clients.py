"""Hostile clients against the real app and model set: nothing an upload or a client sends learns a
path or an exception's text, decodes are bounded, a trickled body is cut, the real client is seen."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from serving import images as serving_images
from serving import routes as serving_routes
from serving.runtime import Health, load_pipeline
from serving.settings import parse_api_keys

from .conftest import b64, png_bytes, serve
from .test_process import free_port, start_service, wait_ready

SECRET_PATH = "/srv/secret/models/backbone/weights.safetensors"


class FailingPipeline:
    """The real pipeline, failing on batches that hold a red image, with a path in its exception."""

    def __init__(self, inner):
        self.inner = inner
        self.crops, self.info = inner.crops, inner.info

    def warmup(self):
        self.inner.warmup()

    def adapter_info(self, crop):
        return self.inner.adapter_info(crop)

    def diagnose(self, images, crop_hints):
        if any(im.getpixel((0, 0)) == (255, 0, 0) for im in images):
            raise RuntimeError(f"cannot map {SECRET_PATH}: Input/output error")
        return self.inner.diagnose(images, crop_hints)


def test_a_failed_load_tells_the_client_no_path_and_the_log_all_of_it(tiny_model_set, tmp_path, caplog):
    missing = tmp_path / "no-models-here"
    with caplog.at_level(logging.ERROR, logger="serving.runtime"):
        with serve(tiny_model_set("dinov2"), wait=False, model_dir=missing) as svc:
            assert svc.runtime.wait_loaded(60) is Health.FAILED
            health = svc.client.get("/health")
            ready = svc.client.get("/ready")
    assert health.json()["state"] == "failed" and health.json()["error"]
    assert ready.status_code == 503
    for answer in (health.text, ready.text):
        assert str(tmp_path) not in answer and "Error" not in answer, answer
    assert str(missing) in caplog.text  # the operator still learns where it looked


def test_a_model_error_answers_without_the_exception_text(tiny_model_set, leaf_png, caplog):
    red = png_bytes(Image.new("RGB", (64, 64), (255, 0, 0)))
    with serve(tiny_model_set("dinov3"), loader=lambda s, m: FailingPipeline(load_pipeline(s, m))) as svc:
        with caplog.at_level(logging.WARNING, logger="serving.routes"):
            r = svc.client.post("/v1/diagnose", json={"image": b64(red)})
        assert r.status_code == 422 and r.json()["error"]["code"] == "model_error"
        assert SECRET_PATH not in r.text and "RuntimeError" not in r.text
        assert SECRET_PATH in caplog.text
        batch = svc.client.post("/v1/diagnose/batch", json={"images": [{"image": b64(red)}, {"image": b64(leaf_png)}]})
        assert batch.status_code == 200 and SECRET_PATH not in batch.text
        assert svc.client.post("/v1/diagnose", json={"image": b64(leaf_png)}).status_code == 200


def test_bad_bodies_never_echo_parser_text(tiny_model_set):
    with serve(tiny_model_set("dinov2")) as svc:
        r = svc.client.post("/v1/diagnose", content=b'{"image": [', headers={"content-type": "application/json"})
        assert r.status_code == 422 and "Expecting" not in r.text
        r = svc.client.post("/v1/diagnose", content=b"--x\r\ngarbage",
                            headers={"content-type": "multipart/form-data; boundary=x"})
        assert r.status_code in (400, 422) and "Traceback" not in r.text


def test_concurrent_decodes_never_exceed_the_setting(tiny_model_set, monkeypatch):
    running, peak, lock = [0], [0], threading.Lock()
    real = serving_images.open_image

    def slow_decode(*args, **kwargs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.2)
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(serving_routes, "open_image", slow_decode)
    big = io.BytesIO()
    Image.new("RGB", (1600, 1200), (40, 150, 40)).save(big, "JPEG")
    body = {"image": b64(big.getvalue())}
    # The same body eight times: without the response cache each one is decoded.
    with serve(tiny_model_set("dinov2"), decode_concurrency=2, max_wait_ms=5, cache_entries=0) as svc:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: svc.client.post("/v1/diagnose", json=body).status_code, range(8)))
        assert codes == [200] * 8
        assert 1 <= peak[0] <= 2, peak[0]  # eight at once were sent: never more than the setting
        assert svc.app.state.decode_gate.peak <= 2


def test_the_audit_line_and_rate_limits_see_the_client_behind_a_trusted_edge(tiny_model_set, leaf_png, audit_lines):
    keys = parse_api_keys("ops:ops-secret-123", "test")
    # TestClient's peer is "testclient"; a CIDR that holds no such address trusts nobody here ...
    with serve(tiny_model_set("dinov2"), api_keys=keys, trusted_proxies=("10.0.0.0/8",)) as svc:
        svc.client.get("/v1/version", headers={"X-API-Key": "ops-secret-123", "X-Forwarded-For": "203.0.113.9"})
    assert audit_lines.lines[-1]["client"] == "testclient"


@pytest.fixture
def real_service(tiny_model_set):
    procs = []

    def run(**env):
        port = free_port()
        proc = start_service(tiny_model_set("dinov2"), port, **env)
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc)
        return port

    yield run
    for proc in procs:
        proc.kill()
        proc.wait(10)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until the peer closes (True) or `seconds` pass (False); returns what it sent."""
    sock.settimeout(0.5)
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def test_a_trickled_body_is_cut_after_the_body_timeout(real_service, leaf_png):
    port = real_service(AADS_BODY_TIMEOUT_S="2")
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"POST /v1/diagnose HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n{\"image\": \"")
        started = time.monotonic()
        answered = b""
        for _ in range(30):  # one byte a second, far slower than the timeout allows
            try:
                slow.sendall(b"A")
            except OSError:
                break
            slow.settimeout(1.0)
            try:
                answered += slow.recv(65536)
            except socket.timeout:
                continue
            if b"\r\n\r\n" in answered:
                break
        elapsed = time.monotonic() - started
        # The head and the body may come in separate packets: read on until the server closes.
        slow.settimeout(5.0)
        try:
            while chunk := slow.recv(65536):
                answered += chunk
        except OSError:
            pass
    assert answered.startswith(b"HTTP/1.1 408"), answered[:200]
    assert b"body_timeout" in answered
    assert elapsed < 20  # 2 s configured; generous for a busy machine


def test_past_max_connections_the_service_answers_503_at_once(real_service):
    port = real_service(AADS_MAX_CONNECTIONS="4")
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
    try:
        for s in held:  # each holds a request open: headers sent, body never
            s.sendall(b"POST /v1/diagnose HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 10\r\n\r\n")
        answers = []
        for s in held:
            _, answer = _closed_within(s, 3)
            answers.append(answer[:12])
        # Six held connections, a limit of 4: whatever order the server reads them in, at least
        # three requests find 4 connections open and are answered 503 at once, not queued; the
        # others (if any) still wait for their body.
        assert answers.count(b"HTTP/1.1 503") >= 3, answers
        assert set(answers) <= {b"HTTP/1.1 503", b""}, answers
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 30
    while True:  # once they are gone the service answers again
        with socket.create_connection(("127.0.0.1", port), timeout=10) as probe:
            probe.sendall(b"GET /v1/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            _, answer = _closed_within(probe, 10)
        if answer.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
