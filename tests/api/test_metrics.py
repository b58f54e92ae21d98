"""/metrics of the real app on a tiny model set: every series carries `version`, and the per-version
model series (decision mix, OOD scores, blocks used, memory) move with real diagnoses."""

from __future__ import annotations

import sys
import types

from prometheus_client.parser import text_string_to_metric_families

from serving.metrics import CudaMemoryCollector, ServiceMetrics

from .conftest import b64


def samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def test_every_series_carries_the_served_version_and_model_series_move(service, leaf_png):
    version = service.runtime.manifest.version
    for _ in range(3):
        r = service.client.post("/v1/diagnose", json={"image": b64(leaf_png)})
        assert r.status_code == 200, r.text
    answer = r.json()
    text = service.client.get("/metrics").text
    found = samples(text)
    assert found
    unlabelled = sorted({s.name for s in found if s.labels.get("version") != version})
    assert unlabelled == [], f"series without version={version}: {unlabelled}"

    names = {s.name for s in found}
    for name in ("aads_decisions_total", "aads_ood_score_bucket", "aads_blocks_used_bucket",
                 "aads_request_duration_seconds_bucket", "aads_batch_size_bucket",
                 "process_resident_memory_bytes"):
        assert name in names, name
    decided = {(s.labels["decision"], s.labels["crop"], s.labels["disease"]): s.value
               for s in found if s.name == "aads_decisions_total"}
    key = (answer["decision"], answer["crop"] or "none", answer["disease"] or "none")
    assert decided.get(key, 0) >= 3, decided
    ood_count = sum(s.value for s in found if s.name == "aads_ood_score_count")
    blocks_count = sum(s.value for s in found if s.name == "aads_blocks_used_count")
    assert ood_count >= 3 and blocks_count >= 3
    rss = next(s.value for s in found if s.name == "process_resident_memory_bytes")
    assert rss > 10_000_000


def test_decision_series_exist_at_zero_once_ready(tiny_model_set):
    """increase() over a canary step skips a series' first sample: the series must be born at 0."""
    from .conftest import serve

    with serve(tiny_model_set("dinov2")) as svc:
        found = samples(svc.client.get("/metrics").text)
        crops = svc.runtime.pipeline.crops
        zero = {(s.labels["decision"], s.labels["crop"], s.labels["disease"])
                for s in found if s.name == "aads_decisions_total" and s.value == 0}
        for crop, diseases in crops.items():
            for disease in diseases:
                assert ("review", crop, disease) in zero and ("accept", crop, disease) in zero
        assert ("review", "none", "none") in zero
        assert {s.labels["crop"] for s in found if s.name == "aads_ood_score_count"} >= set(crops)


def test_version_is_unknown_until_set_and_an_existing_version_label_is_kept():
    m = ServiceMetrics()
    m.model_info.labels(version="v-from-label", family="f", model_id="m", random_init="true").set(1)
    before = samples(m.render()[0].decode())
    assert {s.labels["version"] for s in before if s.name == "aads_requests_in_flight"} == {"unknown"}
    m.set_version("v9.9.9-x")
    after = samples(m.render()[0].decode())
    assert {s.labels["version"] for s in after if s.name == "aads_requests_in_flight"} == {"v9.9.9-x"}
    assert {s.labels["version"] for s in after if s.name == "aads_model_info"} == {"v-from-label"}


def test_cuda_memory_is_reported_only_when_cuda_is_in_use(monkeypatch):
    """The collector's branches with a stand-in torch module (a GPU is not on this machine; the GPU
    check script reads the real series)."""
    assert list(CudaMemoryCollector().collect()) == [] or "torch" in sys.modules

    fake_cuda = types.SimpleNamespace(
        is_available=lambda: True, is_initialized=lambda: True, device_count=lambda: 2,
        memory_allocated=lambda i: 1000 * (i + 1), memory_reserved=lambda i: 4000 * (i + 1))
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=fake_cuda))
    families = {f.name: f for f in CudaMemoryCollector().collect()}
    got = {(s.name, s.labels["device"]): s.value for f in families.values() for s in f.samples}
    assert got == {("aads_cuda_memory_allocated_bytes", "0"): 1000.0, ("aads_cuda_memory_allocated_bytes", "1"): 2000.0,
                   ("aads_cuda_memory_reserved_bytes", "0"): 4000.0, ("aads_cuda_memory_reserved_bytes", "1"): 8000.0}

    fake_cuda.is_initialized = lambda: False
    assert list(CudaMemoryCollector().collect()) == []
