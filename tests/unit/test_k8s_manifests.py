"""k8s/: every overlay renders with the real `kubectl kustomize`, passes the Kubernetes 1.37
schemas (kubernetes-validate, offline, strict) and keeps the safety settings a rollout relies on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.kubectl import kubectl

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())


def render(overlay: str) -> list[dict]:
    out = subprocess.run([kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def by_kind(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def test_overlays_exist():
    assert {"cpu", "gpu"} <= set(OVERLAYS)


def test_every_resource_passes_the_schemas(rendered):
    _, docs = rendered
    version = kubernetes_validate.latest_version()
    for doc in docs:
        # Raises ValidationError naming the bad field; strict also rejects unknown fields.
        kubernetes_validate.validate(doc, version, strict=True)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PodDisruptionBudget", "ServiceAccount"}


def test_schema_validation_rejects_a_bad_field(rendered):
    # The validator is live: a typo in the Deployment is caught.
    _, docs = rendered
    bad = yaml.safe_load(yaml.safe_dump(by_kind(docs, "Deployment")))
    bad["spec"]["strategy"]["rollingUpdate"]["maxSurgee"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def test_rollout_settings(rendered):
    overlay, docs = rendered
    d = by_kind(docs, "Deployment")
    assert d["metadata"]["name"] == "aads-serving"
    spec = d["spec"]
    assert spec["strategy"]["type"] == "RollingUpdate"
    # CPU: never below full capacity (one extra pod). GPU: a fixed pool, one pod replaced at a
    # time, since a surge pod on a full GPU pool would never be scheduled.
    expected = {"maxUnavailable": 1, "maxSurge": 0} if overlay == "gpu" else {"maxUnavailable": 0, "maxSurge": 1}
    assert spec["strategy"]["rollingUpdate"] == expected
    assert spec["revisionHistoryLimit"] >= 10
    assert 0 < spec["progressDeadlineSeconds"] <= 1800
    # The template labels match the selector, so the Service and PDB select the same pods.
    sel = spec["selector"]["matchLabels"]
    assert sel.items() <= spec["template"]["metadata"]["labels"].items()
    assert by_kind(docs, "Service")["spec"]["selector"] == sel
    assert by_kind(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == sel
    assert "aads.version" in spec["template"]["metadata"]["annotations"]


def test_probes(rendered):
    _, docs = rendered
    c = container(by_kind(docs, "Deployment"))
    assert c["startupProbe"]["httpGet"]["path"] == "/ready"
    # Model load may take minutes: the startup probe must allow for it before liveness starts.
    start = c["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 120
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["ports"][0]["containerPort"] == 8000


def container(deploy: dict) -> dict:
    (c,) = [c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "serving"]
    return c


def test_security_settings(rendered):
    _, docs = rendered
    d = by_kind(docs, "Deployment")
    pod = d["spec"]["template"]["spec"]
    c = container(d)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    # A read-only root needs a writable /tmp.
    tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
    vol = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert "emptyDir" in vol
    for key in ("cpu", "memory"):
        assert key in c["resources"]["requests"] and key in c["resources"]["limits"]
    assert pod["automountServiceAccountToken"] is False


def test_gpu_overlay(rendered):
    overlay, docs = rendered
    d = by_kind(docs, "Deployment")
    pod = d["spec"]["template"]["spec"]
    limits = container(d)["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in container(d).get("env", [])}
    # The device plugin sets NVIDIA_VISIBLE_DEVICES to the GPU it allocated; `all` would expose every one.
    assert "NVIDIA_VISIBLE_DEVICES" not in env
    if overlay == "gpu":
        assert limits["nvidia.com/gpu"] == "1"
        assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
        assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
    else:
        assert "nvidia.com/gpu" not in limits
        assert "tolerations" not in pod


def test_nothing_mounts_what_the_service_never_reads(rendered):
    _, docs = rendered
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    # tmp: the read-only root's scratch space; api-keys: the Secret the service reads its keys from.
    assert sorted(v["name"] for v in pod["volumes"]) == ["api-keys", "tmp"]
    assert "ConfigMap" not in {d["kind"] for d in docs}


def test_termination_outlasts_the_prestop_pause_and_the_drain(rendered):
    _, docs = rendered
    d = by_kind(docs, "Deployment")
    pod = d["spec"]["template"]["spec"]
    c = container(d)
    pause = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep" and int(pause[1]) >= 3
    env = {e["name"]: e.get("value") for e in c["env"]}
    # The service drains in two stages, each bounded by AADS_GRACEFUL_TIMEOUT_S (uvicorn's graceful
    # shutdown, then the batch worker): serving/settings.py, serving/runtime.py.
    drain = 2 * float(env["AADS_GRACEFUL_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > int(pause[1]) + drain


def test_replicas_spread_and_drains_evict_unhealthy_pods(rendered):
    _, docs = rendered
    d = by_kind(docs, "Deployment")
    spread = d["spec"]["template"]["spec"]["topologySpreadConstraints"]
    sel = d["spec"]["selector"]["matchLabels"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for c in spread:
        assert c["labelSelector"]["matchLabels"] == sel and c["whenUnsatisfiable"] == "ScheduleAnyway"
    assert by_kind(docs, "PodDisruptionBudget")["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_pods_run_as_their_own_service_account_without_a_token(rendered):
    _, docs = rendered
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    sa = by_kind(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["automountServiceAccountToken"] is False and pod["automountServiceAccountToken"] is False


def test_the_orchestrator_role_passes_the_schemas_and_has_no_delete():
    out = subprocess.run([kubectl(), "kustomize", str(K8S / "rbac")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    (role,) = [d for d in docs if d["kind"] == "Role"]
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    assert "delete" not in verbs and "*" not in verbs
