"""Canary switches on Docker Compose, end to end: the real engine, HAProxy edge, Prometheus (started by
`up` with the stack) and the real serving images, under constant diagnosis load through the edge
(fresh and kept-alive clients, benchmarks/loadgen.py).

In file order on one stack:
  up v5.5.3 (slot blue, prometheus + pushgateway on free ports)
  -> switch v5.5.4 --canary 25,100: every step's analysis passes, promoted, 0 failed requests
  -> switch to a BIASED build of v5.5.4 (tests/biased_models.py: tomato's OOD thresholds x0.2, so
     it sends most tomato leaves to review; its golden outputs are its own, so the smoke test
     passes as a real build's would): stopped at the first step, the analysis names the metric,
     its digest is marked failed, exit 5, and it answered no more than about its 25% share
  -> switch to a SLOW rebuild of the live version (tests/integration/fault_wrapper.py `slow`: the real
     service with every /v1/ request from the edge held back 12 s; that switch is judged with the
     shipped max_p99_ratio 1.5): stopped at the first step on p99_ratio, the same way.
Both slots of the last two switches run the same version, so the analysis tells them apart by `slot`.
The thresholds are the defaults except min_diagnoses (the test's load is small), the p99 ratio (8:
the two backbones differ in cost on a shared CPU, and a just-started candidate is slower; seen:
`p99_ratio 5.051 > 4` failed the healthy switch on a loaded 2-core box) and the OOD shift: the load repeats ONE leaf, so each
version's OOD scores are a single point and two different backbones always differ by a KS of 1
(seen: `ood_shift 1.000 > 0.3` failed the healthy switch). tests/monitoring proves both checks on
varied leaves; here the biased build must be caught by the decisions (review share, mix).
"""

from __future__ import annotations

import io
import json
import secrets
import tarfile
import time
from pathlib import Path

import pytest
import requests

from benchmarks.loadgen import LoadGenerator, LoadSpec, with_nonce
from orchestrator import golden
from orchestrator.backends.compose.haproxy import EdgeRuntime
from serving.manifest import load_manifest
from serving.synthetic import leaf_image
from tests.biased_models import make_biased
from tests.conftest import VERSIONS_DIR
from tests.integration.conftest_faults import (LIVE_VERSION, OTHER_VERSION, Stack, free_port, make_stack,
                                               one_line_error)
from tests.integration.faulty_images import make_faulty_rebuild, push_image
from tests.monitoring.conftest import start_serving, wait_ready

pytestmark = [pytest.mark.engine, pytest.mark.slow]
pytest_plugins = ["tests.integration.conftest_faults"]

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "build" / "models"
SHARES = "25,100"
STEP = "8s"
BOUNDARY = "aadscanaryboundary"
MODEL_METRICS = {"review_increase", "decision_divergence"}
# The slow candidate's added delay: many times live's diagnosis p99 under this test's load (the slow
# test prints both), so its p99 (bucket 10-15 s) stays past 1.5x live's unless live's passes 8 s;
# and under the edge's 30 s drain, so the revert lets the held requests finish.
SLOW_DELAY_S = 12.0


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def multipart(image: bytes) -> bytes:
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="leaf.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()
    return head + image + f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, fault_session):
    s = make_stack(tmp_path_factory.mktemp("canary"), name="canary", session_state_dir=fault_session.state_dir,
                   registry=fault_session.repository, ready_timeout_s=240, watch_s=2, target_extra={
                       "monitoring": True, "prometheus_port": free_port(), "pushgateway_port": free_port(),
                       "canary_thresholds": {"min_diagnoses": 3, "max_p99_ratio": 8.0, "max_ood_shift": 1.0,
                                             "max_wait_s": 90, "poll_s": 2}})
    try:
        yield s
    finally:
        s.down()


@pytest.fixture(scope="module")
def biased(tmp_path_factory):
    """The biased model set served in-process: its golden outputs and the tomato leaves it sends to review."""
    from tests.conftest import ModelSet

    src = MODELS / OTHER_VERSION
    if not (src / "model_set.json").is_file():
        pytest.fail(f"the demo model set {src} is missing: run `make models`")
    dst = make_biased(src, tmp_path_factory.mktemp("biased") / "models", crop="tomato")
    service = start_serving(ModelSet("dinov3", OTHER_VERSION, VERSIONS_DIR / OTHER_VERSION, dst), "biased")
    try:
        wait_ready(service, timeout=300)
        outputs = golden.collect(service.url, timeout=120)
        diseases = load_manifest(VERSIONS_DIR / OTHER_VERSION).crops["tomato"]
        reviewed = []
        for i in range(4):
            for disease in diseases:
                leaf = png(leaf_image("tomato", disease, i, seed=11))
                r = requests.post(f"{service.url}/v1/diagnose", files={"image": ("leaf.png", leaf, "image/png")},
                                  timeout=120)
                r.raise_for_status()
                if r.json()["decision"] == "review":
                    reviewed.append((disease, leaf))
        assert reviewed, "the biased set sends no tomato leaf to review: tests/biased_models.py no longer biases"
        yield {"dir": dst, "golden": outputs, "reviewed": reviewed}
    finally:
        service.stop()


@pytest.fixture(scope="module")
def load_leaf(stack, biased) -> bytes:
    """A tomato leaf the live version accepts as what it is and the biased build sends to review."""
    r = stack.run("up", LIVE_VERSION, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    for disease, leaf in biased["reviewed"]:
        answer = requests.post(f"{stack.edge_url}/v1/diagnose", files={"image": ("leaf.png", leaf, "image/png")},
                               headers=stack.api_headers, timeout=120).json()
        if answer["decision"] == "accept" and answer.get("disease") == disease:
            return leaf
    pytest.fail(f"{LIVE_VERSION} accepts none of the {len(biased['reviewed'])} leaves the biased set reviews")


def load(stack: Stack, leaf: bytes) -> LoadGenerator:
    return LoadGenerator(LoadSpec(url=f"{stack.edge_url}/v1/diagnose", rate=1, duration_s=900, clients=1,
                                  method="POST", body_factory=lambda: multipart(with_nonce(leaf)),
                                  content_type=f"multipart/form-data; boundary={BOUNDARY}", timeout_s=60,
                                  track_key="version", headers=tuple(stack.api_headers.items())))


def edge_runtime(stack: Stack) -> EdgeRuntime:
    edge = next(c for c in stack.containers() if c.labels.get("com.docker.compose.service") == "edge")
    return EdgeRuntime.for_container(edge)


def answered(stack: Stack) -> dict[str, int]:
    """Requests each slot answered through the edge so far (HAProxy's per-server counters)."""
    return {slot: st.http_total for slot, st in edge_runtime(stack).stats().items()}


def test_up_starts_prometheus_with_the_stack(stack, load_leaf):
    services = {c.labels.get("com.docker.compose.service"): c.status for c in stack.containers()}
    assert services.get("prometheus") == "running" and services.get("pushgateway") == "running", services
    cfg = yaml_target(stack)
    ready = requests.get(f"http://127.0.0.1:{cfg['prometheus_port']}/-/ready", timeout=5)
    assert ready.status_code == 200


def yaml_target(stack: Stack) -> dict:
    import yaml
    return yaml.safe_load(stack.config_file.read_text())["targets"][stack.name]


def test_dry_run_lists_the_canary_steps(stack, load_leaf):
    plan = stack.json("switch", OTHER_VERSION, "--canary", SHARES, "--step", STEP, "--dry-run")
    assert plan["steps"][:6] == ["resolve", "start", "ready", "smoke", "canary-25", "canary-100"]
    assert any("canary 25,100%" in n for n in plan["notes"])


def test_a_healthy_candidate_is_promoted_through_every_step_with_no_failed_request(stack, load_leaf):
    before = answered(stack)
    with load(stack, load_leaf) as gen:
        r = stack.run("switch", OTHER_VERSION, "--canary", SHARES, "--step", STEP, "--json")
        result = gen.result()
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout)
    assert out["outcome"] == "succeeded" and out["to_version"] == OTHER_VERSION and out["slot"] == "green"
    assert [(s["share"], s["outcome"]) for s in out["canary"]] == [(25, "pass"), (100, "pass")], out["canary"]
    assert out["canary"][0]["weights"] == [75, 25] and out["canary"][1]["weights"] == [0, 100]
    assert {"canary", "canary-25", "canary-100", "confirm", "drain", "finish"} <= set(out["phases"])
    assert "flip" not in out["phases"]
    assert "analysis 25%: pass" in r.stderr and "analysis 100%: pass" in r.stderr  # the analysis lines
    assert result.sent > 0 and result.failed == 0, f"{result.failed}/{result.sent} failed: {result.failures()[:5]}"
    for kind in ("fresh", "keepalive"):
        assert result.kind(kind)["sent"] > 0 and result.kind(kind)["failed"] == 0, result.kind(kind)
    assert set(result.answers()) <= {LIVE_VERSION, OTHER_VERSION} and result.answers().get(OTHER_VERSION, 0) > 0
    after = answered(stack)
    assert after["green"] - before.get("green", 0) > 0
    entry = stack.history()[-1]
    assert entry["outcome"] == "succeeded" and [s["share"] for s in entry["canary"]] == [25, 100]
    assert all(s["figures"]["candidate_diagnoses"] >= 3 for s in entry["canary"])
    status = stack.json("status")
    assert status["live"]["version"] == OTHER_VERSION and status["drift"] == []
    weights = {s["slot"]: s["weight"] for s in status["slots"]}
    assert weights["green"] == 1  # back to the config's weight: the next switch flips by state
    assert status["last_analysis"]["share"] == 100 and status["last_analysis"]["outcome"] == "pass"


def build_biased_image(stack: Stack, biased: dict) -> tuple[str, str]:
    """FROM the pushed v5.5.4 image, with the biased tomato adapter files; pushed and recorded like a
    rebuild of v5.5.4 (its golden outputs are the biased set's own). Returns (digest, image id)."""
    import docker

    client = docker.from_env()
    ledger = stack.ledger()
    try:
        base_push = ledger.latest_push(OTHER_VERSION, "cpu")
        base_build = ledger.build(base_push.build_id)
        files = {"ood.safetensors": biased["dir"] / "adapters/tomato/ood.safetensors",
                 "bundle.json": biased["dir"] / "adapters/tomato/bundle.json",
                 "model_set.json": biased["dir"] / "model_set.json"}
        dockerfile = "\n".join([f"FROM {base_build.image_id}",
                                "COPY ood.safetensors bundle.json /models/adapters/tomato/",
                                "COPY model_set.json /models/model_set.json",
                                'LABEL aads.test.biased="tomato OOD thresholds x0.2"', ""])
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in {"Dockerfile": dockerfile.encode(),
                               **{n: p.read_bytes() for n, p in files.items()}}.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        buf.seek(0)
        tag = f"{OTHER_VERSION}-cpu-biased-{secrets.token_hex(3)}"
        image, _ = client.images.build(fileobj=buf, custom_context=True, tag=f"{base_push.repository}:{tag}",
                                       pull=False, rm=True, forcerm=True)
        digest = push_image(client, base_push.repository, tag)
        build = ledger.record_build(version=OTHER_VERSION, variant="cpu", image_id=image.id,
                                    manifest_sha256=base_build.manifest_sha256, git_commit=base_build.git_commit,
                                    size_bytes=None, golden=biased["golden"], build_seconds=None)
        ledger.record_push(version=OTHER_VERSION, build_id=build.id, repository=base_push.repository, tag=tag,
                           digest=digest)
        return digest, image.id
    finally:
        ledger.close()


def test_a_biased_candidate_is_stopped_at_the_first_step_naming_the_metric(stack, load_leaf, biased):
    live_digest = stack.live().digest
    digest, _ = build_biased_image(stack, biased)
    assert digest != live_digest
    before = answered(stack)
    with load(stack, load_leaf) as gen:
        r = stack.run("switch", OTHER_VERSION, "--canary", SHARES, "--step", STEP)
        result = gen.result()
    assert r.returncode == 5, r.stderr[-4000:]
    error = one_line_error(r.stderr)
    assert "canary step 25%: analysis failed on" in error, error
    metric = error.split("analysis failed on ", 1)[1].split(":", 1)[0]
    assert metric in MODEL_METRICS, error
    # Nothing else moved: live kept serving every request, and the candidate answered about its share.
    assert result.sent > 0 and result.failed == 0, f"{result.failed}/{result.sent} failed: {result.failures()[:5]}"
    after = answered(stack)
    cand = after["blue"] - before.get("blue", 0)
    live = after["green"] - before.get("green", 0)
    assert cand > 0, (before, after)
    assert cand / (cand + live) <= 0.25 + 0.10, (cand, live)
    assert stack.live().digest == live_digest
    assert requests.get(f"{stack.edge_url}/v1/version", headers=stack.api_headers, timeout=5).json()["version"] \
        == OTHER_VERSION
    entry = stack.history()[-1]
    assert entry["outcome"] == "reverted" and entry["failed_digest"] is True, entry
    assert [(s["share"], s["outcome"], s["metric"]) for s in entry["canary"]] == [(25, "fail", metric)]
    ledger = stack.ledger()
    try:
        reasons = [x["reason"] for x in ledger.failed_digests()[digest]]
    finally:
        ledger.close()
    assert any(metric in reason for reason in reasons), reasons
    status = stack.json("status")
    slots = {s["slot"]: s for s in status["slots"]}
    assert slots["blue"]["state"] != "running" and slots["blue"]["edge"] == "disabled", slots["blue"]
    assert slots["blue"]["weight"] == 1 and slots["green"]["weight"] == 1
    assert status["last_analysis"]["outcome"] == "fail" and status["last_analysis"]["metric"] == metric


def test_a_slow_candidate_is_stopped_at_the_first_step_naming_p99(stack, load_leaf, engine_client):
    """A rebuild of the live version behind the `slow` fault (tests/integration/fault_wrapper.py): every
    /v1/ request from the edge held back SLOW_DELAY_S in front of the real service. Judged with the
    shipped p99 threshold (1.5; the module's 8 is for two different backbones, here both sides run
    one image): the candidate's p99 is past the delay, live's would have to pass 8 s to hide it."""
    live = stack.live()
    ledger = stack.ledger()
    try:
        digest, _ = make_faulty_rebuild(engine_client, ledger, base_digest=live.digest, fault="slow",
                                        delay_s=SLOW_DELAY_S)
    finally:
        ledger.close()
    thresholds = {k: v for k, v in yaml_target(stack)["canary_thresholds"].items() if k != "max_p99_ratio"}
    env = {f"AADS_TARGET_{stack.name.upper()}_CANARY_THRESHOLDS": json.dumps(thresholds)}
    before = answered(stack)
    with load(stack, load_leaf) as gen:
        r = stack.run("switch", live.version, "--canary", SHARES, "--step", STEP, env=env)
        result = gen.result()
    assert r.returncode == 5, r.stderr[-4000:]
    error = one_line_error(r.stderr)
    assert "canary step 25%: analysis failed on p99_ratio:" in error, r.stderr[-4000:]
    # Live kept serving every request; the candidate answered about its share and no more.
    assert result.sent > 0 and result.failed == 0, f"{result.failed}/{result.sent} failed: {result.failures()[:5]}"
    after = answered(stack)
    cand_slot = "blue" if live.slot == "green" else "green"
    cand = after[cand_slot] - before.get(cand_slot, 0)
    kept = after[live.slot] - before.get(live.slot, 0)
    assert cand > 0, (before, after)
    assert cand / (cand + kept) <= 0.25 + 0.10, (cand, kept)
    assert stack.live().digest == live.digest
    assert requests.get(f"{stack.edge_url}/v1/version", headers=stack.api_headers, timeout=5).json()["version"] \
        == live.version
    entry = stack.history()[-1]
    assert entry["outcome"] == "reverted" and entry["failed_digest"] is True, entry
    [step] = entry["canary"]
    assert (step["share"], step["outcome"], step["metric"]) == (25, "fail", "p99_ratio"), step
    # What the analysis saw is the injected delay, in the service's own histogram.
    cand_p99, live_p99 = (p99(stack, slot) for slot in (cand_slot, live.slot))
    assert cand_p99 >= SLOW_DELAY_S, (cand_p99, live_p99, step["figures"])
    ledger = stack.ledger()
    try:
        reasons = [x["reason"] for x in ledger.failed_digests()[digest]]
    finally:
        ledger.close()
    assert any("p99_ratio" in reason for reason in reasons), reasons
    status = stack.json("status")
    slots = {s["slot"]: s for s in status["slots"]}
    assert slots[cand_slot]["state"] != "running" and slots[cand_slot]["edge"] == "disabled", slots[cand_slot]
    assert slots["blue"]["weight"] == 1 and slots["green"]["weight"] == 1
    assert status["last_analysis"]["outcome"] == "fail" and status["last_analysis"]["metric"] == "p99_ratio"
    print(f"slow candidate: p99 {cand_p99:.2f}s against live's {live_p99:.2f}s (delay {SLOW_DELAY_S:g}s); "
          f"step figures {step['figures']}")


def p99(stack: Stack, slot: str) -> float:
    """`slot`'s diagnosis p99 (seconds) over the last 3 minutes, from the stack's Prometheus."""
    from orchestrator.canary import queries as q
    from orchestrator.canary.prometheus import PrometheusClient

    with PrometheusClient(f"http://127.0.0.1:{yaml_target(stack)['prometheus_port']}") as prom:
        value = prom.value(q.latency_quantile(q.matcher("slot", slot), "180s"))
    return float("nan") if value is None else value
