"""`status` is read-only on Kubernetes, and `repair` brings the orchestrator's own records (the
ledger, the re-apply pin) in line with the cluster, against the API double (tests/k8s_double)."""

from __future__ import annotations

import pytest
import yaml

from orchestrator.errors import LockBusyError
from orchestrator.lock import target_lock
from tests.integration.test_k8s_backend import NAME, NEW, OLD, env  # noqa: F401 - env is a fixture


def pinned_image(env) -> str:
    text = (env.tmp / "state" / "k8s" / "k8s" / "kustomization.yaml").read_text()
    patch = yaml.safe_load(yaml.safe_load(text)["patches"][0]["patch"])
    return patch["spec"]["template"]["spec"]["containers"][0]["image"]


def records(env) -> tuple:
    """Everything of the orchestrator's own that status must leave as it is."""
    ledger = env.ctx().ledger
    live = ledger.live("k8s")
    pin = env.tmp / "state" / "k8s" / "k8s" / "kustomization.yaml"
    return ([(s.id, s.outcome, s.step, s.reason) for s in ledger.history("k8s")],
            (live.version, live.digest, live.slot), len(ledger.events("k8s")), pin.read_bytes())


def killed_switch(env, version: str) -> int:
    """The ledger record a `kill -9` during the rollout wait leaves: running, at step rollout."""
    ledger = env.ctx().ledger
    sw = ledger.begin_switch(target="k8s", action="switch", to_version=version, from_version=OLD, digest=None,
                             command=f"orchestrator switch {version}", data={"kind": "kubernetes"})
    ledger.enter_step(sw.id, "rollout")
    return sw.id


def test_status_changes_nothing_and_repair_brings_ledger_and_pin_in_line(env):
    env.backend().switch(NEW)
    killed = killed_switch(env, NEW)
    # By hand, outside the orchestrator: back to revision 1 (OLD).
    env.kubectl("rollout", "undo", f"deployment/{NAME}")
    env.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=20s")
    before, requests = records(env), len(env.k8s.requests)

    status = env.backend().status()
    assert status["live"]["version"] == OLD
    assert [s["id"] for s in status["unfinished"]] == [killed] and status["switch_running"] == []
    assert any(f"the ledger last recorded {NEW} live" in d for d in status["drift"]), status["drift"]
    assert any("kustomization.yaml pins another template" in d for d in status["drift"]), status["drift"]
    assert records(env) == before, "status wrote to the ledger or the pin"
    assert not [r for r in env.k8s.requests[requests:] if r["method"] != "GET"], "status wrote to the cluster"
    assert pinned_image(env) == env.image(NEW)  # stale: re-applying it would undo the hand-made undo

    requests = len(env.k8s.requests)
    repaired = env.backend().repair()
    assert [s["id"] for s in repaired["interrupted"]] == [killed]
    assert len(repaired["repairs"]) == 3, repaired["repairs"]
    assert f"switch #{killed}" in repaired["repairs"][0] and "interrupted" in repaired["repairs"][0]
    assert f"now records {OLD}" in repaired["repairs"][1]
    assert "kustomization.yaml" in repaired["repairs"][2]
    # The status shape, after the repairs: nothing left to repair.
    assert repaired["live"]["version"] == OLD and repaired["drift"] == [] and repaired["unfinished"] == []
    assert not [r for r in env.k8s.requests[requests:] if r["method"] != "GET"], "repair wrote to the cluster"
    ledger = env.ctx().ledger
    assert ledger.live("k8s").version == OLD and ledger.live("k8s").slot == "3"
    sw = next(s for s in ledger.history("k8s") if s.id == killed)
    assert sw.outcome == "interrupted" and "during step rollout" in sw.reason
    assert pinned_image(env) == env.image(OLD)
    assert [e["kind"] for e in ledger.events("k8s")][-2:] == ["drift-repaired", "drift-repaired"]

    # Nothing more to do: a second repair changes nothing.
    again = records(env)
    assert env.backend().repair()["repairs"] == []
    assert records(env) == again


def test_a_running_switch_is_shown_running_and_repair_leaves_it_alone(env):
    env.backend().switch(NEW)
    running = killed_switch(env, OLD)  # its ledger record, while its process holds the lock
    with target_lock(env.tmp / "state", "k8s"):
        status = env.backend().status()
        assert [s["id"] for s in status["switch_running"]] == [running] and status["unfinished"] == []
        with pytest.raises(LockBusyError, match="locked by"):
            env.backend().repair()
    assert env.ctx().ledger.unfinished_switches("k8s")[0].id == running
    assert [s["id"] for s in env.backend().repair()["interrupted"]] == [running]
