"""Blue/green switching on Docker Compose, end to end: the real engine, the real HAProxy edge and
the real serving images of both versions (built and pushed once per session by `built_versions`).

The whole module runs once under `docker compose` (v2) and once under `docker-compose` (v1)
(AADS_COMPOSE forces the CLI). Each run has its own compose project `aadstest-switch-<cli>-<hex>`,
its own state dir (a copy of the session ledger) and its own edge port; the orchestrator runs as a
separate process, as an operator runs it. The tests run in file order on one stack:
up -> switch (--keep-previous, under load) -> no-op -> rollback (warm, under load) -> edge restart
-> drift (edge pointed elsewhere; unknown image in a slot) repaired by the next switch -> history.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
from pathlib import Path

import pytest
import requests

from benchmarks.loadgen import LoadGenerator, LoadSpec
from orchestrator.backends.compose import compose_cli
from orchestrator.backends.compose.haproxy import EdgeRuntime
from tests.integration.conftest_faults import LIVE_VERSION, OTHER_VERSION, Stack, make_stack, one_line_error

pytestmark = [pytest.mark.engine, pytest.mark.slow]
pytest_plugins = ["tests.integration.conftest_faults"]

LOAD_RATE = 10  # requests/s per client kind
COMPOSE_FILE = str(Path(__file__).resolve().parents[2] / "compose" / "compose.yaml")


@pytest.fixture(scope="module", params=["v2", "v1"])
def stack(request, tmp_path_factory, fault_session):
    flavor = request.param
    base = compose_cli.V2 if flavor == "v2" else compose_cli.V1
    if compose_cli._version_of(base) is None:
        pytest.fail(f"compose {flavor} ({' '.join(base.base)}) is not installed: `make engine` installs both")
    s = make_stack(tmp_path_factory.mktemp(f"switch-{flavor}"), name=f"switch{flavor}",
                   session_state_dir=fault_session.state_dir, registry=fault_session.repository,
                   ready_timeout_s=240, watch_s=2)
    s.env["AADS_COMPOSE"] = flavor
    try:
        yield s
    finally:
        s.down()


def load(stack: Stack, duration_s: float = 600) -> LoadGenerator:
    return LoadGenerator(LoadSpec(url=f"{stack.edge_url}/v1/version", rate=LOAD_RATE, duration_s=duration_s,
                                  clients=2, timeout_s=10, track_key="version",
                                  headers=tuple(stack.api_headers.items())))


def assert_no_failed_request(result, versions: set[str]) -> None:
    assert result.sent > 0
    assert result.failed == 0, f"{result.failed}/{result.sent} failed through the edge: {result.failures()[:5]}"
    for kind in ("fresh", "keepalive"):
        assert result.kind(kind)["sent"] > 0 and result.kind(kind)["failed"] == 0, result.kind(kind)
    assert set(result.answers()) <= versions, result.answers()


def cli(stack: Stack) -> list[str]:
    return ["docker", "compose"] if stack.env["AADS_COMPOSE"] == "v2" else ["docker-compose"]


def env_file(stack: Stack) -> Path:
    return stack.state_dir / "compose" / stack.name / "compose.env"


def running_slots(stack: Stack) -> dict[str, str]:
    out = {}
    for c in stack.containers():
        svc = c.labels.get("com.docker.compose.service")
        if c.status == "running" and svc in ("blue", "green"):
            out[svc] = c.attrs["Config"]["Image"]
    return out


def test_up_starts_the_stack_with_the_first_version(stack):
    r = stack.run("up", LIVE_VERSION, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["outcome"] == "succeeded" and out["to_version"] == LIVE_VERSION and out["slot"] == "blue"
    for step in ("resolve", "start", "ready", "smoke", "flip", "confirm"):
        assert step in out["phases"]
        assert f"→ {step}" in r.stderr  # progress on every step
    assert stack.edge_version() == LIVE_VERSION
    status = stack.json("status")
    assert status["live"]["version"] == LIVE_VERSION and status["live"]["slot"] == "blue"
    assert status["live"]["health"] == "ready"
    assert status["live"]["image"].startswith(f"{stack.registry}@sha256:")
    # `variant: auto` on a machine without a GPU: the CPU image, by digest, and the CLI says so
    assert status["live"]["variant"] == "cpu" and "deploys the cpu variant (variant: auto, no GPU" in r.stderr
    assert status["drift"] == [] and status["compose"].startswith(" ".join(
        ("docker", "compose") if stack.env["AADS_COMPOSE"] == "v2" else ("docker-compose",)))
    # A second `up` changes nothing and says so.
    again = stack.json("up", LIVE_VERSION)
    assert again["outcome"] == "noop" and "already live" in again["reason"]
    # The deployment is readable with the plain compose CLI too.
    ps = subprocess.run([*cli(stack), "-p", stack.project, "-f", COMPOSE_FILE,
                         "--env-file", str(env_file(stack)), "ps"], capture_output=True, text=True, timeout=60)
    assert ps.returncode == 0, ps.stderr
    assert "edge" in ps.stdout and "blue" in ps.stdout


def test_switch_under_load_fails_no_request(stack):
    with load(stack) as gen:
        r = stack.run("switch", OTHER_VERSION, "--keep-previous", "--json")
        result = gen.result()
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["outcome"] == "succeeded" and out["from_version"] == LIVE_VERSION
    assert out["to_version"] == OTHER_VERSION and out["slot"] == "green"
    assert set(out["phases"]) >= {"resolve", "start", "ready", "smoke", "flip", "confirm", "watch", "drain", "finish"}
    assert "stop" not in out["phases"]  # --keep-previous
    assert_no_failed_request(result, {LIVE_VERSION, OTHER_VERSION})
    assert result.answers().get(OTHER_VERSION, 0) > 0
    version = requests.get(f"{stack.edge_url}/v1/version", timeout=5, headers=stack.api_headers).json()
    assert version["version"] == OTHER_VERSION and version["backbone"]["family"] == "dinov3"
    status = stack.json("status")
    assert status["live"]["version"] == OTHER_VERSION and status["live"]["slot"] == "green"
    assert status["previous"]["version"] == LIVE_VERSION and status["previous"]["warm"] is True
    assert status["drift"] == []
    # The edge's config on disk says the same, so an edge restart keeps the live slot.
    cfg = (stack.state_dir / "compose" / stack.name / "edge" / "haproxy.cfg").read_text()
    assert "server green green:8000 \n" in cfg or "server green green:8000\n" in cfg


def test_switch_to_the_live_version_is_a_noop(stack):
    r = stack.run("switch", OTHER_VERSION, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["outcome"] == "noop" and "already live" in out["reason"]
    assert stack.edge_version() == OTHER_VERSION


def test_rollback_to_the_warm_previous_slot_flips_back_without_a_failed_request(stack):
    with load(stack) as gen:
        r = stack.run("rollback", "--keep-previous", "--json")
        result = gen.result()
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["outcome"] == "succeeded" and out["to_version"] == LIVE_VERSION and out["slot"] == "blue"
    assert out["warm"] is True
    assert "smoke" not in out["phases"]  # a warm previous slot passed its smoke test when it went live
    assert_no_failed_request(result, {LIVE_VERSION, OTHER_VERSION})
    assert stack.edge_version() == LIVE_VERSION
    # --keep-previous on the rollback: the slot rolled away from stays warm too.
    assert set(running_slots(stack)) == {"blue", "green"}
    status = stack.json("status")
    assert status["previous"]["version"] == OTHER_VERSION and status["previous"]["warm"] is True
    assert status["drift"] == []


def test_an_edge_restart_keeps_the_live_slot(stack):
    edge = next(c for c in stack.containers() if c.labels.get("com.docker.compose.service") == "edge")
    edge.restart(timeout=10)
    deadline = time.monotonic() + 30
    while True:
        try:
            if stack.edge_version() == LIVE_VERSION:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "edge not serving the live version after a restart"
        time.sleep(0.3)
    assert stack.json("status")["drift"] == []


def by_hand(stack: Stack, slot: str, image: str) -> None:
    """`docker compose up` of one slot on another image, as an operator might do it by hand."""
    env = env_file(stack).read_text().splitlines()
    hand = stack.root / "by-hand.env"
    key = f"{slot.upper()}_IMAGE="
    hand.write_text("".join(ln + "\n" for ln in env if not ln.startswith(key)) + f"{key}{image}\n")
    up = subprocess.run([*cli(stack), "-p", stack.project, "-f", COMPOSE_FILE, "--env-file", str(hand),
                         "up", "-d", "--no-deps", "--no-build", slot], capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr


def edge_runtime(stack: Stack) -> EdgeRuntime:
    edge = next(c for c in stack.containers() if c.labels.get("com.docker.compose.service") == "edge")
    return EdgeRuntime.for_container(edge)


def test_an_edge_sending_traffic_elsewhere_is_drift_repaired_by_the_next_switch(stack):
    """Someone points the edge at the warm green slot by hand (blue is live per the ledger)."""
    rt = edge_runtime(stack)
    rt.enable("green")
    rt.wait_up("green")
    rt.disable("blue")
    assert stack.edge_version() == OTHER_VERSION
    status = stack.json("status")
    drift = " | ".join(status["drift"])
    assert "the edge sends traffic to green, the ledger says blue" in drift, drift
    table = stack.run("status")
    assert table.returncode == 0 and "next switch repairs it" in table.stdout

    with load(stack) as gen:
        r = stack.run("switch", OTHER_VERSION, "--json")
        result = gen.result()
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["outcome"] == "succeeded" and out["warm"] is True
    assert any("edge sent traffic to green" in x for x in out["repaired"]), out
    assert "repaired drift" in r.stderr
    assert_no_failed_request(result, {LIVE_VERSION, OTHER_VERSION})
    status = stack.json("status")
    assert status["drift"] == [] and status["live"]["version"] == OTHER_VERSION
    assert set(running_slots(stack)) == {"green"}


@pytest.fixture
def unknown_image(stack, engine_client):
    """An image the ledger has never seen (a plain HTTP server on the base image)."""
    tag = f"{stack.project}-drift:1"
    dockerfile = "FROM aads-base:bookworm\nUSER 10001\nCMD [\"python3\", \"-m\", \"http.server\", \"8000\"]\n"
    engine_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    yield tag
    for c in stack.containers():
        if c.attrs["Config"]["Image"] == tag:
            c.remove(force=True)
    engine_client.images.remove(tag, force=True)


def test_a_slot_running_an_unknown_image_is_drift_replaced_by_the_next_switch(stack, unknown_image):
    by_hand(stack, "blue", unknown_image)  # blue is the idle slot now
    status = stack.json("status")
    drift = " | ".join(status["drift"])
    assert f"slot blue runs an image the ledger does not know ({unknown_image})" in drift, drift
    assert stack.edge_version() == OTHER_VERSION  # the edge never sent it traffic

    with load(stack) as gen:
        r = stack.run("rollback", "--json")
        result = gen.result()
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["outcome"] == "succeeded" and out["to_version"] == LIVE_VERSION and out["warm"] is False
    assert_no_failed_request(result, {LIVE_VERSION, OTHER_VERSION})
    status = stack.json("status")
    assert status["drift"] == [] and status["live"]["version"] == LIVE_VERSION
    assert unknown_image not in running_slots(stack).values()


def test_history_lists_every_action_with_phases_user_and_success_rate(stack):
    h = stack.json("history")
    entries = h["entries"]
    actions = [(e["action"], e["to_version"], e["outcome"]) for e in entries]
    assert actions[0] == ("up", LIVE_VERSION, "succeeded")
    assert ("switch", OTHER_VERSION, "succeeded") in actions
    assert ("switch", OTHER_VERSION, "noop") in actions
    assert actions.count(("rollback", LIVE_VERSION, "succeeded")) == 2
    for e in entries:
        assert e["at"] and e["user"] and "@" in e["user"]
        if e["outcome"] == "succeeded":
            assert e["phases"]["ready"] >= 0 and e["digest"].startswith("sha256:")
            assert e["variant"] == "cpu"
    assert h["success_rate"] == 1.0 and h["counted"] == sum(1 for e in entries if e["outcome"] != "noop")
    assert len(stack.json("history", "--limit", "2")["entries"]) == 2
    table = stack.run("history")
    assert table.returncode == 0 and "success rate: 100%" in table.stdout and "rollback" in table.stdout


def test_bad_input_is_one_clear_line(stack):
    r = stack.run("switch", "latest")
    assert r.returncode == 2 and "invalid version name" in one_line_error(r.stderr)
    r = stack.run("rollback", "--to-version", "v5.5.3")
    assert r.returncode == 2
    r = stack.run("status", "--target", "nowhere")
    assert r.returncode == 2 and "unknown target" in one_line_error(r.stderr)
    r = stack.run("history", "--limit", "0")
    assert r.returncode == 2
