"""Rollout facts read from Deployment and ReplicaSet objects, as kubectl reads them.

Pure functions over the JSON objects of the API (no I/O), so each can be tested alone:
- `rollout_status`: the verdict of `kubectl rollout status` (DeploymentStatusViewer);
- `revision_for` / `undo_patch`: the ReplicaSet `kubectl rollout undo [--to-revision N]` picks and
  the JSON patch it sends (polymorphichelpers/rollback.go, DeploymentRollbacker);
- `switch_patch`: what `orchestrator switch` sends (strategic merge: the container by name).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
CHANGE_CAUSE = "kubernetes.io/change-cause"
VERSION = "aads.version"  # on the pod template: which version these pods run
HASH_LABEL = "pod-template-hash"
TIMED_OUT = "ProgressDeadlineExceeded"

# Annotations kubectl keeps from the Deployment instead of taking them from the ReplicaSet.
UNDO_KEEP = {"kubectl.kubernetes.io/last-applied-configuration", REVISION, REVISION_HISTORY,
             "deployment.kubernetes.io/desired-replicas", "deployment.kubernetes.io/max-replicas",
             "deprecated.deployment.rollback.to"}


def annotations(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def revision(obj: dict[str, Any]) -> int:
    try:
        return int(annotations(obj).get(REVISION, "0"))
    except ValueError:
        return 0


def template_version(template: dict[str, Any]) -> str | None:
    return ((template.get("metadata") or {}).get("annotations") or {}).get(VERSION)


def container_image(template: dict[str, Any], container: str) -> str | None:
    for c in (template.get("spec") or {}).get("containers") or []:
        if c.get("name") == container:
            return c.get("image")
    return None


def image_digest(image: str | None) -> str | None:
    """'repo@sha256:abc' -> 'sha256:abc'; a tag-only image has no digest."""
    if image and "@" in image:
        return image.split("@", 1)[1]
    return None


def _semantic(value: Any) -> Any:
    # apimachinery's semantic equality: a missing and an empty map/list are the same.
    if isinstance(value, dict):
        out = {k: _semantic(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_semantic(v) for v in value]
    return value


def equal_ignore_hash(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """deploymentutil.EqualIgnoreHash: pod templates equal apart from the pod-template-hash label."""
    a, b = copy.deepcopy(a), copy.deepcopy(b)
    for t in (a, b):
        ((t.get("metadata") or {}).get("labels") or {}).pop(HASH_LABEL, None)
    return _semantic(a) == _semantic(b)


def owned_by(rs: dict[str, Any], deployment: dict[str, Any]) -> bool:
    uid = deployment["metadata"].get("uid")
    return any(r.get("controller") and r.get("uid") == uid for r in rs["metadata"].get("ownerReferences") or [])


def condition(deployment: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (deployment.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None)


@dataclass(frozen=True)
class RolloutState:
    done: bool
    message: str
    failed: str | None = None  # why the rollout cannot finish (deadline exceeded)


def rollout_status(d: dict[str, Any]) -> RolloutState:
    """kubectl's DeploymentStatusViewer.Status, message for message."""
    name = d["metadata"]["name"]
    status = d.get("status") or {}
    if d["metadata"].get("generation", 0) > status.get("observedGeneration", 0):
        return RolloutState(False, "Waiting for deployment spec update to be observed...")
    cond = condition(d, "Progressing")
    if cond is not None and cond.get("reason") == TIMED_OUT:
        return RolloutState(False, f'deployment "{name}" exceeded its progress deadline',
                            failed=f'deployment "{name}" exceeded its progress deadline ({cond.get("message", "")})')
    replicas = (d.get("spec") or {}).get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    if updated < replicas:
        return RolloutState(False, f'Waiting for deployment "{name}" rollout to finish: {updated} out of '
                                   f"{replicas} new replicas have been updated...")
    if status.get("replicas", 0) > updated:
        return RolloutState(False, f'Waiting for deployment "{name}" rollout to finish: '
                                   f"{status.get('replicas', 0) - updated} old replicas are pending termination...")
    available = status.get("availableReplicas", 0)
    if available < updated:
        return RolloutState(False, f'Waiting for deployment "{name}" rollout to finish: {available} of {updated} '
                                   f"updated replicas are available...")
    return RolloutState(True, f'deployment "{name}" successfully rolled out')


class NoRevision(LookupError):
    pass


def revision_for(rss: list[dict[str, Any]], to_revision: int = 0) -> dict[str, Any]:
    """The ReplicaSet `kubectl rollout undo --to-revision` picks: 0 = the one before the newest."""
    if to_revision:
        for rs in rss:
            if revision(rs) == to_revision:
                return rs
        raise NoRevision(f"unable to find specified revision {to_revision} in history")
    ordered = sorted(rss, key=revision)
    if len(ordered) < 2:
        raise NoRevision("no rollout history found")
    return ordered[-2]


def undo_patch(deployment: dict[str, Any], rs: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON patch `kubectl rollout undo` sends: the ReplicaSet's pod template (without its
    pod-template-hash label) and its annotations, keeping the Deployment's controller-owned ones."""
    template = copy.deepcopy(rs["spec"]["template"])
    labels = (template.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(HASH_LABEL, None)
    kept = {k: v for k, v in annotations(deployment).items() if k in UNDO_KEEP}
    taken = {k: v for k, v in annotations(rs).items() if k not in UNDO_KEEP}
    return [
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace", "path": "/metadata/annotations", "value": {**kept, **taken}},
    ]


def switch_patch(*, container: str, image: str, version: str, change_cause: str,
                 resource_version: str | None) -> dict[str, Any]:
    """Strategic merge patch: one container's image (merged by name), the version on the pod
    template, the change-cause on the Deployment (the controller copies it onto the new
    ReplicaSet, where `kubectl rollout history` reads it). The resourceVersion makes it
    conditional: if someone changed the Deployment since we read it, the API answers 409."""
    meta: dict[str, Any] = {"annotations": {CHANGE_CAUSE: change_cause}}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {
        "metadata": meta,
        "spec": {"template": {
            "metadata": {"annotations": {VERSION: version}},
            "spec": {"containers": [{"name": container, "image": image}]},
        }},
    }
