"""The response cache: same bytes + crop_hint + version answer from memory, bounded, with X-Cache."""

import pytest

from serving.response_cache import ResponseCache, cache_key
from tests.api.conftest import b64, serve


@pytest.fixture(scope="module")
def cached(tiny_model_set):
    with serve(tiny_model_set("dinov3"), max_wait_ms=5, cache_entries=3, cache_bytes=1 << 20) as svc:
        yield svc


def _metric(client, name: str) -> float:
    """The sample `name` (labels as written, `version` aside: every series carries it)."""
    base, _, labels = name.partition("{")
    want = {p for p in labels.rstrip("}").split(",") if p}
    for line in client.get("/metrics").text.splitlines():
        series, _, value = line.rpartition(" ")
        head, _, got = series.partition("{")
        if head == base and want <= set(got.rstrip("}").split(",")):
            return float(value)
    raise AssertionError(f"{name} not in /metrics")


def test_a_repeated_upload_is_a_hit_with_the_same_answer(cached, sample_pngs):
    client = cached.client
    first = client.post("/v1/diagnose", json={"image": b64(sample_pngs[0])})
    again = client.post("/v1/diagnose", files={"image": ("leaf.png", sample_pngs[0], "image/png")})
    assert first.status_code == again.status_code == 200
    assert first.headers["X-Cache"] == "miss" and again.headers["X-Cache"] == "hit"
    a, b = first.json(), again.json()
    assert {k: v for k, v in a.items() if k not in ("timings", "batch_size")} == \
        {k: v for k, v in b.items() if k not in ("timings", "batch_size")}
    assert b["batch_size"] == 0 and b["timings"]["cache"] > 0 and set(b["timings"]) == set(a["timings"]) | {"cache"}
    assert all(b["timings"][k] == 0 for k in a["timings"])
    assert _metric(client, 'aads_cache_lookups_total{result="hit"}') >= 1
    assert 0 < _metric(client, "aads_cache_hit_ratio") <= 1


def test_the_crop_hint_is_part_of_the_key(cached, sample_pngs):
    client = cached.client
    routed = client.post("/v1/diagnose", json={"image": b64(sample_pngs[1])})
    hinted = client.post("/v1/diagnose", json={"image": b64(sample_pngs[1]), "crop_hint": "corn"})
    assert hinted.headers["X-Cache"] == "miss" and hinted.json()["crop"] == "corn"
    assert client.post("/v1/diagnose", json={"image": b64(sample_pngs[1])}).json()["crop"] == routed.json()["crop"]


def test_entries_are_bounded_least_recently_used_first(cached, sample_pngs):
    client = cached.client
    for png in sample_pngs[2:6]:  # four new uploads into a cache of three entries
        assert client.post("/v1/diagnose", json={"image": b64(png)}).headers["X-Cache"] == "miss"
    assert len(cached.runtime.cache) == 3 and _metric(client, "aads_cache_entries") == 3
    assert client.post("/v1/diagnose", json={"image": b64(sample_pngs[5])}).headers["X-Cache"] == "hit"
    assert client.post("/v1/diagnose", json={"image": b64(sample_pngs[2])}).headers["X-Cache"] == "miss"


def test_a_batch_is_a_hit_only_when_every_item_is(cached, sample_pngs):
    client = cached.client
    body = {"images": [{"image": b64(sample_pngs[0])}, {"image": b64(sample_pngs[0])}]}
    client.post("/v1/diagnose", json={"image": b64(sample_pngs[0])})
    assert client.post("/v1/diagnose/batch", json=body).headers["X-Cache"] == "hit"
    body["images"].append({"image": b64(sample_pngs[3])})
    client.post("/v1/diagnose", json={"image": b64(sample_pngs[4])})  # push [3] out
    client.post("/v1/diagnose", json={"image": b64(sample_pngs[1])})
    assert client.post("/v1/diagnose/batch", json=body).headers["X-Cache"] == "miss"


def test_errors_are_not_cached(cached):
    for _ in range(2):
        r = cached.client.post("/v1/diagnose", json={"image": b64(b"not an image")})
        assert r.status_code == 422 and "X-Cache" not in r.headers


def test_the_cache_can_be_turned_off(tiny_model_set, sample_pngs):
    with serve(tiny_model_set("dinov3"), max_wait_ms=5, cache_entries=0) as svc:
        for _ in range(2):
            r = svc.client.post("/v1/diagnose", json={"image": b64(sample_pngs[0])})
            assert r.status_code == 200 and "X-Cache" not in r.headers and r.json()["batch_size"] >= 1
        assert len(svc.runtime.cache) == 0


def test_the_version_is_part_of_the_key():
    assert cache_key(b"x", None, "v5.5.3-performance") != cache_key(b"x", None, "v5.5.4-dinov3")
    assert cache_key(b"x", None, "v1") != cache_key(b"x", "corn", "v1")


def test_the_byte_bound_evicts_and_an_oversized_result_is_not_stored():
    cache = ResponseCache(max_entries=100, max_bytes=300)
    for i in range(5):
        cache.put(f"k{i}", {"blob": "x" * 80})
    assert cache.bytes <= 300 and len(cache) < 5 and cache.get("k4") is not None and cache.get("k0") is None
    cache.put("big", {"blob": "x" * 400})
    assert cache.get("big") is None
    assert (cache.hits, cache.misses) == (1, 2)
