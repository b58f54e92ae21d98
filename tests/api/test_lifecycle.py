"""Service states on the real app and model set: starting, ready, failed, stopping; auth, rate limit, full queue."""

from __future__ import annotations

import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.runtime import Health, load_pipeline
from serving.settings import RateLimit, parse_api_keys

from .conftest import b64, serve


class GatedPipeline:
    """The real pipeline, whose batched calls wait for a gate: holds a batch 'in flight' on demand."""

    def __init__(self, inner, gate: threading.Event):
        self.inner, self.gate = inner, gate
        self.crops, self.info = inner.crops, inner.info

    def warmup(self):
        self.inner.warmup()

    def adapter_info(self, crop):
        return self.inner.adapter_info(crop)

    def diagnose(self, images, crop_hints):
        self.gate.wait(30)
        return self.inner.diagnose(images, crop_hints)


def test_starting_then_ready(tiny_model_set, leaf_png):
    release = threading.Event()

    def slow_loader(settings, manifest):
        release.wait(30)
        return load_pipeline(settings, manifest)

    with serve(tiny_model_set("dinov3"), loader=slow_loader, wait=False) as svc:
        health = svc.client.get("/health")
        assert health.status_code == 200 and health.json()["state"] == "starting"
        ready = svc.client.get("/ready")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "5"
        assert ready.json()["error"]["code"] == "not_ready" and "loading" in ready.json()["error"]["message"]
        diagnose = svc.client.post("/v1/diagnose", json={"image": b64(leaf_png)})
        assert diagnose.status_code == 503 and diagnose.json()["error"]["code"] == "not_ready"
        assert svc.client.get("/v1/crops").status_code == 503
        release.set()
        assert svc.runtime.wait_loaded(60) is Health.READY
        assert svc.client.get("/ready").status_code == 200
        assert svc.client.post("/v1/diagnose", json={"image": b64(leaf_png)}).status_code == 200


def test_missing_model_set_fails_naming_the_directory_in_the_log_only(tiny_model_set, tmp_path, caplog):
    model_set = tiny_model_set("dinov2")
    missing = tmp_path / "no-models-here"
    with serve(model_set, wait=False, model_dir=missing) as svc:
        assert svc.runtime.wait_loaded(60) is Health.FAILED
        assert str(missing) in caplog.text and str(missing) in svc.runtime.error
        health = svc.client.get("/health").json()
        assert health["state"] == "failed" and str(missing) not in health["error"]
        ready = svc.client.get("/ready")
        assert ready.status_code == 503 and str(missing) not in ready.json()["error"]["message"]
        assert svc.client.post("/v1/diagnose", json={"image": "AAAA"}).status_code == 503
        assert re.search(r'aads_model_state\{state="failed",version="[^"]+"\} 1\.0', svc.client.get("/metrics").text)


def test_a_tampered_adapter_file_fails_naming_the_file_in_the_log(tiny_model_set, tmp_path, caplog):
    model_set = tiny_model_set("dinov3")
    copy = tmp_path / "models"
    shutil.copytree(model_set.path, copy)
    head = copy / "adapters" / "pepper" / "head.safetensors"
    data = bytearray(head.read_bytes())
    data[-1] ^= 0xFF
    head.write_bytes(bytes(data))
    with serve(model_set, wait=False, model_dir=copy) as svc:
        assert svc.runtime.wait_loaded(60) is Health.FAILED
        message = svc.client.get("/ready").json()["error"]["message"]
        assert "head.safetensors" not in message and "failed to load" in message
        assert "head.safetensors" in caplog.text and "pepper" in caplog.text


def test_shutdown_turns_readiness_off_but_finishes_in_flight_work(tiny_model_set, leaf_png):
    gate = threading.Event()
    with serve(tiny_model_set("dinov2"), loader=lambda s, m: GatedPipeline(load_pipeline(s, m), gate),
               max_batch_size=4, max_wait_ms=0) as svc:
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(svc.client.post, "/v1/diagnose", json={"image": b64(leaf_png)})
            _wait_for(lambda: svc.runtime.batcher.queue_depth == 0 and _running(svc), "a batch in flight")
            svc.runtime.begin_shutdown()
            assert svc.client.get("/ready").status_code == 503
            assert "shutting down" in svc.client.get("/ready").json()["error"]["message"]
            assert svc.client.get("/health").json()["state"] == "stopping"
            late = svc.client.post("/v1/diagnose", json={"image": b64(leaf_png)})
            assert late.status_code == 503
            gate.set()
            assert in_flight.result(30).status_code == 200


def test_a_full_queue_answers_503_with_retry_after(tiny_model_set, leaf_png):
    gate = threading.Event()
    with serve(tiny_model_set("dinov3"), loader=lambda s, m: GatedPipeline(load_pipeline(s, m), gate),
               max_batch_size=1, max_wait_ms=0, queue_size=2, cache_entries=0) as svc:
        try:
            with ThreadPoolExecutor(3) as pool:
                waiting = [pool.submit(svc.client.post, "/v1/diagnose", json={"image": b64(leaf_png)}) for _ in range(3)]
                _wait_for(lambda: svc.runtime.batcher.queue_depth == 2, "one running and two queued")
                refused = svc.client.post("/v1/diagnose", json={"image": b64(leaf_png)})
                assert refused.status_code == 503
                assert int(refused.headers["retry-after"]) >= 1
                assert refused.json()["error"]["code"] == "overloaded"
                batch = svc.client.post("/v1/diagnose/batch", json={"images": [{"image": b64(leaf_png)}] * 2})
                assert batch.status_code == 503
                gate.set()
                assert [f.result(30).status_code for f in waiting] == [200, 200, 200]
        finally:
            gate.set()
        assert svc.client.post("/v1/diagnose", json={"image": b64(leaf_png)}).status_code == 200


def test_api_keys_and_rate_limit_on_the_real_app(tiny_model_set, leaf_png, audit_lines):
    keys = parse_api_keys("ops:ops-secret-123,ci:ci-secret-456", "test")
    with serve(tiny_model_set("dinov2"), api_keys=keys, rate_limit=RateLimit(3, 3600)) as svc:
        client = svc.client
        assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
        refused = client.post("/v1/diagnose", json={"image": b64(leaf_png)})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"
        wrong = client.get("/v1/crops", headers={"X-API-Key": "ops-secret-124"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        ops = {"Authorization": "Bearer ops-secret-123"}
        assert client.post("/v1/diagnose", json={"image": b64(leaf_png)}, headers=ops).status_code == 200
        assert client.get("/v1/crops", headers=ops).status_code == 200
        assert client.get("/v1/version", headers=ops).status_code == 200
        limited = client.get("/v1/crops", headers=ops)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert client.get("/v1/crops", headers={"X-API-Key": "ci-secret-456"}).status_code == 200
    by_route = [(line["route"], line["status"], line["key_id"]) for line in audit_lines.lines]
    assert ("/v1/diagnose", 200, "ops") in by_route and ("/v1/crops", 429, "ops") in by_route
    assert ("/v1/crops", 200, "ci") in by_route
    assert not any("secret" in raw for raw in audit_lines.raw)


def _running(svc) -> bool:
    text = svc.client.get("/metrics").text
    return re.search(r'aads_requests_in_flight\{version="[^"]+"\} 2\.0', text) is not None  # the diagnose waiting on its batch + this metrics call


def _wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")
