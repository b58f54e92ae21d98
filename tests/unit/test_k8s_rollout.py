"""orchestrator.backends.kubernetes.rollout: kubectl's rollout verdicts and undo patch, on plain API objects."""

from __future__ import annotations

import pytest

from orchestrator.backends.kubernetes import rollout as kr


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
    assert body["metadata"] == {"annotations": {kr.CHANGE_CAUSE: "orchestrator switch v2.0.0-b", kr.FAILED: None},
                                "resourceVersion": "42"}
    assert body["spec"]["template"]["spec"]["containers"] == [{"name": "serving", "image": "r@sha256:1"}]
    assert body["spec"]["template"]["metadata"]["annotations"] == {kr.VERSION: "v2.0.0-b"}


def test_image_digest():
    assert kr.image_digest("h:5000/r@sha256:ab") == "sha256:ab"
    assert kr.image_digest("h:5000/r:tag") is None and kr.image_digest(None) is None


def test_a_deadline_of_another_replicaset_is_stale():
    d = deployment(updated=1, progressing="ProgressDeadlineExceeded")
    d["status"]["conditions"][0]["message"] = 'ReplicaSet "aads-serving-old" has timed out progressing.'
    assert kr.deadline_owner(d) == "aads-serving-old"
    assert kr.rollout_status(d, "aads-serving-old").failed  # this rollout's own: a failure
    stale = kr.rollout_status(d, "aads-serving-new")
    assert stale.failed is None and not stale.done and "1 out of 2 new replicas" in stale.message


def test_current_revision_is_the_new_replicasets():
    d = deployment(annotations={kr.REVISION: "3"})  # the Deployment's annotation lags a sync behind
    rss = [rs(3, "img:b"), rs(4, "img:a")]
    assert kr.current_revision(d, rss) == 4 and kr.new_replicaset(d, rss)["metadata"]["name"] == "rs-4"


def test_undo_target_never_picks_a_failed_revision():
    rss = [rs(1, "a"), rs(2, "b", **{kr.FAILED: "deadline"}), rs(3, "c"), rs(4, "d")]
    assert kr.revision(kr.undo_target(rss, failed=4, prefer=3)) == 3
    assert kr.revision(kr.undo_target(rss, failed=4, prefer=2)) == 3  # preferred, but marked failed
    assert kr.revision(kr.undo_target(rss, failed=4, prefer=None)) == 3
    with pytest.raises(kr.NoRevision):
        kr.undo_target([rs(2, "b", **{kr.FAILED: "x"}), rs(4, "d")], failed=4, prefer=None)


def test_failed_mark_and_undo_patch_drop_it():
    mark = kr.failed_mark("deadline exceeded", "orchestrator switch v9")
    assert mark["metadata"]["annotations"] == {kr.FAILED: "deadline exceeded",
                                               kr.CHANGE_CAUSE: "FAILED, rolled back: orchestrator switch v9"}
    assert kr.failed_mark("x", "FAILED, rolled back: y")["metadata"]["annotations"][kr.CHANGE_CAUSE] == \
        "FAILED, rolled back: y"
    old = rs(2, "img:b", **{kr.FAILED: "x", kr.CHANGE_CAUSE: "c"})
    assert kr.FAILED not in kr.undo_patch(deployment(), old)[1]["value"]
    body = kr.switch_patch(container="serving", image="r@sha256:1", version="v", change_cause="c",
                           resource_version=None, pull_secret="pull")
    assert body["metadata"]["annotations"][kr.FAILED] is None  # a hand-made undo's mark is removed
    assert body["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "pull"}]


@pytest.mark.parametrize("repo, loopback", [
    ("127.0.0.1:5000/aads-ulora", True), ("localhost/aads", True), ("localhost:5000/aads", True),
    ("[::1]:5000/aads", True), ("127.8.0.1/x", True), ("registry.example.com/aads-ulora", False),
    ("10.0.0.5:5000/aads", False), ("registry.localhost.example.com/x", False),
])
def test_is_loopback(repo, loopback):
    assert kr.is_loopback(repo) is loopback


def test_switch_timeout_covers_every_pod():
    assert kr.switch_timeout(4, 300, None) == 1200
    assert kr.switch_timeout(0, 300, None) == 300
    assert kr.switch_timeout(4, 300, 90) == 90


def test_pinned_kustomization_pins_what_is_live():
    import yaml

    d = deployment(annotations={kr.CHANGE_CAUSE: "orchestrator switch v2", kr.REVISION: "2"})
    d["spec"]["template"]["spec"]["imagePullSecrets"] = [{"name": "pull"}]
    text = kr.pinned_kustomization(overlay="../../k8s/overlays/gpu", namespace="aads", deployment=d,
                                   container="serving", target="prod")
    body = yaml.safe_load(text)
    assert body["resources"] == ["../../k8s/overlays/gpu"] and body["namespace"] == "aads"
    patch = yaml.safe_load(body["patches"][0]["patch"])
    assert patch["metadata"] == {"name": "aads-serving", "annotations": {kr.CHANGE_CAUSE: "orchestrator switch v2"}}
    assert patch["spec"]["template"]["spec"] == {"containers": [{"name": "serving", "image": "img:a"}],
                                                 "imagePullSecrets": [{"name": "pull"}]}
    assert patch["spec"]["template"]["metadata"]["annotations"] == {kr.VERSION: "v1.0.0-a"}
