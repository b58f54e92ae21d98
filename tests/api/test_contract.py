"""The API contract, run once against a DINOv2 and once against a DINOv3 tiny model set.

Same requests, same answers' shape: what an image of any version must serve.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from serving.manifest import load_manifest, manifest_sha256

from .conftest import b64

DIAGNOSIS_FIELDS = {
    "decision", "reason", "crop", "crop_confidence", "disease", "confidence", "ood_score", "router_ood_score",
    "backbone", "version", "blocks_used", "batch_size", "timings", "model_note",
}
REASONS = {None, "not_a_supported_crop", "unfamiliar_for_crop", "low_confidence"}


def check_diagnosis(body: dict, service) -> None:
    manifest = load_manifest(service.model_set.version_dir)
    assert set(body) == DIAGNOSIS_FIELDS
    assert body["decision"] in ("accept", "review") and body["reason"] in REASONS
    assert (body["decision"] == "accept") == (body["reason"] is None)
    assert body["version"] == manifest.version
    assert body["backbone"] == {"family": manifest.backbone.family, "model_id": manifest.backbone.model_id}
    assert body["crop"] in manifest.crops
    assert body["disease"] in manifest.crops[body["crop"]]
    assert 0.0 <= body["confidence"] <= 1.0 and body["ood_score"] >= 0.0
    assert 1 <= body["blocks_used"] <= service.runtime.pipeline.info["num_blocks"]
    assert {"decode", "queue", "batch", "total"} <= set(body["timings"])
    assert "randomly initialized" in body["model_note"]  # tiny sets have random backbones: every answer says so


def test_probes(service):
    health = service.client.get("/health")
    assert health.status_code == 200
    assert health.json()["state"] == "ready" and health.json()["load_seconds"] > 0
    ready = service.client.get("/ready")
    assert ready.status_code == 200 and ready.json() == {
        "ready": True, "state": "ready", "version": service.model_set.version
    }


def test_version_facts(service):
    manifest = load_manifest(service.model_set.version_dir)
    body = service.client.get("/v1/version").json()
    assert body["version"] == manifest.version
    assert body["backbone"] == {"family": manifest.backbone.family, "model_id": manifest.backbone.model_id}
    assert body["fallback"] == manifest.fallback
    assert body["manifest_sha256"] == manifest_sha256(service.model_set.version_dir)
    assert body["random_init"] is True and body["synthetic"] is True
    assert body["model"]["family"] == manifest.backbone.family
    assert body["build"] == {"version": "test-build", "revision": "0123abc"}
    assert body["dynamic_blocks"]["enabled"] == manifest.dynamic_blocks.enabled


def test_crops_and_adapters(service):
    manifest = load_manifest(service.model_set.version_dir)
    assert service.client.get("/v1/crops").json() == {"crops": manifest.crops}
    for crop, classes in manifest.crops.items():
        info = service.client.get(f"/v1/adapters/{crop}").json()
        assert info["crop"] == crop and info["classes"] == classes
        assert info["rank"] == manifest.adapter_spec.lora.rank
        assert info["targets"] == manifest.adapter_spec.lora.target_modules
        assert info["sha256"] and info["random_init"] is True
    missing = service.client.get("/v1/adapters/rice")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "unknown_crop" and "rice" in missing.json()["error"]["message"]


def test_diagnose_json_and_multipart_agree(service, leaf_png):
    by_json = service.client.post("/v1/diagnose", json={"image": b64(leaf_png)})
    assert by_json.status_code == 200, by_json.text
    check_diagnosis(by_json.json(), service)
    by_upload = service.client.post("/v1/diagnose", files={"image": ("leaf.png", leaf_png, "image/png")})
    assert by_upload.status_code == 200, by_upload.text
    check_diagnosis(by_upload.json(), service)
    for field in ("decision", "reason", "crop", "disease"):
        assert by_json.json()[field] == by_upload.json()[field]
    assert abs(by_json.json()["confidence"] - by_upload.json()["confidence"]) < 1e-4


def test_crop_hint_skips_the_router(service, leaf_png):
    for crop in ("pepper", "corn"):
        for request in (
            {"json": {"image": b64(leaf_png), "crop_hint": crop}},
            {"files": {"image": ("leaf.png", leaf_png, "image/png")}, "data": {"crop_hint": crop}},
        ):
            body = service.client.post("/v1/diagnose", **request).json()
            assert body["crop"] == crop and body["router_ood_score"] is None and body["crop_confidence"] is None
            assert body["reason"] != "not_a_supported_crop"


def test_batch_returns_one_result_per_item_in_order(service, sample_pngs):
    singles = [service.client.post("/v1/diagnose", json={"image": b64(p)}).json() for p in sample_pngs]
    response = service.client.post("/v1/diagnose/batch", json={"images": [{"image": b64(p)} for p in sample_pngs]})
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == len(sample_pngs) and body["failed"] == 0
    assert [r["index"] for r in body["results"]] == list(range(len(sample_pngs)))
    for single, item in zip(singles, body["results"]):
        check_diagnosis(item["result"], service)
        for field in ("decision", "reason", "crop", "disease"):
            assert item["result"][field] == single[field]
        assert abs(item["result"]["confidence"] - single["confidence"]) < 1e-4


def test_concurrent_requests_are_batched_and_each_gets_its_own_result(service, sample_pngs):
    singles = [service.client.post("/v1/diagnose", json={"image": b64(p)}).json() for p in sample_pngs]
    assert len({round(s["confidence"], 5) for s in singles}) > 1  # different images, different answers

    def call(png: bytes) -> dict:
        response = service.client.post("/v1/diagnose", json={"image": b64(png)})
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(len(sample_pngs)) as pool:
        together = list(pool.map(call, sample_pngs))
    assert max(r["batch_size"] for r in together) > 1  # they shared forward passes
    for single, mine in zip(singles, together):
        assert (mine["crop"], mine["disease"], mine["decision"]) == (single["crop"], single["disease"], single["decision"])
        assert abs(mine["confidence"] - single["confidence"]) < 1e-4


def test_metrics(service, leaf_png):
    service.client.post("/v1/diagnose", json={"image": b64(leaf_png)})
    service.client.get("/v1/adapters/nope")
    text = service.client.get("/metrics").text
    v = service.runtime.manifest.version  # every series carries the served version (tests/api/test_metrics.py)
    assert f'aads_requests_total{{method="POST",route="/v1/diagnose",status="200",version="{v}"}}' in text
    assert 'route="/v1/adapters/{crop}",status="404"' in text  # the template, not the raw path
    for name in ("aads_request_duration_seconds_bucket", "aads_batch_size_bucket", "aads_model_load_seconds",
                 "aads_queue_depth", f'aads_model_state{{state="ready",version="{v}"}} 1.0', "aads_diagnoses_total"):
        assert name in text, name


def test_openapi_and_docs(service):
    spec = service.client.get("/openapi.json").json()
    for path in ("/health", "/ready", "/metrics", "/v1/version", "/v1/crops", "/v1/adapters/{crop}",
                 "/v1/diagnose", "/v1/diagnose/batch"):
        assert path in spec["paths"], path
    content = spec["paths"]["/v1/diagnose"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    docs = service.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_gzip(service):
    response = service.client.get("/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert response.headers.get("content-encoding") == "gzip"


def test_audit_line_per_request_without_the_image(service, leaf_png, audit_lines):
    image = b64(leaf_png)
    service.client.post("/v1/diagnose", json={"image": image}, headers={"X-Request-ID": "req-42"})
    service.client.get("/v1/crops")
    assert len(audit_lines.lines) == 2
    line = audit_lines.lines[0]
    assert line["route"] == "/v1/diagnose" and line["status"] == 200 and line["method"] == "POST"
    assert line["request_id"] == "req-42" and line["key_id"] == "anonymous" and line["latency_ms"] > 0
    assert all(image[:40] not in raw for raw in audit_lines.raw)


def test_out_of_distribution_samples_come_back_review(service, sample_pngs):
    """The last two samples are not leaves: never `accept`, and the reason names the check that fired."""
    for png in sample_pngs[4:]:
        body = service.client.post("/v1/diagnose", json={"image": b64(png)}).json()
        check_diagnosis(body, service)
        assert (body["decision"], body["reason"]) == ("review", "not_a_supported_crop"), body
        assert body["router_ood_score"] > 1.0
        hinted = service.client.post("/v1/diagnose", json={"image": b64(png), "crop_hint": "tomato"}).json()
        assert (hinted["decision"], hinted["reason"]) == ("review", "unfamiliar_for_crop"), hinted
        assert hinted["ood_score"] > 1.0
