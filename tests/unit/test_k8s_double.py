"""The Kubernetes API double's own parts: patch semantics and selectors, as the API server has them."""

from __future__ import annotations

import pytest

from tests.k8s_double import patches
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
