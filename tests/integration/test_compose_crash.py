"""Crash safety of a compose switch: `kill -9` of the orchestrator at every step, and the lock.

The switch sleeps right after entering the step named by AADS_PAUSE_AT_STEP (a test hook, see
orchestrator/switchflow.py); the test waits until the ledger shows that step, then kills the
process with SIGKILL. Inside the flip step it pauses between the edge's runtime API commands
(`flip:enabled`, `flip:drained`) and writes AADS_PAUSE_REACHED_FILE when it is there. Throughout, a load generator sends requests through the edge from both kinds
of client: none may fail. `status` must report the half-done switch and change nothing (it is
read-only); `repair` must repair it: back to the version the ledger says is live while the switch had not passed its watch window,
forward to the candidate from `drain` on (flip, confirm and watch had all passed). Either way the
switch is marked 'interrupted', the edge serves what the ledger says, and nothing drifts.
"""

from __future__ import annotations

import json
import time

import pytest

from benchmarks.loadgen import LoadGenerator, LoadSpec
from tests.integration.conftest_faults import (LIVE_VERSION, OTHER_VERSION, Stack, engine_client,  # noqa: F401
                                               fault_session, kill9, make_stack, one_line_error)

pytestmark = [pytest.mark.engine, pytest.mark.slow]

STEPS = ["resolve", "start", "ready", "smoke", "flip", "confirm", "watch", "drain", "stop", "finish"]
FORWARD = {"drain", "stop", "finish"}            # the repair completes these switches forward
CANDIDATE_SERVED = {"confirm", "watch"} | FORWARD  # the flip was done when the process died
LOAD_RATE = 8


@pytest.fixture(scope="module")
def stack(tmp_path_factory, fault_session) -> Stack:
    s = make_stack(tmp_path_factory.mktemp("crash"), name="crash", session_state_dir=fault_session.state_dir,
                   registry=fault_session.repository, ready_timeout_s=240, watch_s=2)
    try:
        r = s.run("up", LIVE_VERSION)
        assert r.returncode == 0, f"up failed: {r.stderr[-3000:]}"
        yield s
    finally:
        s.down()


def edge_load(stack: Stack) -> LoadGenerator:
    return LoadGenerator(LoadSpec(url=f"{stack.edge_url}/v1/version", rate=LOAD_RATE, duration_s=900, clients=2,
                                  timeout_s=10, track_key="version", headers=tuple(stack.api_headers.items())))


def the_other(version: str) -> str:
    return OTHER_VERSION if version == LIVE_VERSION else LIVE_VERSION


def wait_edge_answers(stack: Stack, version: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while stack.edge_version() != version:
        assert time.monotonic() < deadline, f"the edge never answered {version} within {timeout:g}s"
        time.sleep(0.1)


def assert_no_failed_request(result) -> None:
    assert result.sent > 0
    assert result.failed == 0, f"{result.failed}/{result.sent} failed through the edge: {result.failures()[:5]}"
    for kind in ("fresh", "keepalive"):
        assert result.kind(kind)["sent"] > 0 and result.kind(kind)["failed"] == 0


def assert_status_reports_it_and_changes_nothing(stack: Stack, sw, step: str) -> None:
    """`status` after the kill lists the switch as unfinished and leaves it (and the host) as it was."""
    r = stack.run("status", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    st = json.loads(r.stdout)
    assert [(i["id"], i["step"]) for i in st["unfinished"]] == [(sw.id, step)]
    assert st["interrupted"] == [] and st["switch_running"] == []
    assert "was interrupted" not in r.stderr
    assert stack.running_switch().id == sw.id  # still 'running' in the ledger: status repaired nothing


@pytest.mark.parametrize("step", STEPS)
def test_kill_9_at_each_step_keeps_serving_and_the_next_command_repairs(stack, step):
    was_live = stack.live().version
    candidate = the_other(was_live)
    with edge_load(stack) as load:
        proc = stack.start("switch", candidate, env={"AADS_PAUSE_AT_STEP": step, "AADS_PAUSE_SECONDS": "120"})
        sw = stack.wait_for_step(proc, step, timeout=400)
        kill9(proc)
        assert stack.running_switch().id == sw.id  # the ledger still shows it running: half done
        assert_status_reports_it_and_changes_nothing(stack, sw, step)
        r = stack.run("repair", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"was interrupted at step {step}" in r.stderr
    status = json.loads(r.stdout)
    assert [(i["id"], i["step"]) for i in status["interrupted"]] == [(sw.id, step)]

    assert_no_failed_request(load.result())
    answers = set(load.result().answers())
    assert answers <= ({was_live, candidate} if step in CANDIDATE_SERVED else {was_live}), answers

    expected = candidate if step in FORWARD else was_live
    repaired = stack.ledger().switch(sw.id)
    assert repaired.outcome == "interrupted" and repaired.reason.startswith(f"at {step};"), repaired.reason
    assert stack.live().version == expected
    assert stack.edge_version() == expected
    assert stack.running_switch() is None
    again = stack.json("status")
    assert again["drift"] == [] and again["interrupted"] == []
    assert again["live"]["version"] == expected
    history = stack.json("history")["entries"]
    assert history[-1]["id"] == sw.id and history[-1]["outcome"] == "interrupted"


@pytest.mark.parametrize("point", ["flip:enabled", "flip:drained"])
def test_kill_9_inside_the_flip_keeps_serving_and_the_next_command_flips_back(stack, point, tmp_path):
    """Killed between the runtime API commands of the flip step: after `enabled` both slots serve, after
    `drained` only the candidate does while the old slot finishes its requests. The repair (the step is
    `flip`, before the watch window) must send everything back to the live slot without a failed request."""
    was_live = stack.live().version
    candidate = the_other(was_live)
    reached = tmp_path / "reached"
    with edge_load(stack) as load:
        proc = stack.start("switch", candidate, env={"AADS_PAUSE_AT_STEP": point, "AADS_PAUSE_SECONDS": "600",
                                                     "AADS_PAUSE_REACHED_FILE": str(reached)})
        stack.wait_for_file(proc, reached, timeout=400)
        assert reached.read_text().strip() == point
        sw = stack.running_switch()
        assert sw is not None and sw.step == "flip"
        wait_edge_answers(stack, candidate, timeout=60)  # the edge really sends requests to the candidate now
        kill9(proc)
        assert_status_reports_it_and_changes_nothing(stack, sw, "flip")
        r = stack.run("repair", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "was interrupted at step flip" in r.stderr
    assert [(i["id"], i["step"]) for i in json.loads(r.stdout)["interrupted"]] == [(sw.id, "flip")]
    assert_no_failed_request(load.result())
    assert set(load.result().answers()) == {was_live, candidate}
    repaired = stack.ledger().switch(sw.id)
    assert repaired.outcome == "interrupted" and repaired.reason.startswith("at flip;"), repaired.reason
    assert f"back to {was_live}" in repaired.reason
    assert stack.live().version == was_live == stack.edge_version()
    assert stack.running_switch() is None
    again = stack.json("status")
    assert again["drift"] == [] and again["interrupted"] == [] and again["live"]["version"] == was_live
    assert {row["slot"]: row["edge"] for row in again["slots"]}[again["live"]["slot"]] == "serving"
    assert [row["edge"] for row in again["slots"] if row["slot"] != again["live"]["slot"]] != ["serving"]


def test_a_second_switch_is_refused_while_one_runs_and_kill_9_frees_the_lock(stack):
    candidate = the_other(stack.live().version)
    with edge_load(stack) as load:
        first = stack.start("switch", candidate, env={"AADS_PAUSE_AT_STEP": "ready", "AADS_PAUSE_SECONDS": "120"})
        sw = stack.wait_for_step(first, "ready", timeout=400)
        second = stack.run("switch", candidate)
        status_while = stack.json("status")
        kill9(first)
        after = stack.run("repair", "--json")
    assert second.returncode == 3
    line = one_line_error(second.stderr)
    assert f"pid {first.pid}" in line and "another switch is running" in line and "--lock-timeout" in line
    assert [s["id"] for s in status_while["switch_running"]] == [sw.id]
    assert after.returncode == 0 and "was interrupted at step ready" in after.stderr  # lock free again
    assert_no_failed_request(load.result())


def test_a_second_switch_with_wait_waits_for_the_first_then_finds_nothing_to_do(stack):
    candidate = the_other(stack.live().version)
    with edge_load(stack) as load:
        first = stack.start("switch", candidate, env={"AADS_PAUSE_AT_STEP": "resolve", "AADS_PAUSE_SECONDS": "3"})
        stack.wait_for_step(first, "resolve", timeout=60)
        second = stack.run("switch", candidate, "--lock-timeout", "600", "--json")
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    result = json.loads(second.stdout)
    assert result["outcome"] == "noop" and "already live" in result["reason"]
    assert stack.live().version == candidate == stack.edge_version()
    assert_no_failed_request(load.result())
