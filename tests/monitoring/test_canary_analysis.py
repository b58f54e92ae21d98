"""The canary analysis against a REAL Prometheus scraping REAL serving processes (tiny model sets).

Four processes are scraped as four slots, all sent the same leaves of every crop and disease:
`blue` (live), `green` (the same model: a healthy candidate), `slow` (the same model with a 6 s
batching wait: each lone request waits that long for company: an inflated p99) and `biased` (the
same model set with tomato's OOD thresholds shrunk, tests/biased_models.py: healthy, but it sends
most tomato leaves to review). Candidate and live are told apart by `slot`, since all four run
the same version.
"""

from __future__ import annotations

import dataclasses
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from orchestrator.canary import (
    FAIL,
    PASS,
    PrometheusClient,
    PrometheusError,
    Thresholds,
    analyse,
    measure,
)
from orchestrator.canary import queries as q
from serving.manifest import load_manifest
from serving.synthetic import leaf_image

from ..biased_models import make_biased
from .conftest import start_serving, wait_ready

PER_SLOT = 24
SLOW_REQUESTS = 10  # 6 s each: enough for a p99, short enough for the suite


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def stack(demo_model_set, run_prometheus, tmp_path_factory):
    model_set = demo_model_set("v5.5.4-dinov3")
    biased_dir = make_biased(model_set.path, tmp_path_factory.mktemp("biased") / "models", crop="tomato")
    biased = dataclasses.replace(model_set, path=biased_dir)
    crops = load_manifest(model_set.version_dir).crops
    leaves = [png(leaf_image(crop, disease, i, seed=7)) for i in range(2)
              for crop, diseases in crops.items() for disease in diseases]
    services = {"blue": start_serving(model_set, "blue"), "green": start_serving(model_set, "green"),
                "slow": start_serving(model_set, "slow", AADS_MAX_WAIT_MS="6000"),
                "biased": start_serving(biased, "biased")}
    try:
        for s in services.values():
            wait_ready(s)
        prom = run_prometheus({name: s.port for name, s in services.items()})
        prom.wait_targets_up(len(services))
        time.sleep(2)  # a scrape of every series at 0 before the first request (increase() needs it)
        started = time.time()

        def send(name: str) -> list[int]:
            images = leaves
            codes = []
            with httpx.Client(base_url=services[name].url, timeout=60) as client:
                for i in range(SLOW_REQUESTS if name == "slow" else PER_SLOT):
                    codes.append(client.post("/v1/diagnose", files={"image": ("x.png", images[i % len(images)],
                                                                              "image/png")}).status_code)
            return codes

        with ThreadPoolExecutor(len(services)) as pool:
            codes = dict(zip(services, pool.map(send, services)))
        assert all(c == 200 for cs in codes.values() for c in cs), codes
        time.sleep(3)  # the last scrape
        with PrometheusClient(prom.url) as client:
            yield client, started
    finally:
        for s in services.values():
            s.stop()


def since(started: float) -> float:
    """A window from just before the traffic began until now (tests run one after another)."""
    return time.time() - started + 2


def slot(name: str) -> str:
    return q.matcher("slot", name)


def test_a_healthy_candidate_passes(stack):
    prom, started = stack
    window_s = since(started)
    verdict = analyse(prom, slot("green"), slot("blue"), window_s, Thresholds(max_wait_s=0))
    f = verdict.figures
    assert verdict.outcome == PASS, verdict.reason
    assert f.candidate_diagnoses == pytest.approx(PER_SLOT, abs=1) and f.live_diagnoses == pytest.approx(PER_SLOT, abs=1)
    assert f.error_rate == 0 and f.decision_divergence == pytest.approx(0, abs=0.05)
    assert f.review_increase == pytest.approx(0, abs=0.05) and f.ood_shift == pytest.approx(0, abs=0.05)


def test_an_inflated_p99_fails_on_latency(stack):
    prom, started = stack
    window_s = since(started)
    verdict = analyse(prom, slot("slow"), slot("blue"), window_s, Thresholds(max_wait_s=0, min_diagnoses=SLOW_REQUESTS))
    assert verdict.outcome == FAIL and verdict.metric == "p99_ratio", (verdict.reason, verdict.figures)
    assert verdict.figures.p99_ratio > 1.5


def test_a_healthy_but_biased_model_fails_on_the_model_behaviour(stack):
    """No errors, no slower: only what it decides differs (tomato leaves go to review)."""
    prom, started = stack
    window_s = since(started)
    verdict = analyse(prom, slot("biased"), slot("blue"), window_s, Thresholds(max_wait_s=0))
    f = verdict.figures
    assert verdict.outcome == FAIL and verdict.metric == "review_increase", (verdict.reason, f)
    assert f.error_rate == 0 and f.p99_ratio < 1.5, f
    assert f.candidate_review_share > f.live_review_share + 0.3, f  # tomato is half the leaves
    assert f.decision_divergence > 0.25 and f.ood_shift > 0.3, f  # the other model figures see it too
    no_review_limit = Thresholds(max_wait_s=0, max_review_increase=1.0)
    assert analyse(prom, slot("biased"), slot("blue"), since(started), no_review_limit).metric == "decision_divergence"


def test_too_little_traffic_waits_bounded_then_fails_naming_traffic(stack):
    prom, started = stack
    window_s = since(started)
    waits = []
    started = time.monotonic()
    verdict = analyse(prom, slot("nobody"), slot("blue"), window_s, Thresholds(max_wait_s=2, poll_s=0.5),
                      on_wait=waits.append)
    assert verdict.outcome == FAIL and verdict.metric == "traffic", verdict.reason
    assert len(waits) >= 2 and time.monotonic() - started < 30
    assert "candidate diagnosed no images" in verdict.reason


def test_every_analysis_query_is_valid_promql_on_the_real_server(stack):
    prom, started = stack
    window_s = since(started)
    w = q.window(window_s)
    c, lv = slot("green"), slot("blue")
    for expr in (q.diagnoses(c, w), q.requests(c, w), q.error_rate(c, w), q.latency_quantile(c, w),
                 q.latency_ratio(c, lv, w), q.review_share(c, w), q.review_share_increase(c, lv, w),
                 q.decision_divergence(c, lv, w), q.ood_shift(c, lv, w), q.ood_quantile(c, w),
                 q.mean_blocks(c, w), q.mean_batch_size(c, w), q.resident_memory(c), q.cuda_memory(c)):
        prom.query(expr)  # raises PrometheusError on a parse error
    with pytest.raises(PrometheusError, match="refused the query"):
        prom.query("sum(")


def test_the_recording_rules_evaluate_on_real_series(stack):
    prom, _ = stack
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shares = prom.query("version:aads_review:ratio_rate5m")
        if shares:
            break
        time.sleep(1)
    assert shares and 0 <= shares[0].value <= 1
    assert prom.query("version:aads_diagnose_errors:ratio_rate1m")[0].value == 0


def test_measure_reports_missing_data_as_none(stack):
    prom, started = stack
    window_s = since(started)
    f = measure(prom, slot("nobody"), slot("nobody-either"), window_s)
    assert f.candidate_diagnoses is None and f.p99_ratio is None and f.decision_divergence is None


def test_an_unreachable_prometheus_is_one_clear_error():
    with PrometheusClient("http://127.0.0.1:9", timeout_s=2) as prom, \
            pytest.raises(PrometheusError, match="cannot be reached"):
        prom.query("up")


def test_compare_prints_two_slots_side_by_side_from_prometheus(stack, capsys):
    import json

    from orchestrator.cli import main

    prom, started = stack
    window_s = since(started)
    assert main(["compare", "blue", "slow", "--by", "slot", "--window", f"{int(window_s)}s",
                 "--prometheus", prom.url, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    figures = result["figures"]
    assert figures["diagnoses"]["a"] == pytest.approx(PER_SLOT, abs=1)
    assert figures["diagnoses"]["b"] == pytest.approx(SLOW_REQUESTS, abs=1)
    assert figures["p99_seconds"]["b"] > figures["p99_seconds"]["a"]
    assert figures["resident_memory_bytes"]["a"] > 10_000_000 and figures["cuda_memory_bytes"]["a"] is None
    assert result["between"]["p99_ratio"] > 1.5

    assert main(["compare", "blue", "green", "--by", "slot", "--window", f"{int(window_s)}s",
                 "--prometheus", prom.url]) == 0
    table = capsys.readouterr().out
    assert "share sent to review" in table and "decision mix divergence" in table
