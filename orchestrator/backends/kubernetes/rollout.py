"""Rollout facts read from Deployment and ReplicaSet objects, as kubectl reads them.

Pure functions over the JSON objects of the API (no I/O), so each can be tested alone:
- `rollout_status`: the verdict of `kubectl rollout status` (DeploymentStatusViewer);
- `revision_for` / `undo_patch`: the ReplicaSet `kubectl rollout undo [--to-revision N]` picks and
  the JSON patch it sends (polymorphichelpers/rollback.go, DeploymentRollbacker);
- `switch_patch`: what `orchestrator switch` sends (strategic merge: the container by name);
- `new_replicaset` / `deadline_owner`: which ReplicaSet a ProgressDeadlineExceeded belongs to
  (a stale one, left from a failed ReplicaSet, does not fail the rollout of another);
- `undo_target` / `failed_mark`: revisions whose rollout failed are marked, never deleted, and
  never chosen as the way back;
- `pinned_kustomization`: the manifests to re-apply without reverting what is live.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
CHANGE_CAUSE = "kubernetes.io/change-cause"
VERSION = "aads.version"  # on the pod template: which version these pods run
HASH_LABEL = "pod-template-hash"
TIMED_OUT = "ProgressDeadlineExceeded"
# On a ReplicaSet whose rollout failed (its reason); the orchestrator's way back skips it. The
# controller never copies ReplicaSet annotations onto others, so the mark stays where it was put.
FAILED = "aads.failed"

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


_DEADLINE_OF = re.compile(r'ReplicaSet "([^"]+)" has timed out progressing')


def deadline_owner(d: dict[str, Any]) -> str | None:
    """The ReplicaSet a ProgressDeadlineExceeded condition names (progress.go's message)."""
    cond = condition(d, "Progressing")
    if cond is None or cond.get("reason") != TIMED_OUT:
        return None
    m = _DEADLINE_OF.search(cond.get("message") or "")
    return m.group(1) if m else None


def rollout_status(d: dict[str, Any], new_rs: str | None = None) -> RolloutState:
    """kubectl's DeploymentStatusViewer.Status, message for message. With `new_rs` (the name of
    the Deployment's current new ReplicaSet) a deadline that names another ReplicaSet is stale:
    the controller keeps the condition when an undo adopts an existing ReplicaSet and only
    replaces it once that one makes progress, so it is not this rollout's failure."""
    name = d["metadata"]["name"]
    status = d.get("status") or {}
    if d["metadata"].get("generation", 0) > status.get("observedGeneration", 0):
        return RolloutState(False, "Waiting for deployment spec update to be observed...")
    cond = condition(d, "Progressing")
    owner = deadline_owner(d)
    stale = new_rs is not None and owner is not None and owner != new_rs
    if cond is not None and cond.get("reason") == TIMED_OUT and not stale:
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


def replica_failure(d: dict[str, Any]) -> str | None:
    """The Deployment's ReplicaFailure condition (pods refused: quota, Pod Security, ...), as one line."""
    cond = condition(d, "ReplicaFailure")
    if cond is None or cond.get("status") != "True":
        return None
    return f"ReplicaFailure ({cond.get('reason', '?')}): {cond.get('message', '')}"


def new_replicaset(d: dict[str, Any], rss: list[dict[str, Any]]) -> dict[str, Any] | None:
    """deploymentutil.FindNewReplicaSet: the oldest ReplicaSet whose template equals the Deployment's."""
    same = [r for r in rss if equal_ignore_hash(r["spec"]["template"], d["spec"]["template"])]
    return min(same, key=lambda r: r["metadata"].get("creationTimestamp", "")) if same else None


def current_revision(d: dict[str, Any], rss: list[dict[str, Any]]) -> int:
    """The revision the Deployment's template runs as: its new ReplicaSet's number. The Deployment's
    own annotation follows that one a sync later, so right after a rollout it may still be stale."""
    rs = new_replicaset(d, rss)
    return revision(rs) if rs is not None else revision(d)


def is_failed(rs: dict[str, Any]) -> bool:
    return FAILED in annotations(rs)


def failed_mark(reason: str, change_cause: str | None) -> dict[str, Any]:
    """Merge patch for a ReplicaSet whose rollout failed: the reason, and a change-cause that
    `kubectl rollout history` shows as FAILED, so a hand-made undo does not pick it unawares."""
    cause = change_cause or "unknown change"
    if not cause.startswith("FAILED"):
        cause = f"FAILED, rolled back: {cause}"
    return {"metadata": {"annotations": {FAILED: reason[:500], CHANGE_CAUSE: cause}}}


def undo_target(rss: list[dict[str, Any]], failed: int, prefer: int | None) -> dict[str, Any]:
    """Where an automatic undo goes: `prefer` (the revision live and fully available before the
    switch) unless it is marked failed, else the newest revision not marked failed; never `failed`."""
    usable = [r for r in rss if revision(r) != failed and not is_failed(r)]
    for rs in usable:
        if prefer is not None and revision(rs) == prefer:
            return rs
    if not usable:
        raise NoRevision("no kept revision that did not fail")
    return max(usable, key=revision)


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
    taken = {k: v for k, v in annotations(rs).items() if k not in UNDO_KEEP and k != FAILED}
    return [
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace", "path": "/metadata/annotations", "value": {**kept, **taken}},
    ]


def switch_patch(*, container: str, image: str, version: str, change_cause: str,
                 resource_version: str | None, pull_secret: str | None = None) -> dict[str, Any]:
    """Strategic merge patch: one container's image (merged by name), the pull secret (merged by
    name), the version on the pod template, the change-cause on the Deployment (the controller
    copies it onto the new ReplicaSet, where `kubectl rollout history` reads it) and no failure
    mark (one brought onto the Deployment by a hand-made undo would be copied onto the new
    ReplicaSet). The resourceVersion makes it conditional: if someone changed the Deployment
    since we read it, the API answers 409."""
    meta: dict[str, Any] = {"annotations": {CHANGE_CAUSE: change_cause, FAILED: None}}
    if resource_version:
        meta["resourceVersion"] = resource_version
    pod: dict[str, Any] = {"containers": [{"name": container, "image": image}]}
    if pull_secret:
        pod["imagePullSecrets"] = [{"name": pull_secret}]
    return {
        "metadata": meta,
        "spec": {"template": {"metadata": {"annotations": {VERSION: version}}, "spec": pod}},
    }


def is_loopback(repository: str) -> bool:
    """`127.0.0.1:5000/aads-ulora`, `localhost/x`, `[::1]:5000/x`: a name only this host can pull."""
    host = repository.split("/", 1)[0]
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def switch_timeout(replicas: int, pod_budget_s: float, override: float | None) -> float:
    """The switch's own limit on one rollout: every pod may take its budget (pods may come up one
    at a time, e.g. on a fixed GPU pool), unless the target sets a limit of its own."""
    return override if override is not None else max(replicas, 1) * pod_budget_s


def pinned_kustomization(*, overlay: str, namespace: str, deployment: dict[str, Any], container: str,
                         target: str) -> str:
    """A kustomization over `overlay` with what is live pinned: the container's image, the pull
    secrets, the version on the pod template and the change-cause. `kubectl apply -k` of it
    leaves a switched Deployment as it is (applying the overlay itself would put back its
    placeholder image and annotations)."""
    import yaml

    template = deployment["spec"]["template"]
    pod: dict[str, Any] = {"containers": [{"name": container, "image": container_image(template, container)}]}
    secrets = (template.get("spec") or {}).get("imagePullSecrets")
    if secrets:
        pod["imagePullSecrets"] = secrets
    patch = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": deployment["metadata"]["name"],
                     "annotations": {CHANGE_CAUSE: annotations(deployment).get(CHANGE_CAUSE, "")}},
        "spec": {"template": {"metadata": {"annotations": {VERSION: template_version(template) or ""}},
                              "spec": pod}},
    }
    body = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "namespace": namespace, "resources": [overlay],
            "patches": [{"patch": yaml.safe_dump(patch, sort_keys=False)}]}
    return (f"# Written by the orchestrator after each switch and rollback of target {target}: the\n"
            f"# manifests of {overlay} with what is live pinned. Re-apply with `kubectl apply -k` of this\n"
            f"# directory; applying the overlay itself would put back its placeholder image.\n"
            + yaml.safe_dump(body, sort_keys=False))
