"""`status` and `history` of a Kubernetes target: read from the cluster, joined with the ledger.

Both are read-only: they change nothing in the cluster, the ledger or the state directory
(`orchestrator repair` is the verb that writes; repair.py). They read the ReplicaSet revisions,
change-causes and image digests, so they agree with `kubectl rollout history`; the ledger adds
who/when/outcome.
"""

from __future__ import annotations

from typing import Any

from orchestrator.backends.kubernetes import rollout as kr
from orchestrator.backends.kubernetes.cluster import UNKNOWN, Cluster, Revision
from orchestrator.ledger import Switch
from orchestrator.lock import is_held
from orchestrator.switchflow import COUNTED


def drift(cluster: Cluster, d: dict[str, Any], live: Revision) -> list[str]:
    """Where the cluster, its pod template and the ledger disagree, one line each."""
    out: list[str] = []
    if live.version is None:
        out.append(f"{UNKNOWN}: {live.image} is not an image the ledger recorded a push for (edited by hand?); "
                   f"`orchestrator switch VERSION` replaces it")
    elif live.annotated and live.annotated != live.version:
        out.append(f"the pod template says {kr.VERSION}={live.annotated} but its image is {live.version}'s")
    recorded = cluster.ctx.ledger.live(cluster.target)
    if recorded is not None and recorded.digest != live.digest:
        out.append(f"the ledger last recorded {recorded.version} live (revision {recorded.slot}); the cluster "
                   f"runs {live.label} (revision {live.revision}): changed outside the orchestrator "
                   f"(e.g. `kubectl rollout undo`)")
    pin = cluster.pin_path
    if pin.is_file() and cluster.ctx.config.path(cluster.spec.overlay).is_dir() and \
            pin.read_text() != cluster.pin_text(d):
        out.append(f"{pin} pins another template than is live (re-applying it would change the Deployment); "
                   f"`orchestrator repair` writes it again")
    state = kr.rollout_status(d)
    if not state.done:
        out.append(state.failed or state.message)
    return out


def status(cluster: Cluster, kind: str) -> dict[str, Any]:
    ctx, api = cluster.ctx, cluster.api
    d = api.read_deployment()
    cluster.live_of(d)  # the container check, before anything else is read
    rss = api.replicasets(d)
    live = cluster.live_of(d, rss)
    state = kr.rollout_status(d)
    s = d.get("status") or {}
    replicas = d["spec"].get("replicas", 1)
    health = ("failed" if state.failed else "progressing" if not state.done
              else "ready" if s.get("availableReplicas", 0) >= replicas else "degraded")
    done = kr.condition(d, "Progressing") or {}
    current = next((r for r in rss if kr.revision(r) == live.revision), None)
    since = (done.get("lastUpdateTime") if done.get("reason") == "NewReplicaSetAvailable" else None) or (
        current["metadata"].get("creationTimestamp") if current else None)
    kept = []  # one row per kept revision, newest first (the "slots" of this backend)
    for rs in sorted(rss, key=kr.revision, reverse=True):
        info = cluster.describe_rs(rs)
        rst = rs.get("status") or {}
        kept.append({"revision": info.revision, "state": "live" if info.revision == live.revision else
                     ("scaling down" if rst.get("replicas") else
                      "failed, kept (0 pods)" if kr.is_failed(rs) else "kept (0 pods)"),
                     "failed": kr.annotations(rs).get(kr.FAILED),
                     "health": f"{rst.get('readyReplicas', 0)}/{rs['spec'].get('replicas', 0)} ready",
                     "version": info.label, "image": info.image})
    previous = next((k for k in kept if k["revision"] < live.revision and not k["failed"]), None)
    # Switches the ledger still shows running. Lock held: one is running now. Free: its process
    # died, and `orchestrator repair` (or the next switch) closes it.
    unfinished = [{"id": sw.id, "action": sw.action, "to_version": sw.to_version, "step": sw.step}
                  for sw in ctx.ledger.unfinished_switches(cluster.target)]
    held = is_held(ctx.config.state_path, cluster.target)
    running, left = (unfinished, []) if held else ([], unfinished)
    return {
        "target": cluster.target, "kind": kind, "namespace": cluster.spec.namespace,
        "deployment": cluster.spec.deployment, "server": api.server,
        "live": {"version": live.label, "digest": live.digest, "image": live.image, "revision": live.revision,
                 "variant": ctx.ledger.variant_of_digest(live.digest),
                 "slot": f"revision {live.revision}", "since": since, "health": health,
                 "annotated_version": live.annotated},
        "previous": previous and {"version": previous["version"], "slot": f"revision {previous['revision']}",
                                  "revision": previous["revision"]},
        "slots": kept,
        "replicas": {"desired": replicas, "updated": s.get("updatedReplicas", 0), "ready": s.get("readyReplicas", 0),
                     "available": s.get("availableReplicas", 0), "total": s.get("replicas", 0)},
        "rollout": state.message,
        "drift": drift(cluster, d, live),
        "interrupted": [], "unfinished": left, "switch_running": running,
    }


def history(cluster: Cluster, kind: str, limit: int | None = None) -> dict[str, Any]:
    """One entry per kept revision (the rows of `kubectl rollout history`), oldest first,
    joined with the ledger's record of the switch that made it, where there is one."""
    ledger = cluster.ctx.ledger
    d = cluster.api.read_deployment()
    rss = sorted(cluster.api.replicasets(d), key=kr.revision)
    switches = ledger.history(cluster.target)
    made: dict[int, tuple[Switch, str]] = {}
    for s in switches:
        if s.data.get("revision"):
            made[int(s.data["revision"])] = (s, "made")
        if s.data.get("undo_revision"):
            made[int(s.data["undo_revision"])] = (s, "undo")
    current = kr.current_revision(d, rss)
    entries = []
    previous: str | None = None
    for rs in rss:
        rev = kr.revision(rs)
        info = cluster.describe(rs["spec"]["template"], rev)
        ann = kr.annotations(rs)
        cause = ann.get(kr.CHANGE_CAUSE)
        earlier = ann.get(kr.REVISION_HISTORY)
        entry = {"revision": rev, "change_cause": cause, "version": info.label, "image": info.image,
                 "live": rev == current, "revision_history": earlier,
                 "at": rs["metadata"].get("creationTimestamp"), "action": None, "from_version": previous,
                 "to_version": info.label, "outcome": None, "reason": None, "user": None}
        if rev in made:
            s, role = made[rev]
            if role == "undo":
                entry.update(action=f"undo after failed {s.action}", outcome="succeeded", at=s.finished_at,
                             user=s.user, from_version=s.to_version,
                             reason=f"{s.action} to {s.to_version} failed: {s.reason}")
            else:
                entry.update(action=s.action, outcome=s.outcome, at=s.started_at, user=s.user,
                             from_version=s.from_version, reason=s.reason)
        elif earlier:
            entry.update(action="undo", reason=f"template of revision(s) {earlier} brought back "
                                               f"(kubectl rollout undo, or a switch to an older template)")
        elif cause and cause.startswith("orchestrator "):
            entry.update(action=cause.split()[1])
        else:
            entry.update(action="external")
        if entry["outcome"] is None:  # a revision made outside this ledger
            entry["outcome"] = "live" if rev == current else "superseded"
        entries.append(entry)
        previous = info.label
    # Attempts with no kept revision (refused before the patch, or failed and removed after the
    # undo) go where their revision was, or right after the one live when they were tried.
    kept_revs = {e["revision"] for e in entries}
    for s in switches:
        if s.outcome in ("noop", "succeeded", "running") or s.data.get("revision") in kept_revs:
            continue
        attempt = {"revision": None, "removed_revision": s.data.get("removed_revision"),
                   "change_cause": s.command, "version": s.to_version, "image": s.data.get("image"),
                   "live": False, "revision_history": None, "at": s.started_at, "action": s.action,
                   "from_version": s.from_version, "to_version": s.to_version, "outcome": s.outcome,
                   "reason": s.reason, "user": s.user}
        place = s.data.get("revision") or (s.data.get("from_revision") or 0) + 0.5
        at = next((i for i, e in enumerate(entries) if e["revision"] is not None and e["revision"] > place),
                  len(entries))
        entries.insert(at, attempt)
    for e in entries:  # the variant of the image each revision ran (None: unknown to the ledger)
        e["variant"] = ledger.variant_of_digest((e.get("image") or "").rpartition("@")[2] or None)
    if limit:
        entries = entries[-limit:]
    counted = [COUNTED[s.outcome] for s in switches if s.outcome in COUNTED]
    return {"target": cluster.target, "kind": kind, "entries": entries,
            "success_rate": round(sum(counted) / len(counted), 4) if counted else None,
            "counted": len(counted), "succeeded": sum(counted)}
