"""The controllers of the double: deployment, replicaset, and a kubelet that runs no containers.

The deployment controller follows kubernetes/pkg/controller/deployment (sync.go, rolling.go,
progress.go, util/deployment_util.go) for RollingUpdate Deployments:
- the new ReplicaSet is the one whose pod template equals the Deployment's apart from the
  `pod-template-hash` label (oldest first); none -> a new one named <deployment>-<hash>;
- its `deployment.kubernetes.io/revision` becomes max(old revisions)+1; an adopted older ReplicaSet
  records its previous number in `deployment.kubernetes.io/revision-history`;
- Deployment annotations (change-cause among them) are copied onto the new ReplicaSet, except the
  controller's own; the Deployment's revision annotation follows the new ReplicaSet's;
- scale up by maxSurge, scale old ones down keeping replicas-maxUnavailable available, unhealthy
  old pods first; clean up zero-replica ReplicaSets beyond revisionHistoryLimit once complete;
- status: observedGeneration, replicas, updated/ready/available/unavailable replicas; conditions
  Available and Progressing (NewReplicaSetCreated, FoundNewReplicaSet, ReplicaSetUpdated,
  NewReplicaSetAvailable, ProgressDeadlineExceeded after progressDeadlineSeconds without progress).

Pods start, and turn Ready `ready_after_s` later, unless one of their images is marked bad:
then they stay unready (readiness probe failing), crash-loop, or fail to pull, as marked; an
image may be marked to turn only its first N pods Ready (partial progress with replicas > 1).

What a real cluster adds around a rollout, as far as the backend must cope with it:
- a scheduler for one resource, `nvidia.com/gpu`: with `gpus` set, a pod whose GPU request does
  not fit the free GPUs stays Pending with `PodScheduled=False, reason Unschedulable` and the
  scheduler's message, and is scheduled once GPUs free up;
- admission that refuses pods (a ResourceQuota, Pod Security): the ReplicaSet gets
  `ReplicaFailure=True, reason FailedCreate` with the server's message, and the deployment
  controller copies it onto the Deployment (sync.go calculateStatus/getReplicaFailures);
- the Deployment's revision annotation follows its new ReplicaSet's one sync later: a reader may
  see the ReplicaSet's new number while the Deployment still carries the old one.
Not modelled: Recreate strategy, collisionCount, resources other than GPUs, graceful termination
(pods vanish at once), probes themselves, pod eviction.

Longer than 400 lines on purpose: the controllers share one loop and one lock over the store, and
the deployment controller is kept in one piece, in the order of the Go files above, so that it can
be read side by side with them.
"""

from __future__ import annotations

import copy
import math
import secrets
import threading
import time
from typing import Any

from tests.k8s_double.store import ApiError, Store, parse_timestamp, timestamp

REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
HASH_LABEL = "pod-template-hash"
# Annotations the controller never copies from a Deployment onto its ReplicaSets.
SKIP_COPY = {"kubectl.kubernetes.io/last-applied-configuration", REVISION, REVISION_HISTORY, DESIRED,
             MAX_REPLICAS, "deprecated.deployment.rollback.to"}
REV_HISTORY_MAX_CHARS = 2000  # the controller's default --deployment-controller-... limit

SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def safe_encode(text: str) -> str:
    """k8s.io/apimachinery/pkg/util/rand.SafeEncodeString: no vowels, no confusable characters."""
    return "".join(SAFE_ALPHABET[ord(c) % len(SAFE_ALPHABET)] for c in text)


def template_hash(template: dict[str, Any]) -> str:
    """FNV-32a over the template (the real one hashes the Go struct dump; the shape is the same)."""
    import json

    h = 0x811C9DC5
    for b in json.dumps(normalized(template), sort_keys=True).encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return safe_encode(str(h))


def normalized(value: Any) -> Any:
    """Semantic equality as apimachinery's: empty and missing maps/lists are the same."""
    if isinstance(value, dict):
        out = {k: normalized(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def equal_ignore_hash(a: dict[str, Any], b: dict[str, Any]) -> bool:
    a, b = copy.deepcopy(a), copy.deepcopy(b)
    for t in (a, b):
        ((t.get("metadata") or {}).get("labels") or {}).pop(HASH_LABEL, None)
    return normalized(a) == normalized(b)


def revision(obj: dict[str, Any]) -> int:
    try:
        return int((obj["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def resolve_fenceposts(strategy: dict[str, Any], replicas: int) -> tuple[int, int]:
    """(maxSurge, maxUnavailable): percentages of replicas, surge rounded up, unavailable down."""
    ru = (strategy or {}).get("rollingUpdate") or {}

    def value(v: Any, default: str, round_up: bool) -> int:
        v = default if v is None else v
        if isinstance(v, str) and v.endswith("%"):
            f = int(v[:-1]) * replicas / 100
            return math.ceil(f) if round_up else math.floor(f)
        return int(v)

    surge = value(ru.get("maxSurge"), "25%", True)
    unavailable = value(ru.get("maxUnavailable"), "25%", False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # validation forbids both 0; the controller would make progress anyway
    return surge, unavailable


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def set_condition(status: dict[str, Any], new: dict[str, Any]) -> None:
    """deploymentutil.SetDeploymentCondition: same status+reason -> no change; same status -> keep
    lastTransitionTime."""
    cur = condition(status, new["type"])
    if cur and cur["status"] == new["status"] and cur["reason"] == new["reason"]:
        return
    if cur and cur["status"] == new["status"]:
        new["lastTransitionTime"] = cur["lastTransitionTime"]
    status["conditions"] = [c for c in status.get("conditions") or [] if c["type"] != new["type"]] + [new]


def new_condition(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
    now = timestamp()
    return {"type": type_, "status": status, "lastUpdateTime": now, "lastTransitionTime": now,
            "reason": reason, "message": message}


class Cluster:
    """The controllers, run every `tick_s` by a background thread."""

    def __init__(self, store: Store, *, ready_after_s: float = 0.3, tick_s: float = 0.05):
        self.store = store
        self.ready_after_s = ready_after_s
        self.tick_s = tick_s
        # image -> how its pods fail: "unready" (readiness never passes), "crash", "pull".
        self.bad_images: dict[str, str] = {}
        self.ready_limit: dict[str, int] = {}  # image -> at most this many of its pods turn Ready
        self.gpus: int | None = None  # GPUs on the double's nodes; None: no GPU scheduling at all
        self.rejected_images: dict[str, str] = {}  # image -> admission's message refusing its pods
        self._pending_revision: dict[str, str] = {}  # deployment uid -> revision to set next sync
        self.paused = False  # freeze every controller (a rollout "in progress" that stays so)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready_since: dict[str, float] = {}  # pod uid -> when it turned Ready (monotonic)
        self._born: dict[str, float] = {}
        self.errors: list[str] = []  # bugs in the double itself; tests assert none happened

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="k8s-double-controllers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            if not self.paused:
                self.step()

    def step(self) -> None:
        """One pass of every controller, under the store's lock (an atomic step of the cluster)."""
        with self.store.lock:
            for d in self.store.list("deployments"):
                try:
                    self.sync_deployment(d)
                except ApiError:
                    pass  # the object changed under us: next tick
                except Exception as e:  # noqa: BLE001 - keep the cluster running, but remember
                    self.errors.append(f"{type(e).__name__}: {e}")
            for rs in self.store.list("replicasets"):
                self.sync_replicaset(rs)
            for pod in self.store.list("pods"):
                self.kubelet(pod)
            for rs in self.store.list("replicasets"):
                self.replicaset_status(rs)
            self.garbage_collect()

    # ---- deployment controller ---------------------------------------------------------------
    def owned(self, resource: str, owner: dict[str, Any]) -> list[dict[str, Any]]:
        uid = owner["metadata"]["uid"]
        return self.store.list(resource, owner["metadata"]["namespace"],
                               lambda o: any(r.get("uid") == uid and r.get("controller")
                                             for r in o["metadata"].get("ownerReferences") or []))

    def sync_deployment(self, d: dict[str, Any]) -> None:
        pending = self._pending_revision.pop(d["metadata"]["uid"], None)
        if pending is not None:  # the revision the previous sync gave the new ReplicaSet
            self.set_deployment_revision(d, pending)
            d = self.store.get("deployments", d["metadata"]["namespace"], d["metadata"]["name"])
        spec = d["spec"]
        replicas = spec.get("replicas", 1)
        rss = sorted(self.owned("replicasets", d), key=lambda r: r["metadata"]["creationTimestamp"])
        if spec.get("paused"):
            self.sync_status(d, rss, self.find_new(d, rss), scaling_only=True)
            return
        new_rs, old_rss = self.new_and_old(d, rss)
        all_rss = old_rss + [new_rs]
        surge, unavailable = resolve_fenceposts(spec.get("strategy"), replicas)
        # reconcileNewReplicaSet
        new_count = self.new_rs_replicas(d, all_rss, new_rs, surge)
        if new_count != new_rs["spec"]["replicas"]:
            new_rs = self.scale(new_rs, new_count, d)
        else:
            self.reconcile_old(d, old_rss, new_rs, replicas, unavailable)
        d = self.store.get("deployments", d["metadata"]["namespace"], d["metadata"]["name"])
        rss = self.owned("replicasets", d)
        old_rss = [r for r in rss if r["metadata"]["uid"] != new_rs["metadata"]["uid"]]
        status = self.sync_status(d, rss, new_rs)
        if complete(d, status):
            self.cleanup(d, old_rss)

    def find_new(self, d: dict[str, Any], rss: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((r for r in rss if equal_ignore_hash(r["spec"]["template"], d["spec"]["template"])), None)

    def new_and_old(self, d: dict[str, Any], rss: list[dict[str, Any]]) -> tuple[dict, list[dict]]:
        existing = self.find_new(d, rss)
        old = [r for r in rss if existing is None or r["metadata"]["uid"] != existing["metadata"]["uid"]]
        new_revision = max((revision(r) for r in old), default=0) + 1
        ns, name = d["metadata"]["namespace"], d["metadata"]["name"]
        if existing is not None:
            rs = copy.deepcopy(existing)
            changed = self.new_rs_annotations(d, rs, new_revision, exists=True)
            if changed or rs["spec"].get("minReadySeconds", 0) != d["spec"].get("minReadySeconds", 0):
                rs["spec"]["minReadySeconds"] = d["spec"].get("minReadySeconds", 0)
                rs = self.store.update("replicasets", rs, check_rv=False)
            self.lag_revision(d, rs["metadata"]["annotations"][REVISION])
            if d["spec"].get("progressDeadlineSeconds") is not None and not condition(d.get("status", {}), "Progressing"):
                self.update_status(d, lambda s: set_condition(
                    s, new_condition("Progressing", "True", "FoundNewReplicaSet",
                                     f'Found new replica set "{rs["metadata"]["name"]}"')))
            return rs, old
        # A new ReplicaSet for a template never seen before.
        template = copy.deepcopy(d["spec"]["template"])
        h = template_hash(template)
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = h
        selector = copy.deepcopy(d["spec"]["selector"])
        selector.setdefault("matchLabels", {})[HASH_LABEL] = h
        surge, _ = resolve_fenceposts(d["spec"].get("strategy"), d["spec"].get("replicas", 1))
        rs = {
            "metadata": {
                "name": f"{name}-{h}", "namespace": ns,
                "labels": dict(template["metadata"]["labels"]),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                     "uid": d["metadata"]["uid"], "controller": True,
                                     "blockOwnerDeletion": True}],
            },
            "spec": {"replicas": 0, "minReadySeconds": d["spec"].get("minReadySeconds", 0),
                     "selector": selector, "template": template},
        }
        self.new_rs_annotations(d, rs, new_revision, exists=False)
        rs["spec"]["replicas"] = self.new_rs_replicas(d, old + [rs], rs, surge)
        rs = self.store.create("replicasets", rs)
        self.lag_revision(d, str(new_revision))
        if d["spec"].get("progressDeadlineSeconds") is not None:
            self.update_status(d, lambda s: set_condition(
                s, new_condition("Progressing", "True", "NewReplicaSetCreated",
                                 f'Created new replica set "{rs["metadata"]["name"]}"')))
        return rs, old

    def new_rs_annotations(self, d: dict[str, Any], rs: dict[str, Any], new_revision: int, exists: bool) -> bool:
        """deploymentutil.SetNewReplicaSetAnnotations."""
        ann = rs["metadata"].setdefault("annotations", {})
        changed = False
        for k, v in (d["metadata"].get("annotations") or {}).items():
            if k in SKIP_COPY or ann.get(k) == v:
                continue
            ann[k] = v
            changed = True
        old = ann.get(REVISION)
        old_int = int(old) if old else 0
        if old_int < new_revision:
            ann[REVISION] = str(new_revision)
            changed = True
            if old:  # an older ReplicaSet brought back: keep its earlier numbers
                history = [h for h in ann.get(REVISION_HISTORY, "").split(",") if h]
                history.append(old)
                while len(",".join(history)) > REV_HISTORY_MAX_CHARS and len(history) > 1:
                    history.pop(0)
                ann[REVISION_HISTORY] = ",".join(history)
        if not exists:
            replicas = d["spec"].get("replicas", 1)
            surge, _ = resolve_fenceposts(d["spec"].get("strategy"), replicas)
            ann[DESIRED], ann[MAX_REPLICAS] = str(replicas), str(replicas + surge)
            changed = True
        return changed

    def lag_revision(self, d: dict[str, Any], rev: str) -> None:
        if (d["metadata"].get("annotations") or {}).get(REVISION) != rev:
            self._pending_revision[d["metadata"]["uid"]] = rev

    def set_deployment_revision(self, d: dict[str, Any], rev: str) -> None:
        cur = self.store.get("deployments", d["metadata"]["namespace"], d["metadata"]["name"])
        ann = cur["metadata"].setdefault("annotations", {})
        if ann.get(REVISION) != rev:
            ann[REVISION] = rev
            self.store.update("deployments", cur, check_rv=False)

    def update_status(self, d: dict[str, Any], change) -> dict[str, Any]:
        cur = self.store.get("deployments", d["metadata"]["namespace"], d["metadata"]["name"])
        status = copy.deepcopy(cur.get("status") or {})
        change(status)
        cur["status"] = status
        return self.store.update("deployments", cur, check_rv=False, status_only=True)

    @staticmethod
    def new_rs_replicas(d: dict[str, Any], all_rss: list[dict], new_rs: dict, surge: int) -> int:
        """deploymentutil.NewRSNewReplicas for RollingUpdate."""
        replicas = d["spec"].get("replicas", 1)
        current = new_rs["spec"]["replicas"]
        if current >= replicas:
            return replicas
        total = sum(r["spec"]["replicas"] for r in all_rss)
        max_total = replicas + surge
        if total >= max_total:
            return current
        return current + min(max_total - total, replicas - current)

    def scale(self, rs: dict[str, Any], count: int, d: dict[str, Any]) -> dict[str, Any]:
        rs = copy.deepcopy(rs)
        rs["spec"]["replicas"] = count
        ann = rs["metadata"].setdefault("annotations", {})
        replicas = d["spec"].get("replicas", 1)
        surge, _ = resolve_fenceposts(d["spec"].get("strategy"), replicas)
        ann[DESIRED], ann[MAX_REPLICAS] = str(replicas), str(replicas + surge)
        return self.store.update("replicasets", rs, check_rv=False)

    def reconcile_old(self, d: dict, old_rss: list[dict], new_rs: dict, replicas: int, unavailable: int) -> None:
        """rolling.go reconcileOldReplicaSets: unhealthy old pods first, then keep minAvailable."""
        active = [r for r in old_rss if r["spec"]["replicas"] > 0]
        if not active:
            return
        all_pods = sum(r["spec"]["replicas"] for r in old_rss + [new_rs])
        min_available = replicas - unavailable
        new_unavailable = new_rs["spec"]["replicas"] - new_rs.get("status", {}).get("availableReplicas", 0)
        max_scaled_down = all_pods - min_available - new_unavailable
        if max_scaled_down <= 0:
            return
        # cleanupUnhealthyReplicas: oldest first
        cleaned = 0
        for rs in sorted(active, key=lambda r: r["metadata"]["creationTimestamp"]):
            if cleaned >= max_scaled_down:
                break
            unhealthy = rs["spec"]["replicas"] - rs.get("status", {}).get("availableReplicas", 0)
            if unhealthy <= 0:
                continue
            down = min(max_scaled_down - cleaned, unhealthy)
            self.scale(rs, rs["spec"]["replicas"] - down, d)
            cleaned += down
        # scaleDownOldReplicaSetsForRollingUpdate
        current = self.owned("replicasets", d)
        available = sum(r.get("status", {}).get("availableReplicas", 0) for r in current)
        if available <= min_available:
            return
        total_down = available - min_available
        done = 0
        olds = [r for r in current if r["metadata"]["uid"] != new_rs["metadata"]["uid"] and r["spec"]["replicas"] > 0]
        for rs in sorted(olds, key=lambda r: r["metadata"]["creationTimestamp"]):
            if done >= total_down:
                break
            down = min(rs["spec"]["replicas"], total_down - done)
            self.scale(rs, rs["spec"]["replicas"] - down, d)
            done += down

    def sync_status(self, d: dict, rss: list[dict], new_rs: dict | None, scaling_only: bool = False) -> dict:
        """progress.go syncRolloutStatus with calculateStatus."""
        spec = d["spec"]
        replicas = spec.get("replicas", 1)
        _, unavailable = resolve_fenceposts(spec.get("strategy"), replicas)
        st = lambda r, k: (r.get("status") or {}).get(k, 0)  # noqa: E731
        available = sum(st(r, "availableReplicas") for r in rss)
        total = sum(r["spec"]["replicas"] for r in rss)
        old = d.get("status") or {}
        status = {
            "observedGeneration": d["metadata"]["generation"],
            "replicas": sum(st(r, "replicas") for r in rss),
            "updatedReplicas": st(new_rs, "replicas") if new_rs else 0,
            "readyReplicas": sum(st(r, "readyReplicas") for r in rss),
            "availableReplicas": available,
            "unavailableReplicas": max(total - available, 0),
            "conditions": copy.deepcopy(old.get("conditions") or []),
        }
        if available >= replicas - unavailable:
            set_condition(status, new_condition("Available", "True", "MinimumReplicasAvailable",
                                                "Deployment has minimum availability."))
        else:
            set_condition(status, new_condition("Available", "False", "MinimumReplicasUnavailable",
                                                "Deployment does not have minimum availability."))
        failure = replica_failure(rss, new_rs)
        if failure is not None:
            set_condition(status, new_condition("ReplicaFailure", "True", failure["reason"], failure["message"]))
        else:
            status["conditions"] = [c for c in status["conditions"] if c["type"] != "ReplicaFailure"]
        deadline = spec.get("progressDeadlineSeconds")
        cur = condition(status, "Progressing")
        is_complete = status["replicas"] == status["updatedReplicas"] and cur and cur["reason"] == "NewReplicaSetAvailable"
        if deadline is not None and not is_complete and not scaling_only and new_rs is not None:
            rs_name = new_rs["metadata"]["name"]
            if complete(d, status):
                set_condition(status, new_condition("Progressing", "True", "NewReplicaSetAvailable",
                                                    f'ReplicaSet "{rs_name}" has successfully progressed.'))
            elif progressing(old, status):
                c = new_condition("Progressing", "True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.')
                if cur and cur["status"] == "True":
                    c["lastTransitionTime"] = cur["lastTransitionTime"]
                status["conditions"] = [x for x in status["conditions"] if x["type"] != "Progressing"] + [c]
            elif timed_out(d, status):
                set_condition(status, new_condition("Progressing", "False", "ProgressDeadlineExceeded",
                                                    f'ReplicaSet "{rs_name}" has timed out progressing.'))
        if old.get("collisionCount") is not None:
            status["collisionCount"] = old["collisionCount"]
        status = {k: v for k, v in status.items() if v not in (0, None) or k == "observedGeneration"}
        if status != old:
            cur_obj = self.store.get("deployments", d["metadata"]["namespace"], d["metadata"]["name"])
            cur_obj["status"] = status
            self.store.update("deployments", cur_obj, check_rv=False, status_only=True)
        return status

    def cleanup(self, d: dict, old_rss: list[dict]) -> None:
        """Delete zero-replica old ReplicaSets beyond revisionHistoryLimit, oldest revision first."""
        limit = d["spec"].get("revisionHistoryLimit")
        if limit is None:
            return
        cleanable = [r for r in old_rss if r["spec"]["replicas"] == 0 and not (r.get("status") or {}).get("replicas")]
        for rs in sorted(cleanable, key=revision)[: max(len(cleanable) - limit, 0)]:
            self.store.delete("replicasets", rs["metadata"]["namespace"], rs["metadata"]["name"])

    # ---- replicaset controller ---------------------------------------------------------------
    def sync_replicaset(self, rs: dict[str, Any]) -> None:
        pods = self.owned("pods", rs)
        want = rs["spec"]["replicas"]
        ns = rs["metadata"]["namespace"]
        refused = None
        for _ in range(want - len(pods)):
            template = copy.deepcopy(rs["spec"]["template"])
            refused = next((self.rejected_images[c["image"]] for c in template["spec"].get("containers", [])
                            if c["image"] in self.rejected_images), None)
            if refused:
                break
            pod = {
                "metadata": {
                    "name": f"{rs['metadata']['name']}-{''.join(secrets.choice(SAFE_ALPHABET) for _ in range(5))}",
                    "namespace": ns,
                    "labels": (template.get("metadata") or {}).get("labels") or {},
                    "annotations": (template.get("metadata") or {}).get("annotations") or {},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs["metadata"]["name"],
                                         "uid": rs["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}],
                },
                "spec": template.get("spec", {}),
                "status": {"phase": "Pending"},
            }
            self.schedule(pod)
            created = self.store.create("pods", pod)
            self._born[created["metadata"]["uid"]] = time.monotonic()
        self.set_replica_failure(rs, refused)
        if len(pods) > want:
            # controller.ActivePods ordering: not ready before ready, newer before older.
            victims = sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"], reverse=True)
            victims.sort(key=pod_ready)
            for p in victims[: len(pods) - want]:
                self.store.delete("pods", ns, p["metadata"]["name"])
                self._ready_since.pop(p["metadata"]["uid"], None)

    def set_replica_failure(self, rs: dict[str, Any], message: str | None) -> None:
        """replica_set.go manageReplicas: a refused pod create -> ReplicaFailure on the ReplicaSet."""
        cur = self.store.get("replicasets", rs["metadata"]["namespace"], rs["metadata"]["name"])
        status = copy.deepcopy(cur.get("status") or {})
        conds = [c for c in status.get("conditions") or [] if c["type"] != "ReplicaFailure"]
        if message:
            conds.append({"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                          "message": message, "lastTransitionTime": timestamp()})
            old = condition(status, "ReplicaFailure")
            if old and old["message"] == message:
                conds[-1] = old
        if conds != (status.get("conditions") or []):
            status["conditions"] = conds
            if not conds:
                status.pop("conditions")
            cur["status"] = status
            self.store.update("replicasets", cur, check_rv=False, status_only=True)

    # ---- scheduler (GPUs only) ---------------------------------------------------------------
    def schedule(self, pod: dict[str, Any]) -> bool:
        """Bind the pod to the node when its GPU request fits, else mark it Unschedulable."""
        want = gpu_request(pod)
        if self.gpus is not None and want:
            used = sum(gpu_request(p) for p in self.store.list("pods") if p["spec"].get("nodeName"))
            if used + want > self.gpus:
                cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 "
                                   "nodes are available: 1 No preemption victims found for incoming pod.",
                        "lastTransitionTime": timestamp()}
                pod["status"] = {"phase": "Pending", "conditions": [cond]}
                return False
        pod["spec"]["nodeName"] = "double-node-1"
        pod["status"] = {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": timestamp()}]}
        return True

    def replicaset_status(self, rs: dict[str, Any]) -> None:
        pods = self.owned("pods", rs)
        min_ready = rs["spec"].get("minReadySeconds", 0)
        now = time.monotonic()
        ready = [p for p in pods if pod_ready(p)]
        available = [p for p in ready if now - self._ready_since.get(p["metadata"]["uid"], now) >= min_ready]
        status = {k: v for k, v in {
            "replicas": len(pods), "fullyLabeledReplicas": len(pods), "readyReplicas": len(ready),
            "availableReplicas": len(available), "observedGeneration": rs["metadata"]["generation"],
        }.items() if v or k in ("replicas", "observedGeneration")}
        if (rs.get("status") or {}).get("conditions"):
            status["conditions"] = rs["status"]["conditions"]
        if rs.get("status") != status:
            rs["status"] = status
            self.store.update("replicasets", rs, check_rv=False, status_only=True)

    # ---- kubelet -----------------------------------------------------------------------------
    def kubelet(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        if not pod["spec"].get("nodeName"):
            if self.schedule(pod):
                self._born[uid] = time.monotonic()
                self.store.update("pods", pod, check_rv=False)
            return
        age = time.monotonic() - self._born.setdefault(uid, time.monotonic())
        images = [c["image"] for c in pod["spec"].get("containers", [])]
        failure = next((self.bad_images[i] for i in images if i in self.bad_images), None)
        status = copy.deepcopy(pod["status"])
        now = timestamp()
        if age < self.ready_after_s / 2:
            return
        running = failure != "pull"
        ready = failure is None and age >= self.ready_after_s
        limited = next((i for i in images if i in self.ready_limit), None)
        if ready and limited is not None and not pod_ready(pod):
            ready_now = [p for p in self.store.list("pods") if pod_ready(p)
                         and limited in [c["image"] for c in p["spec"].get("containers", [])]]
            ready = len(ready_now) < self.ready_limit[limited]
            failure = None if ready else "unready"
        status["phase"] = "Running" if running else "Pending"
        statuses = []
        for c in pod["spec"].get("containers", []):
            s: dict[str, Any] = {"name": c["name"], "image": c["image"], "ready": ready,
                                 "restartCount": 0, "started": running}
            if failure == "pull":
                s["state"] = {"waiting": {"reason": "ImagePullBackOff",
                                          "message": f'Back-off pulling image "{c["image"]}"'}}
            elif failure == "crash":
                s["state"] = {"waiting": {"reason": "CrashLoopBackOff",
                                          "message": "back-off restarting failed container"}}
                s["restartCount"] = int(age / max(self.ready_after_s, 0.1))
                s["started"] = False
            else:
                s["state"] = {"running": {"startedAt": now}}
            statuses.append(s)
        prev = {c["name"]: c for c in pod["status"].get("containerStatuses") or []}
        for s in statuses:  # keep timestamps stable so a steady pod is not rewritten every tick
            if "running" in s["state"] and "running" in (prev.get(s["name"], {}).get("state") or {}):
                s["state"] = prev[s["name"]]["state"]
        status["containerStatuses"] = statuses
        was_ready = pod_ready(pod)
        conds = {c["type"]: c for c in status.get("conditions") or []}
        for type_, value in (("Initialized", True), ("ContainersReady", ready), ("Ready", ready)):
            v = "True" if value else "False"
            if type_ not in conds or conds[type_]["status"] != v:
                conds[type_] = {"type": type_, "status": v, "lastTransitionTime": now}
                if not value and type_ == "Ready" and failure == "unready":
                    conds[type_]["reason"] = "ContainersNotReady"
                    conds[type_]["message"] = "containers with unready status: [" + ", ".join(
                        c["name"] for c in pod["spec"].get("containers", [])) + "]"
        status["conditions"] = list(conds.values())
        if ready and not was_ready:
            self._ready_since[uid] = time.monotonic()
        if status != pod["status"]:
            pod["status"] = status
            self.store.update("pods", pod, check_rv=False)

    def garbage_collect(self) -> None:
        """Delete ReplicaSets and Pods whose controller owner is gone (background cascading)."""
        uids = {o["metadata"]["uid"] for r in ("deployments", "replicasets") for o in self.store.list(r)}
        for resource in ("replicasets", "pods"):
            for o in self.store.list(resource):
                owners = [r for r in o["metadata"].get("ownerReferences") or [] if r.get("controller")]
                if owners and owners[0]["uid"] not in uids:
                    self.store.delete(resource, o["metadata"]["namespace"], o["metadata"]["name"])


def gpu_request(pod: dict[str, Any]) -> int:
    total = 0
    for c in pod["spec"].get("containers", []):
        res = c.get("resources") or {}
        total += int((res.get("requests") or res.get("limits") or {}).get("nvidia.com/gpu", 0))
    return total


def replica_failure(rss: list[dict[str, Any]], new_rs: dict[str, Any] | None) -> dict[str, Any] | None:
    """sync.go getReplicaFailures: the new ReplicaSet's ReplicaFailure first, else an old one's."""
    ordered = ([new_rs] if new_rs else []) + [r for r in rss if not new_rs or r["metadata"]["uid"] != new_rs["metadata"]["uid"]]
    for rs in ordered:
        c = condition(rs.get("status") or {}, "ReplicaFailure")
        if c and c["status"] == "True":
            return c
    return None


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def complete(d: dict[str, Any], status: dict[str, Any]) -> bool:
    """deploymentutil.DeploymentComplete."""
    replicas = d["spec"].get("replicas", 1)
    return (status.get("updatedReplicas", 0) == replicas and status.get("replicas", 0) == replicas
            and status.get("availableReplicas", 0) == replicas
            and status.get("observedGeneration", 0) >= d["metadata"]["generation"])


def progressing(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """deploymentutil.DeploymentProgressing: any count moved the right way."""
    g = lambda s, k: s.get(k, 0)  # noqa: E731
    old_old = g(old, "replicas") - g(old, "updatedReplicas")
    new_old = g(new, "replicas") - g(new, "updatedReplicas")
    return (g(new, "updatedReplicas") > g(old, "updatedReplicas") or new_old < old_old
            or g(new, "readyReplicas") > g(old, "readyReplicas")
            or g(new, "availableReplicas") > g(old, "availableReplicas"))


def timed_out(d: dict[str, Any], status: dict[str, Any]) -> bool:
    """deploymentutil.DeploymentTimedOut."""
    cond = condition(status, "Progressing")
    if cond is None or cond["reason"] == "NewReplicaSetAvailable":
        return False
    if cond["reason"] == "ProgressDeadlineExceeded":
        return True
    return parse_timestamp(cond["lastUpdateTime"]) + d["spec"]["progressDeadlineSeconds"] < time.time()
