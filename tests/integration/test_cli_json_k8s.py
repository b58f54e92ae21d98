"""The --json contract (orchestrator/results.py, docs/cli-json.md) against the Kubernetes backend's
real outputs, on the Kubernetes API double of tests/integration/test_k8s_backend.py (no API server
can run here; see docs/kubernetes.md). Also `switch --dry-run` and `logs` on a Kubernetes target."""

from __future__ import annotations

import json

from orchestrator.ledger import Ledger
from orchestrator.results import History, Status, SwitchResult
from tests.integration.test_k8s_backend import (  # noqa: F401
    CLUSTER_REPO,
    NEW,
    OLD,
    digest_of,
    env,
    orchestrator,
)
from tests.unit.test_cli_results import assert_contract


def test_cli_json_shapes_of_a_kubernetes_target(env):
    out = env.backend().switch(NEW)
    d = assert_contract(SwitchResult.from_backend(out, "kubernetes"), out, "kubernetes")
    assert (d["slot"], d["revision"]) == (None, 2)
    out = env.backend().status()
    d = assert_contract(Status.from_backend(out, "kubernetes"), out, "kubernetes")
    assert (d["live"]["slot"], d["live"]["revision"]) == (None, 2)
    assert (d["previous"]["slot"], d["previous"]["revision"]) == (None, 1)
    assert [s["revision"] for s in d["slots"]] == [2, 1]
    out = env.backend().history()
    d = assert_contract(History.from_backend(out, "kubernetes"), out, "kubernetes")
    assert [e["revision"] for e in d["entries"]] == [1, 2]
    for entry, orig in zip(d["entries"], out["entries"]):
        assert {k: entry[k] for k in orig} == orig


def test_cli_dry_run_on_kubernetes_patches_nothing(env):
    env.backend().switch(NEW)
    patches, records = len(env.patches()), len(Ledger(env.tmp / "state").history("k8s"))
    r = orchestrator(env, "switch", OLD, "--target", "k8s", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert {k: plan[k] for k in ("kind", "from_version", "to_version", "digest", "image", "revision", "slot",
                                 "noop", "steps")} == {
        "kind": "kubernetes", "from_version": NEW, "to_version": OLD, "digest": digest_of(OLD),
        "image": f"{CLUSTER_REPO}@{digest_of(OLD)}", "revision": 2, "slot": None, "noop": False,
        "steps": ["resolve", "patch", "rollout", "finish"]}
    assert len(env.patches()) == patches and len(Ledger(env.tmp / "state").history("k8s")) == records
    assert env.live_image() == env.image(NEW)
    r = orchestrator(env, "switch", NEW, "--target", "k8s", "--dry-run")
    assert r.returncode == 0 and "none (no-op)" in r.stdout, r.stderr


def test_cli_logs_on_kubernetes_reads_the_deployment_with_kubectl(env):
    r = orchestrator(env, "logs", "--target", "k8s", "--tail", "3", "--print")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["kubectl", "--kubeconfig", str(env.tmp / "kubeconfig"), "logs",
                                "deployment/aads-serving", "-n", "aads", "-c", "serving", "--tail", "3"]
