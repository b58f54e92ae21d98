"""`orchestrator repair` on a Kubernetes target: bring the ledger and the re-apply pin back in line
with the cluster. The cluster is the truth here (it finishes or times out a rollout by itself), so
a repair never patches the Deployment; it writes only the orchestrator's own records:

- a switch the ledger still shows running while nobody holds the target's lock was killed mid-way:
  it is closed as `interrupted` (a switch does the same before it starts);
- the ledger's live record names another image than the cluster runs (a `kubectl rollout undo`, a
  hand edit): the ledger records what the cluster runs, when that is a pushed version and its
  rollout is done;
- <state>/k8s/<target>/kustomization.yaml pins something else than is live (or is missing):
  it is written again, so re-applying from there keeps what is live.

The caller holds the target's lock. Each repair is one line in the result and a ledger event.
"""

from __future__ import annotations

from typing import Any

from orchestrator.backends.kubernetes import rollout as kr
from orchestrator.backends.kubernetes.cluster import Cluster


def close_interrupted(cluster: Cluster) -> list[dict[str, Any]]:
    """A switch still 'running' while we hold the lock was killed mid-way. Nothing to undo in the
    cluster: it finishes (or times out) a rollout by itself and is what status reads."""
    ctx = cluster.ctx
    closed = []
    for s in ctx.ledger.unfinished_switches(cluster.target):
        why = (f"the orchestrator stopped during step {s.step or 'start'}; the cluster carried on "
               f"(see `orchestrator status`)")
        ctx.ledger.finish_switch(s.id, "interrupted", why)
        ctx.note(f"[yellow]note: switch #{s.id} ({s.action} → {s.to_version}) was interrupted: {why}[/yellow]")
        closed.append({"id": s.id, "action": s.action, "to_version": s.to_version, "step": s.step,
                       "repair": f"closed as interrupted: {why}"})
    return closed


def catch_up_ledger(cluster: Cluster, d: dict[str, Any], rss: list[dict[str, Any]]) -> str | None:
    """Record what the cluster runs as live, if the ledger says otherwise and it can be named."""
    ledger = cluster.ctx.ledger
    live = cluster.live_of(d, rss)
    recorded = ledger.live(cluster.target)
    if not kr.rollout_status(d).done or live.version is None or not live.digest or not live.image:
        return None
    if recorded is not None and recorded.digest == live.digest:
        return None
    ledger.set_live(cluster.target, version=live.version, digest=live.digest, image_ref=live.image,
                    slot=str(live.revision))
    was = f"{recorded.version} (revision {recorded.slot})" if recorded else "nothing"
    return (f"the ledger recorded {was} live; it now records {live.version} (revision {live.revision}), "
            f"what the cluster runs")


def rewrite_pin(cluster: Cluster, d: dict[str, Any]) -> str | None:
    """Write the re-apply pin again if it is missing or pins something else than is live."""
    path = cluster.pin_path
    have = path.read_text() if path.is_file() else None
    if not cluster.ctx.config.path(cluster.spec.overlay).is_dir():
        return None  # no overlay to pin over (cluster.pin_text says so when a switch writes it)
    want = cluster.pin_text(d)
    if want is None or have == want:
        return None
    cluster.write_pin(d)
    return f"{path} {'pinned another template' if have is not None else 'was missing'}; written for what is live"


def repair(cluster: Cluster) -> tuple[list[dict[str, Any]], list[str]]:
    """(switches closed as interrupted, repairs made: one line each). The caller holds the lock."""
    ctx = cluster.ctx
    closed = close_interrupted(cluster)
    d = cluster.api.read_deployment()
    rss = cluster.api.replicasets(d)
    made = [c["repair"].replace("closed", f"switch #{c['id']} ({c['action']} → {c['to_version']}) closed", 1)
            for c in closed]
    for fix in (catch_up_ledger(cluster, d, rss), rewrite_pin(cluster, d)):
        if fix:
            made.append(fix)
            ctx.note(f"  [yellow]repaired: {fix}[/yellow]")
            ctx.ledger.add_event("drift-repaired", fix, target=cluster.target)
    return closed, made
