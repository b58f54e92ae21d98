"""One Kubernetes switch or rollback as a `switchflow.Switch`: the roles the shared flow runs.

    resolve  (switch only) the version's push, the registry tag check, the image the nodes pull
    start    step `patch`: the strategic merge patch of the image (switch), or step `undo`: the
             JSON patch `kubectl rollout undo` sends (rollback)
    ready    step `rollout`: wait as `kubectl rollout status` (wait.py)
    smoke, shift, confirm, watch: none; the Deployment's readiness probes and RollingUpdate do them
    finish   step `finish`: the new revision is live in the ledger; the re-apply pin is written
    revert   after a failed rollout: mark the failed revision, send the undo patch back to the
             revision that was live (or the newest not marked failed), wait for it

The flow (orchestrator/switchflow.py) records each step, marks the candidate's digest failed and
closes the record. Three outcomes are Kubernetes' own: a refusal before the patch changed nothing
and is raised as itself (its own exit code); an API that stopped answering during the rollout is
`unknown` (nothing undone, RolloutUnknown); an interrupt during the wait is recorded
`interrupted` at once.
"""

from __future__ import annotations

from typing import Any

from orchestrator import switchflow
from orchestrator.backends.kubernetes import rollout as kr
from orchestrator.backends.kubernetes.cluster import UNKNOWN, Cluster, Revision, short
from orchestrator.backends.kubernetes.errors import RolloutBusy, RolloutUnknown
from orchestrator.backends.kubernetes.wait import RolloutFailed, Unobservable, wait_rollout
from orchestrator.errors import OrchestratorError
from orchestrator.ledger import Switch as SwitchRecord
from orchestrator.resolve import resolve

# The way back gets at least a minute even where the budget is short: giving up on it leaves the
# operator with a half-rolled Deployment.
UNDO_MIN_WAIT_S = 60.0


class KubeSwitch(switchflow.Switch):
    """Shared by switch and rollback: `rs` (the ReplicaSet to bring back) makes it a rollback."""

    def __init__(self, cluster: Cluster, record: SwitchRecord, d: dict[str, Any], *, live: Revision,
                 back_ok: bool, version: str | None, command: str, variant: str | None = None,
                 rs: dict[str, Any] | None = None, digest: str | None = None, image: str | None = None):
        self.cluster, self.ctx, self.record, self.d = cluster, cluster.ctx, record, d
        self.target = cluster.target
        self.action = "rollback" if rs is not None else "switch"
        self.version, self.to_version = version, version or UNKNOWN
        self.live, self.back_ok, self.command, self.variant, self.rs = live, back_ok, command, variant, rs
        self.digest, self.image = digest, image
        self.step_names = {"start": "undo" if rs is not None else "patch", "ready": "rollout"}
        self.steps = switchflow.Steps(self.ctx, record)  # the revert's own steps (undo, undo-wait)
        self.patched: dict[str, Any] = {}  # the Deployment as the patch left it (start)
        self.final: dict[str, Any] = {}    # ... and as the finished rollout left it (ready)
        # Filled by a revert, for the failure's message.
        self.undo_failed = False
        self.goal: Revision | None = None
        self.goal_rev = live.revision
        self.now_rev: int | None = None
        self.failed_rev: int | None = None
        self.failed_kept = False  # the failed revision has a ReplicaSet (kept, marked failed)

    # ---- the roles ---------------------------------------------------------------------------
    def plan(self, role: str) -> tuple[str, dict[str, Any]] | None:
        if role == "resolve":
            return None if self.rs is not None else (f"{self.version} → digest, registry tag check", {})
        if role == "start":
            if self.rs is not None:
                goal = self.cluster.describe_rs(self.rs)
                return f"back to revision {goal.revision} ({goal.label}), as `kubectl rollout undo`", {}
            return f"{self.cluster.spec.container} ← {short(self.image)}", {"image": self.image}
        if role == "ready":
            limit = self.cluster.rollout_timeout(self.patched)
            return f"{self.cluster.where}: wait as `kubectl rollout status` (up to {limit:g}s)", {}
        return None  # smoke, shift, confirm, watch: the Deployment's probes and RollingUpdate

    def resolve(self) -> None:
        cand = resolve(self.ctx, self.to_version, variant=self.variant)
        self.version, self.digest = cand.version, cand.digest
        self.image = self.cluster.image_for(cand.image_ref.split("@", 1)[0], cand.digest)

    def start(self) -> None:
        if self.rs is not None:
            self.patched = self.cluster.undo_to(self.d, self.rs)
        else:
            assert self.image is not None and self.version is not None  # resolve ran
            self.patched = self.cluster.patch_switch(self.d, image=self.image, version=self.version,
                                                     command=self.command)

    def ready(self) -> None:
        try:
            self.final = wait_rollout(self.cluster, self.patched, self.cluster.rollout_timeout(self.patched))
        except Unobservable as e:
            raise Unobservable(f"the Kubernetes API stopped answering during the rollout ({e}); its outcome is "
                               f"unknown and nothing was undone: see `orchestrator status --target "
                               f"{self.target}` once the API answers") from None
        except KeyboardInterrupt:
            self.ctx.ledger.finish_switch(self.record.id, "interrupted", "interrupted while waiting; the rollout goes "
                                          "on in the cluster: see `orchestrator status`")
            raise

    def finish(self, steps: switchflow.Steps) -> dict[str, Any]:
        rev = kr.current_revision(self.final, self.cluster.api.replicasets(self.final))
        with steps.step("finish", f"revision {rev} is live", revision=rev), self.ctx.ledger.transaction() as db:
            if self.version and self.digest and self.image:
                self.ctx.ledger.set_live(self.target, version=self.version, digest=self.digest,
                                         image_ref=self.image, slot=str(rev), db=db)
            self.ctx.ledger.finish_switch(self.record.id, "succeeded", None, db=db)
        self.cluster.write_pin()
        self.ctx.note(f"[green]{self.to_version} is live on {self.target} ({self.cluster.where}, "
                      f"revision {rev})[/green]")
        return switchflow.result(outcome="succeeded", target=self.target, from_version=self.live.version,
                                 to_version=self.version, digest=self.digest, slot=str(rev), phases=steps.phases,
                                 revision=rev, image=self.image)

    # ---- failure -----------------------------------------------------------------------------
    def revert(self, error: Exception, at: str) -> switchflow.Reverted:
        if isinstance(error, Unobservable):
            why = switchflow.reason_of(error)
            return switchflow.Reverted(outcome="unknown", error=RolloutUnknown(
                f"{self.action} to {self.to_version} on {self.target}: outcome unknown: {why}"))
        if not isinstance(error, RolloutFailed):
            # Refused or failed before or at the patch: nothing changed in the cluster. The refusal
            # is raised as itself, with its own line and exit code.
            return switchflow.Reverted(outcome="failed", error=error)
        try:
            self.undo(switchflow.reason_of(error))
        except (RolloutFailed, OrchestratorError, kr.NoRevision, Unobservable) as e:
            self.undo_failed = True
            return switchflow.Reverted(outcome="failed",
                                       problem=f"the automatic undo failed too: {switchflow.reason_of(e)}")
        return switchflow.Reverted(outcome="reverted")

    def undo(self, reason: str) -> None:
        """Back to the last good revision, as `kubectl rollout undo`; the failed one is marked."""
        cluster, api = self.cluster, self.cluster.api
        failed: dict[str, Any] | None = None
        try:
            with self.steps.step("undo", "back to the last good revision, as `kubectl rollout undo`"):
                d = api.read_deployment()
                if (d.get("spec") or {}).get("paused"):
                    raise RolloutBusy(f"{cluster.where} was paused during the rollout; kubectl refuses to undo a "
                                      f"paused Deployment too: `kubectl rollout resume {cluster.where}`, then "
                                      f"`orchestrator rollback --target {self.target}`")
                rss = api.replicasets(d)
                failed = kr.new_replicaset(d, rss)
                # None: the controller never made a ReplicaSet for the new template (nothing to mark).
                self.failed_rev = kr.revision(failed) if failed else 0
                self.failed_kept = failed is not None
                if failed is not None:
                    failed["metadata"].setdefault("annotations", {})[kr.FAILED] = reason
                rs = kr.undo_target(rss, self.failed_rev, self.live.revision if self.back_ok else None)
                self.goal_rev = kr.revision(rs)
                self.goal = cluster.describe_rs(rs)
                patched = cluster.undo_to(d, rs)
                self.ctx.ledger.enter_step(self.record.id, "undo", revision=self.failed_rev,
                                           failed_revision=self.failed_rev, undo_from_revision=self.goal_rev)
            with self.steps.step("undo-wait", f"{cluster.where}: wait for revision {self.goal_rev}'s template"):
                final = wait_rollout(cluster, patched, max(cluster.rollout_timeout(patched), UNDO_MIN_WAIT_S))
                self.now_rev = kr.current_revision(final, api.replicasets(final))
                self.ctx.ledger.enter_step(self.record.id, "undo-wait", undo_revision=self.now_rev)
        finally:
            # Marked once it is an old ReplicaSet: while it was the new one, the controller copied
            # the Deployment's annotations onto it at every sync.
            cluster.mark_failed(failed, reason)
        self.cluster.write_pin()

    def candidate(self) -> tuple[str, str] | None:
        return (self.digest, self.version) if self.digest and self.version else None

    def candidates_fault(self, error: Exception) -> bool:
        return isinstance(error, RolloutFailed) and not self.undo_failed

    def record_reason(self, at: str, reason: str) -> str:
        return reason  # the step is in the record already (its `step`, its phases)

    def failure_text(self, outcome: str, at: str, reason: str) -> str:
        head = f"{self.action} to {self.to_version} on {self.target} failed: {reason}"
        if self.undo_failed:
            return (f"{head}. Roll back by hand: `kubectl rollout undo {self.cluster.where} "
                    f"--to-revision={self.goal_rev}`")
        if outcome == "reverted" and self.goal is not None:
            kept = f"; the failed revision {self.failed_rev} is kept, marked failed" if self.failed_kept else ""
            return (f"{head}; rolled back to {self.goal.label} (revision {self.goal_rev}'s template, now revision "
                    f"{self.now_rev}{kept}), as `kubectl rollout undo` would")
        return head
