"""The Kubernetes API double's own parts: patch semantics and selectors, as the API server has them,
and the cluster behaviours it models (GPU scheduling, admission refusals, the revision lag, faults)."""

from __future__ import annotations

import pytest
import requests

from tests.k8s_double import KubeDouble, patches
from tests.k8s_double.controller import resolve_fenceposts, safe_encode
from tests.k8s_double.selectors import SelectorError, field_selector, label_selector, match_labels

POD = {"metadata": {"name": "d", "annotations": {"a": "1"}},
       "spec": {"template": {"spec": {"containers": [
           {"name": "serving", "image": "old", "env": [{"name": "A", "value": "1"}]},
           {"name": "sidecar", "image": "side"}]}}}}


def test_strategic_merge_merges_containers_by_name():
    out = patches.strategic_merge(POD, {"spec": {"template": {"spec": {"containers": [
        {"name": "serving", "image": "new", "env": [{"name": "B", "value": "2"}]}]}}}})
    serving, sidecar = out["spec"]["template"]["spec"]["containers"]
    assert serving["image"] == "new" and sidecar == {"name": "sidecar", "image": "side"}
    assert serving["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert POD["spec"]["template"]["spec"]["containers"][0]["image"] == "old"  # no mutation


def test_strategic_merge_directives():
    out = patches.strategic_merge(POD, {"spec": {"template": {"spec": {"containers": [
        {"name": "sidecar", "$patch": "delete"}]}}}, "metadata": {"annotations": {"a": None, "b": "2"}}})
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["serving"]
    assert out["metadata"]["annotations"] == {"b": "2"}
    with pytest.raises(patches.PatchError, match="merge key"):
        patches.strategic_merge(POD, {"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}})


def test_merge_patch_replaces_lists():
    out = patches.merge_patch(POD, {"spec": {"template": {"spec": {"containers": [{"name": "only", "image": "x"}]}}}})
    assert out["spec"]["template"]["spec"]["containers"] == [{"name": "only", "image": "x"}]


def test_json_patch():
    out = patches.json_patch(POD, [
        {"op": "replace", "path": "/metadata/annotations", "value": {"c": "3"}},
        {"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "third", "image": "t"}},
        {"op": "remove", "path": "/spec/template/spec/containers/1"},
        {"op": "test", "path": "/metadata/name", "value": "d"},
    ])
    assert out["metadata"]["annotations"] == {"c": "3"}
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["serving", "third"]
    with pytest.raises(patches.PatchError):
        patches.json_patch(POD, [{"op": "replace", "path": "/metadata/labels", "value": {}}])
    with pytest.raises(patches.PatchError, match="failed"):
        patches.json_patch(POD, [{"op": "test", "path": "/metadata/name", "value": "other"}])


def test_label_selectors():
    obj = {"metadata": {"labels": {"app": "x", "tier": "web"}}}
    assert label_selector("app=x,tier in (web,db)")(obj)
    assert not label_selector("app=x,tier notin (web)")(obj)
    assert label_selector("app,!missing")(obj) and not label_selector("missing")(obj)
    assert label_selector("app!=y")(obj) and not label_selector("app==y")(obj)
    assert match_labels({"matchLabels": {"app": "x"},
                         "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]})(obj)
    with pytest.raises(SelectorError):
        label_selector("app=(")


def test_field_selectors():
    obj = {"metadata": {"name": "a", "namespace": "n"}, "status": {"phase": "Running"}}
    assert field_selector("metadata.name=a,metadata.namespace==n")(obj)
    assert not field_selector("status.phase!=Running")(obj)
    with pytest.raises(SelectorError, match="not supported"):
        field_selector("spec.replicas=1")


def test_fenceposts_and_names():
    assert resolve_fenceposts({"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}, 2) == (1, 0)
    assert resolve_fenceposts({"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}, 3) == (1, 0)
    assert resolve_fenceposts({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}, 3) == (0, 1)
    assert set(safe_encode("1234567890")) <= set("bcdfghjklmnpqrstvwxz2456789")


# ---- what a real cluster does to a rollout, as the double models it ---------------------------
def _deployment(image: str, replicas: int = 2, gpu: bool = False) -> dict:
    res = {"requests": {"nvidia.com/gpu": "1"}} if gpu else {}
    return {"metadata": {"name": "d", "namespace": "ns"},
            "spec": {"replicas": replicas, "minReadySeconds": 0, "progressDeadlineSeconds": 600,
                     "selector": {"matchLabels": {"app": "d"}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                     "template": {"metadata": {"labels": {"app": "d"}},
                                  "spec": {"containers": [{"name": "c", "image": image, "resources": res}]}}}}


def _cluster() -> KubeDouble:
    k8s = KubeDouble(ready_after_s=0.05, tick_s=0.02).start()
    k8s.create_namespace("ns")
    return k8s


def test_gpu_pods_beyond_the_pool_are_unschedulable():
    with _cluster() as k8s:
        k8s.cluster.gpus = 1
        k8s.create("deployments", _deployment("img:a", replicas=2, gpu=True))
        k8s.wait_for(lambda: len(k8s.list("pods", "ns")) == 2, what="two pods")
        k8s.wait_for(lambda: any(c.get("reason") == "Unschedulable" for p in k8s.list("pods", "ns")
                                 for c in p["status"].get("conditions", [])), what="an unschedulable pod")
        pending = [p for p in k8s.list("pods", "ns") if not p["spec"].get("nodeName")]
        assert len(pending) == 1 and "Insufficient nvidia.com/gpu" in pending[0]["status"]["conditions"][0]["message"]
        k8s.cluster.gpus = 2  # a GPU frees up: the pod is scheduled and turns Ready
        k8s.wait_for(lambda: k8s.get("deployments", "ns", "d").get("status", {}).get("availableReplicas") == 2,
                     what="both available")
        assert not k8s.cluster.errors


def test_refused_pods_become_replica_failure_on_the_deployment():
    with _cluster() as k8s:
        k8s.cluster.rejected_images["img:q"] = 'pods "d-x" is forbidden: exceeded quota: gpu'
        k8s.create("deployments", _deployment("img:q"))
        k8s.wait_for(lambda: any(c["type"] == "ReplicaFailure" for c in
                                 k8s.get("deployments", "ns", "d").get("status", {}).get("conditions", [])),
                     what="ReplicaFailure")
        (cond,) = [c for c in k8s.get("deployments", "ns", "d")["status"]["conditions"] if c["type"] == "ReplicaFailure"]
        assert cond["reason"] == "FailedCreate" and "exceeded quota" in cond["message"]
        assert k8s.list("pods", "ns") == []


def test_the_deployment_revision_follows_its_replicaset_one_sync_later():
    with KubeDouble(ready_after_s=0.05) as k8s:
        k8s.cluster.stop()  # step by hand
        k8s.create_namespace("ns")
        k8s.create("deployments", _deployment("img:a"))
        k8s.cluster.step()
        (rs,) = k8s.list("replicasets", "ns")
        assert rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
        assert "deployment.kubernetes.io/revision" not in (k8s.get("deployments", "ns", "d")["metadata"].get("annotations") or {})
        k8s.cluster.step()
        assert k8s.get("deployments", "ns", "d")["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"


def test_injected_faults_and_grants():
    with _cluster() as k8s:
        k8s.create("deployments", _deployment("img:a"))
        url = f"{k8s.url}/apis/apps/v1/namespaces/ns/deployments/d"
        fault = k8s.fail(503, verbs={"get"}, times=1)
        assert requests.get(url, timeout=5).status_code == 503
        assert requests.get(url, timeout=5).status_code == 200 and fault.served == 1
        later = k8s.fail(409, verbs={"get"}, times=1, after="patch")
        assert requests.get(url, timeout=5).status_code == 200 and not later.armed
        r = requests.patch(url, json={"metadata": {"labels": {"x": "y"}}}, timeout=5,
                           headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 200 and later.armed
        assert requests.get(url, timeout=5).json()["reason"] == "Conflict"
        k8s.grant({"deployments": {"get"}})
        assert requests.get(url, timeout=5).status_code == 200
        assert requests.get(f"{k8s.url}/apis/apps/v1/namespaces/ns/replicasets", timeout=5).status_code == 403
