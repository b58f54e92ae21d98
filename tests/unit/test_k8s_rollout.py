"""orchestrator.k8s_rollout: kubectl's rollout verdicts and undo patch, on plain API objects."""

from __future__ import annotations

import pytest

from orchestrator import k8s_rollout as kr


def deployment(*, generation=2, observed=2, replicas=2, updated=2, total=2, available=2, progressing=None,
               annotations=None):
    d = {"metadata": {"name": "aads-serving", "generation": generation, "uid": "u1",
                      "annotations": annotations or {}},
         "spec": {"replicas": replicas, "template": template("img:a")},
         "status": {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total,
                    "availableReplicas": available}}
    if progressing:
        d["status"]["conditions"] = [{"type": "Progressing", "status": "False", "reason": progressing,
                                      "message": 'ReplicaSet "x" has timed out progressing.'}]
    return d


def template(image, version="v1.0.0-a", hash_label=None):
    labels = {"app": "x", **({"pod-template-hash": hash_label} if hash_label else {})}
    return {"metadata": {"labels": labels, "annotations": {kr.VERSION: version}},
            "spec": {"containers": [{"name": "serving", "image": image}]}}


def rs(rev, image, **ann):
    return {"metadata": {"name": f"rs-{rev}", "annotations": {kr.REVISION: str(rev), **ann},
                         "ownerReferences": [{"uid": "u1", "controller": True}]},
            "spec": {"template": template(image, hash_label=f"h{rev}")}}


@pytest.mark.parametrize("kw, done, message", [
    (dict(generation=3, observed=2), False, "Waiting for deployment spec update to be observed..."),
    (dict(updated=1), False, 'Waiting for deployment "aads-serving" rollout to finish: 1 out of 2 new replicas '
                             "have been updated..."),
    (dict(total=3), False, 'Waiting for deployment "aads-serving" rollout to finish: 1 old replicas are pending '
                           "termination..."),
    (dict(available=1), False, 'Waiting for deployment "aads-serving" rollout to finish: 1 of 2 updated replicas '
                               "are available..."),
    ({}, True, 'deployment "aads-serving" successfully rolled out'),
])
def test_rollout_status_follows_kubectl(kw, done, message):
    state = kr.rollout_status(deployment(**kw))
    assert (state.done, state.message, state.failed) == (done, message, None)


def test_deadline_exceeded_is_a_failure():
    state = kr.rollout_status(deployment(updated=1, progressing="ProgressDeadlineExceeded"))
    assert not state.done and "exceeded its progress deadline" in state.failed
    # ... but only once the controller has observed the current spec.
    assert kr.rollout_status(deployment(generation=3, progressing="ProgressDeadlineExceeded")).failed is None


def test_revision_for_picks_like_kubectl():
    rss = [rs(3, "c"), rs(1, "a"), rs(5, "e")]
    assert kr.revision_for(rss)["metadata"]["name"] == "rs-3"  # the one before the newest
    assert kr.revision_for(rss, 1)["metadata"]["name"] == "rs-1"
    with pytest.raises(kr.NoRevision, match="unable to find specified revision 2"):
        kr.revision_for(rss, 2)
    with pytest.raises(kr.NoRevision, match="no rollout history"):
        kr.revision_for([rs(1, "a")])


def test_undo_patch_is_the_json_patch_kubectl_sends():
    d = deployment(annotations={kr.REVISION: "5", kr.CHANGE_CAUSE: "orchestrator switch v2",
                                "kubectl.kubernetes.io/last-applied-configuration": "{...}", "team": "x"})
    old = rs(3, "img:old", **{kr.CHANGE_CAUSE: "orchestrator switch v1", kr.REVISION_HISTORY: "1",
                              "deployment.kubernetes.io/desired-replicas": "2", "note": "y"})
    ops = kr.undo_patch(d, old)
    assert [(o["op"], o["path"]) for o in ops] == [("replace", "/spec/template"), ("replace", "/metadata/annotations")]
    tpl = ops[0]["value"]
    assert "pod-template-hash" not in tpl["metadata"]["labels"] and tpl["spec"]["containers"][0]["image"] == "img:old"
    # Controller-owned annotations stay the Deployment's; the rest come from the ReplicaSet
    # (so an annotation only the Deployment had, "team", is dropped, as kubectl drops it).
    assert ops[1]["value"] == {kr.REVISION: "5", "kubectl.kubernetes.io/last-applied-configuration": "{...}",
                               kr.CHANGE_CAUSE: "orchestrator switch v1", "note": "y"}
    assert old["spec"]["template"]["metadata"]["labels"]["pod-template-hash"] == "h3"  # input untouched


def test_equal_ignore_hash():
    assert kr.equal_ignore_hash(template("a", hash_label="h1"), template("a"))
    assert not kr.equal_ignore_hash(template("a"), template("b"))
    empty = template("a")
    empty["metadata"]["annotations"] = {kr.VERSION: "v1.0.0-a"}
    empty["spec"]["volumes"] = []
    assert kr.equal_ignore_hash(empty, template("a"))  # empty and missing lists are equal


def test_switch_patch():
    body = kr.switch_patch(container="serving", image="r@sha256:1", version="v2.0.0-b", change_cause="orchestrator switch v2.0.0-b",
                           resource_version="42")
    assert body["metadata"] == {"annotations": {kr.CHANGE_CAUSE: "orchestrator switch v2.0.0-b"}, "resourceVersion": "42"}
    assert body["spec"]["template"]["spec"]["containers"] == [{"name": "serving", "image": "r@sha256:1"}]
    assert body["spec"]["template"]["metadata"]["annotations"] == {kr.VERSION: "v2.0.0-b"}


def test_image_digest():
    assert kr.image_digest("h:5000/r@sha256:ab") == "sha256:ab"
    assert kr.image_digest("h:5000/r:tag") is None and kr.image_digest(None) is None
