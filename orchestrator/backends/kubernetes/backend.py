"""Kubernetes backend: a RollingUpdate of one Deployment, with the cluster's own revision history.

switch V:  resolve V (ledger push + registry tag check) -> strategic-merge patch of the container
           image to <target repository>@sha256:<digest> (a name the nodes can pull, never
           loopback) with the target's pull secret, `aads.version` on the pod template and
           `kubernetes.io/change-cause` on the Deployment -> wait as `kubectl rollout status` does
           -> on failure (a ProgressDeadlineExceeded of this rollout's ReplicaSet, or the switch's
           timeout) mark the failed revision and send the JSON patch `kubectl rollout undo` sends,
           back to the revision that was live (or the newest one not marked failed), and SwitchFailed.
           API errors are retried; when the API stays unreachable the outcome is `unknown` and
           nothing is undone. ReplicaSets are never deleted.
rollback:  that undo patch, to the previous revision not marked failed or (--to-version) to the
           newest such revision whose pods ran that version.
Both run the shared switch flow (orchestrator/switchflow.py) with a KubeSwitch (switch.py).
After either, <state>/k8s/<target>/kustomization.yaml pins what is live over the target's overlay,
so re-applying the manifests from there does not revert it.
status, history: read-only, from the cluster (views.py); repair: the ledger and the pin brought in
           line with the cluster (repair.py).

Because every change is an ordinary Deployment revision, `kubectl rollout undo
deployment/aads-serving` is always a valid way back, with or without this tool.
"""

from __future__ import annotations

from typing import Any

from orchestrator import switchflow
from orchestrator.backends.kubernetes import repair, views
from orchestrator.backends.kubernetes import rollout as kr
from orchestrator.backends.kubernetes.api import KubeApi
from orchestrator.backends.kubernetes.cluster import UNKNOWN, Cluster, Revision
from orchestrator.backends.kubernetes.errors import RolloutBusy
from orchestrator.backends.kubernetes.switch import KubeSwitch
from orchestrator.config import KubernetesTarget
from orchestrator.context import Context
from orchestrator.errors import UsageError
from orchestrator.ledger import Switch as SwitchRecord
from orchestrator.lock import target_lock
from orchestrator.resolve import known_version
from orchestrator.variants import deployment_variant

class KubernetesBackend:
    kind = "kubernetes"

    def __init__(self, ctx: Context, target: str, spec: KubernetesTarget, *, api: KubeApi | None = None):
        self.ctx = ctx
        self.target = target
        self.spec = spec
        self.cluster = Cluster(ctx, target, spec, api)

    @property
    def api(self) -> KubeApi:
        return self.cluster.api

    def image_for(self, repository: str, digest: str) -> str:
        """The image the nodes pull for a push (a loopback repository refused): what the switch
        patches in, and what `switch --dry-run` shows."""
        return self.cluster.image_for(repository, digest)

    # ---- verbs -------------------------------------------------------------------------------
    def up(self, version: str | None) -> dict[str, Any]:
        """The Deployment is created by `kubectl apply -k k8s/overlays/...`; `up` pins it to a
        pushed version (default: the newest push)."""
        if version is None:
            pushes = self.ctx.ledger.pushes()
            if not pushes:
                raise UsageError("no version has been pushed yet: run `orchestrator build` and `orchestrator push`")
            version = pushes[-1].version
        return self.switch(version)

    def switch(self, version: str, *, keep_previous: bool = False, wait_lock_s: float = 0.0) -> dict[str, Any]:
        # keep_previous: the previous ReplicaSet is always kept (scaled to 0) for undo.
        known_version(self.ctx, version)
        with target_lock(self.ctx.config.state_path, self.target, wait_lock_s):
            repair.close_interrupted(self.cluster)
            return self._switch(version)

    def _switch(self, version: str) -> dict[str, Any]:
        cluster = self.cluster
        d = self.api.read_deployment()
        live = cluster.live_of(d, self.api.replicasets(d))
        cluster.refuse_paused(d)
        variant, why = deployment_variant(self.spec.variant, d, self.spec.container)
        self.ctx.note(f"target {self.target} deploys the {variant} variant ({why})")
        push = self.ctx.ledger.latest_push(version, variant)
        command = f"orchestrator switch {version}"
        if push is not None and live.digest == push.digest:
            reason = (f"{version} is already live on {self.target} ({cluster.where}, revision {live.revision}); "
                      f"nothing to do")
            return self._noop("switch", version, live, push.digest, command, reason, to_version=version)
        state = kr.rollout_status(d)
        if not state.done and not state.failed:
            raise RolloutBusy(f"target {self.target}: a rollout of {cluster.where} is in progress "
                              f"({state.message.rstrip('.')}); refusing to start another: wait for it "
                              f"(`kubectl rollout status {cluster.where}`) or roll it back "
                              f"(`orchestrator rollback --target {self.target}`)")
        if state.failed:
            self.ctx.note(f"[yellow]note: the last rollout failed ({state.failed}); switching replaces it[/yellow]")
            # A known-failed template: no automatic undo may go back to it.
            cluster.mark_failed(kr.new_replicaset(d, self.api.replicasets(d)), state.failed)
        record = self._begin("switch", version, live, push.digest if push else None, command)
        # back_ok: the live revision was fully available, so it is the way back if this fails.
        sw = KubeSwitch(cluster, record, d, live=live, back_ok=state.done, version=version, command=command,
                        variant=variant)
        return switchflow.run(self.ctx, record, sw)

    def rollback(self, to_version: str | None = None, *, keep_previous: bool = False,
                 wait_lock_s: float = 0.0) -> dict[str, Any]:
        # keep_previous: every ReplicaSet is kept (scaled to 0); nothing to choose here.
        if to_version:
            known_version(self.ctx, to_version)
        with target_lock(self.ctx.config.state_path, self.target, wait_lock_s):
            repair.close_interrupted(self.cluster)
            return self._rollback(to_version)

    def _rollback(self, to_version: str | None) -> dict[str, Any]:
        cluster = self.cluster
        d = self.api.read_deployment()
        live = cluster.live_of(d)
        # kubectl refuses a paused Deployment too: the controller would not roll it.
        cluster.refuse_paused(d)
        rss = self.api.replicasets(d)
        live = cluster.live_of(d, rss)
        rs = self._rollback_target(d, rss, to_version)
        goal = cluster.describe_rs(rs)
        command = "orchestrator rollback" + (f" --to-version {to_version}" if to_version else "")
        if kr.equal_ignore_hash(rs["spec"]["template"], d["spec"]["template"]):
            reason = (f"{goal.label} is already live on {self.target} (revision {goal.revision} matches the "
                      f"current template); nothing to do")
            return self._noop("rollback", goal.label, live, goal.digest, command, reason, to_version=goal.version)
        record = self._begin("rollback", goal.label, live, goal.digest, command, to_revision=goal.revision)
        sw = KubeSwitch(cluster, record, d, live=live, back_ok=kr.rollout_status(d).done, version=goal.version,
                        command=command, rs=rs, digest=goal.digest, image=goal.image)
        return switchflow.run(self.ctx, record, sw)

    def _rollback_target(self, d: dict[str, Any], rss: list[dict[str, Any]], to_version: str | None) -> dict[str, Any]:
        """The ReplicaSet a rollback brings back: the newest earlier one not marked failed, or the
        newest such one running `to_version` (the live one itself: a no-op)."""
        cluster = self.cluster
        kept = ", ".join(f"{kr.revision(r)}={cluster.describe_rs(r).label}" + (" (failed)" if kr.is_failed(r) else "")
                         for r in sorted(rss, key=kr.revision)) or "none"
        current = kr.new_replicaset(d, rss)
        # Revisions whose rollout failed are kept (never deleted) but never a way back.
        usable = [r for r in rss if not kr.is_failed(r)
                  and (current is None or r["metadata"]["uid"] != current["metadata"]["uid"])]
        if to_version:
            runs = [r for r in usable if cluster.describe_rs(r).version == to_version]
            if not runs and current is not None and cluster.describe_rs(current).version == to_version:
                runs = [current]  # the live one: a no-op
            if not runs:
                raise UsageError(f"target {self.target}: no kept revision of {cluster.where} runs {to_version} "
                                 f"(revisions: {kept}); use `orchestrator switch {to_version}`")
            return max(runs, key=kr.revision)
        if not usable:
            raise UsageError(f"target {self.target}: nothing to roll back to: {cluster.where} has no earlier "
                             f"revision that did not fail (revisions: {kept})")
        return max(usable, key=kr.revision)

    # ---- the shared flow ---------------------------------------------------------------------
    def _begin(self, action: str, to_label: str, live: Revision, digest: str | None, command: str,
               **data: Any) -> SwitchRecord:
        return switchflow.begin(
            self.ctx, target=self.target, action=action, to_version=to_label, from_version=live.version or UNKNOWN,
            digest=digest, command=command,
            data={"kind": "kubernetes", "namespace": self.spec.namespace, "deployment": self.spec.deployment,
                  "from_revision": live.revision, "from_image": live.image, **data})

    def _noop(self, action: str, to_label: str, live: Revision, digest: str | None, command: str, reason: str,
              *, to_version: str | None) -> dict[str, Any]:
        record = self._begin(action, to_label, live, digest, command)
        self.ctx.ledger.finish_switch(record.id, "noop", reason)
        self.ctx.note(reason)
        return switchflow.result(outcome="noop", target=self.target, from_version=live.version, to_version=to_version,
                                 digest=live.digest if action == "switch" else digest, slot=str(live.revision),
                                 reason=reason, revision=live.revision)

    # ---- status, repair, history -------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Read-only: what the cluster runs, its kept revisions and drift (views.py)."""
        return views.status(self.cluster, self.kind)

    def repair(self, *, wait_lock_s: float = 0.0) -> dict[str, Any]:
        """Close switches a killed orchestrator left running, and bring the ledger's live record and
        the re-apply pin in line with the cluster (repair.py); then the status, with "repairs"."""
        with target_lock(self.ctx.config.state_path, self.target, wait_lock_s):
            closed, made = repair.repair(self.cluster)
        out = self.status()
        out["interrupted"] = closed
        out["repairs"] = made
        return out

    def history(self, limit: int | None = None) -> dict[str, Any]:
        return views.history(self.cluster, self.kind, limit)
