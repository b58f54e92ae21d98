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
After either, <state>/k8s/<target>/kustomization.yaml pins what is live over the target's overlay,
so re-applying the manifests from there does not revert it.
status, history: read from the cluster (ReplicaSet revisions, change-cause, image digest), so
           they agree with `kubectl rollout history`; the ledger adds who/when/outcome.

Because every change is an ordinary Deployment revision, `kubectl rollout undo
deployment/aads-serving` is always a valid way back, with or without this tool.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from orchestrator.backends.kubernetes import rollout as kr
from orchestrator.backends.kubernetes.api import KubeApi, KubeConflict, KubeError
from orchestrator.config import KubernetesTarget
from orchestrator.context import Context
from orchestrator.errors import OrchestratorError, SwitchFailed, UsageError
from orchestrator.ledger import Switch
from orchestrator.lock import target_lock
from orchestrator.resolve import known_version, resolve
from orchestrator.switchflow import COUNTED, Steps, result
from orchestrator.variants import deployment_variant

STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
UNKNOWN = "unknown image"
UNDO_MIN_WAIT_S = 60.0
PATCH_ATTEMPTS = 3  # a 409 (someone wrote the Deployment between our read and our patch): read again
RESYNC_DELAYS_S = (0.5, 1.0, 2.0, 4.0)  # between reads while the API does not answer during a rollout


class RolloutBusy(OrchestratorError):
    """Another rollout of the Deployment has not finished."""

    exit_code = 3


class RolloutFailed(Exception):
    """The rollout cannot finish: deadline exceeded or our own timeout. The message says why."""


class RolloutUnknown(OrchestratorError):
    """The API stopped answering during a rollout: its outcome is unknown and nothing was undone."""


class _Unobservable(Exception):
    """wait_rollout could not read the Deployment until its time ran out (the API error inside)."""


@dataclass(frozen=True)
class Revision:
    """What one pod template runs: the image, its digest and the version the ledger knows it as."""

    image: str | None
    digest: str | None
    version: str | None        # from the ledger's pushes; None: an image the ledger does not know
    annotated: str | None      # the template's aads.version annotation (may be stale after a hand edit)
    revision: int

    @property
    def label(self) -> str:
        return self.version or UNKNOWN


def short(image: str | None) -> str:
    if image and "@sha256:" in image:
        repo, digest = image.split("@", 1)
        return f"{repo}@{digest[:19]}…"
    return image or "-"


class KubernetesBackend:
    kind = "kubernetes"

    def __init__(self, ctx: Context, target: str, spec: KubernetesTarget, *, api: KubeApi | None = None):
        self.ctx = ctx
        self.target = target
        self.spec = spec
        self._api = api

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            kubeconfig = str(self.ctx.config.path(self.spec.kubeconfig)) if self.spec.kubeconfig else None
            self._api = KubeApi(target=self.target, kubeconfig=kubeconfig, context=self.spec.context,
                                namespace=self.spec.namespace, deployment=self.spec.deployment)
        return self._api

    @property
    def where(self) -> str:
        return f"deployment/{self.spec.deployment} -n {self.spec.namespace}"

    # ---- reading the cluster -----------------------------------------------------------------
    def describe(self, template: dict[str, Any], rev: int) -> Revision:
        image = kr.container_image(template, self.spec.container)
        digest = kr.image_digest(image)
        version = self.ctx.ledger.version_for_digest(digest) if digest else None
        return Revision(image=image, digest=digest, version=version, annotated=kr.template_version(template),
                        revision=rev)

    def live_of(self, d: dict[str, Any], rss: list[dict[str, Any]] | None = None) -> Revision:
        """What the Deployment runs. With its ReplicaSets, the revision is the new ReplicaSet's (the
        Deployment's annotation follows it a sync later)."""
        template = d["spec"]["template"]
        if kr.container_image(template, self.spec.container) is None:
            names = ", ".join(c.get("name", "?") for c in template.get("spec", {}).get("containers", []))
            raise UsageError(f"target {self.target}: {self.where} has no container {self.spec.container!r} "
                             f"(containers: {names}); set `container:` in the target")
        return self.describe(template, kr.current_revision(d, rss) if rss is not None else kr.revision(d))

    def close_interrupted(self) -> None:
        """A switch still 'running' while we hold the lock was killed mid-way. Nothing to repair
        here: the cluster finishes (or times out) a rollout by itself and is what status reads."""
        for s in self.ctx.ledger.unfinished_switches(self.target):
            why = (f"the orchestrator stopped during step {s.step or 'start'}; the cluster carried on "
                   f"(see `orchestrator status`)")
            self.ctx.ledger.finish_switch(s.id, "interrupted", why)
            self.ctx.note(f"[yellow]note: switch #{s.id} ({s.action} → {s.to_version}) was interrupted: {why}[/yellow]")

    def refuse_paused(self, d: dict[str, Any]) -> None:
        if (d.get("spec") or {}).get("paused"):
            raise RolloutBusy(f"target {self.target}: {self.where} is paused; resume it first with "
                              f"`kubectl rollout resume {self.where}`")

    def pod_problems(self, d: dict[str, Any]) -> str:
        """Why the pods of the newest revision are not ready, from their status (best effort)."""
        try:
            rev = kr.revision(d)
            rs = next((r for r in self.api.replicasets(d) if kr.revision(r) == rev), None)
            if rs is None:
                return ""
            pods = self.api.pods(rs["spec"]["selector"].get("matchLabels") or {})
        except OrchestratorError:
            return ""
        problems = []
        for p in pods:
            st = p.get("status") or {}
            ready = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
            if ready.get("status") == "True":
                continue
            waiting = [c["state"]["waiting"].get("reason") for c in st.get("containerStatuses") or []
                       if (c.get("state") or {}).get("waiting")]
            scheduled = next((c for c in st.get("conditions") or [] if c.get("type") == "PodScheduled"), {})
            if scheduled.get("status") == "False":  # e.g. Unschedulable: 0/3 nodes ... Insufficient nvidia.com/gpu
                waiting.insert(0, f"{scheduled.get('reason', 'not scheduled')} ({scheduled.get('message', '')})")
            why = ", ".join(w for w in waiting if w) or ready.get("reason") or st.get("phase") or "not ready"
            problems.append(f"{p['metadata']['name']} {why}")
        if not problems:
            return ""
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        return "; pods not ready: " + ", ".join(problems[:3]) + more

    def new_rs_name(self, d: dict[str, Any]) -> str | None:
        rs = kr.new_replicaset(d, self.api.replicasets(d))
        return rs["metadata"]["name"] if rs else None

    def why_stuck(self, d: dict[str, Any]) -> str:
        """What the cluster says about pods that do not come: refused by admission (quota, Pod
        Security: ReplicaFailure on the Deployment), unschedulable, or not ready."""
        failure = kr.replica_failure(d)
        return (f"; {failure}" if failure else "") + self.pod_problems(d)

    def wait_rollout(self, d: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Wait as `kubectl rollout status` does: watch the Deployment until the rollout is done,
        the controller reports ProgressDeadlineExceeded for this rollout's ReplicaSet, or
        `timeout_s` passes. API errors are retried until then; if the Deployment could not be
        read at all by then, _Unobservable."""
        end = time.monotonic() + timeout_s
        last = ""
        new_rs: str | None = None

        def verdict(obj: dict[str, Any]) -> bool:
            nonlocal last, new_rs
            state = kr.rollout_status(obj)
            if state.failed:  # only a deadline of this rollout's own ReplicaSet counts
                new_rs = self.new_rs_name(obj)
                state = kr.rollout_status(obj, new_rs)
            if state.message != last:
                last = state.message
                s = obj.get("status") or {}
                self.ctx.stderr.print(f"  {state.message} [dim](updated {s.get('updatedReplicas', 0)}, ready "
                                      f"{s.get('readyReplicas', 0)}, available {s.get('availableReplicas', 0)} of "
                                      f"{obj['spec'].get('replicas', 1)})[/dim]")
            if state.done:
                return True
            if state.failed:
                raise RolloutFailed(state.failed + self.why_stuck(obj))
            if time.monotonic() >= end:
                raise RolloutFailed(f"the rollout did not finish within {timeout_s:g}s ({state.message.rstrip('.')})"
                                    + self.why_stuck(obj))
            return False

        errors = 0
        fresh = True  # False while the last read failed: no verdict on an old copy
        with self.ctx.stderr.status(f"rollout of {self.where}"):
            while True:
                try:
                    if fresh and verdict(d):
                        return d
                    rv = d["metadata"]["resourceVersion"]
                    for obj in self.api.watch_deployment(rv, min(30.0, max(end - time.monotonic(), 1.0))):
                        d, fresh, errors = obj, True, 0
                        if verdict(d):
                            return d
                    d = self.api.read_deployment()  # stream ended (its timeout, or 410 Gone): resync
                    fresh = True
                except KubeError as e:
                    fresh = False
                    # The API did not answer (5xx, a dropped watch, no connection): no verdict on the
                    # rollout. Read again after a pause, until the rollout's own time is up.
                    delay = RESYNC_DELAYS_S[min(errors, len(RESYNC_DELAYS_S) - 1)]
                    errors += 1
                    if not e.transient or time.monotonic() + delay >= end:
                        raise _Unobservable(str(e)) from None
                    self.ctx.stderr.print(f"  [yellow]the API did not answer ({e}); reading again in "
                                          f"{delay:g}s[/yellow]")
                    time.sleep(delay)
                    try:
                        d, fresh = self.api.read_deployment(), True
                    except KubeError:
                        continue

    def rollout_timeout(self, d: dict[str, Any]) -> float:
        return kr.switch_timeout(int(d["spec"].get("replicas", 1)), self.spec.pod_budget_s, self.spec.timeout_s)

    def image_for(self, cand_repository: str, digest: str) -> str:
        """What the nodes pull: the target's repository (or the pushed one) by digest; never loopback."""
        repo = self.spec.repository or cand_repository
        if kr.is_loopback(repo):
            where = "the target's `repository:`" if self.spec.repository else "the repository it was pushed to"
            raise UsageError(f"target {self.target}: {where} is {repo}, a loopback address the cluster's nodes "
                             f"cannot pull from; set `repository:` in target {self.target} to the name the nodes "
                             f"pull the same registry by (e.g. registry.example.com/aads-ulora), with "
                             f"`image_pull_secret:`")
        return f"{repo}@{digest}"

    def write_pin(self) -> None:
        """<state>/k8s/<target>/kustomization.yaml: the target's overlay with what is live pinned."""
        try:
            d = self.api.read_deployment()
        except OrchestratorError as e:
            self.ctx.note(f"[yellow]warning: could not read {self.where} to pin it for re-apply: {e}[/yellow]")
            return
        pin_dir = self.pin_dir
        pin_dir.mkdir(parents=True, exist_ok=True)
        overlay = self.ctx.config.path(self.spec.overlay)
        if not overlay.is_dir():
            self.ctx.note(f"[yellow]warning: target {self.target}: overlay {overlay} is not a directory; set "
                          f"`overlay:` to the manifests it was applied from (no pin written)[/yellow]")
            return
        text = kr.pinned_kustomization(overlay=os.path.relpath(overlay, pin_dir), namespace=self.spec.namespace,
                                       deployment=d, container=self.spec.container, target=self.target)
        tmp = pin_dir / "kustomization.yaml.tmp"
        tmp.write_text(text)
        tmp.replace(pin_dir / "kustomization.yaml")

    @property
    def pin_dir(self):
        return self.ctx.config.state_path / "k8s" / self.target

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
            self.close_interrupted()
            return self._switch(version)

    def _switch(self, version: str) -> dict[str, Any]:
        d = self.api.read_deployment()
        live = self.live_of(d, self.api.replicasets(d))
        self.refuse_paused(d)
        variant, why = deployment_variant(self.spec.variant, d, self.spec.container)
        self.ctx.note(f"target {self.target} deploys the {variant} variant ({why})")
        push = self.ctx.ledger.latest_push(version, variant)
        command = f"orchestrator switch {version}"
        if push is not None and live.digest == push.digest:
            reason = f"{version} is already live on {self.target} ({self.where}, revision {live.revision}); nothing to do"
            sw = self.begin("switch", version, live, push.digest, command)
            self.ctx.ledger.finish_switch(sw.id, "noop", reason)
            self.ctx.note(reason)
            return result(outcome="noop", target=self.target, from_version=live.version, to_version=version,
                          digest=live.digest, slot=str(live.revision), reason=reason, revision=live.revision)
        state = kr.rollout_status(d)
        if not state.done and not state.failed:
            raise RolloutBusy(f"target {self.target}: a rollout of {self.where} is in progress ({state.message.rstrip('.')}); "
                              f"refusing to start another: wait for it (`kubectl rollout status {self.where}`) "
                              f"or roll it back (`orchestrator rollback --target {self.target}`)")
        if state.failed:
            self.ctx.note(f"[yellow]note: the last rollout failed ({state.failed}); switching replaces it[/yellow]")
            # A known-failed template: no automatic undo may go back to it.
            self.mark_failed(kr.new_replicaset(d, self.api.replicasets(d)), state.failed)

        sw = self.begin("switch", version, live, push.digest if push else None, command)
        steps = Steps(self.ctx, sw)
        back_ok = state.done  # the live revision was fully available: the way back if this fails
        try:
            with steps.step("resolve", f"{version} → digest, registry tag check"):
                cand = resolve(self.ctx, version, variant=variant)
                image = self.image_for(cand.image_ref.split("@", 1)[0], cand.digest)
            with steps.step("patch", f"{self.spec.container} ← {short(image)}", image=image):
                patched = self.patch_switch(d, image=image, version=version, command=command)
        except BaseException as e:
            # Nothing changed in the cluster: the patch was refused or never sent.
            self.ctx.ledger.finish_switch(sw.id, "failed", _reason(e))
            raise
        return self._roll(sw, steps, patched, to=cand.version, digest=cand.digest, image=image,
                          back_to=live, back_ok=back_ok)

    def patch_switch(self, d: dict[str, Any], *, image: str, version: str, command: str) -> dict[str, Any]:
        """The switch's conditional patch. On 409 (the Deployment changed since it was read) read
        it again and, if it still runs what we meant to replace and no rollout began, patch again."""
        live = self.live_of(d)
        for attempt in range(1, PATCH_ATTEMPTS + 1):
            body = kr.switch_patch(container=self.spec.container, image=image, version=version,
                                   change_cause=command, resource_version=d["metadata"]["resourceVersion"],
                                   pull_secret=self.spec.image_pull_secret)
            try:
                return self.api.patch_deployment(body, STRATEGIC, f"patch {self.where}")
            except KubeConflict:
                if attempt == PATCH_ATTEMPTS:
                    raise
                d = self.api.read_deployment()
                self.refuse_paused(d)
                if self.live_of(d).image != live.image:
                    raise RolloutBusy(f"target {self.target}: {self.where} changed while we patched it (it now "
                                      f"runs {short(self.live_of(d).image)}); nothing was changed: check "
                                      f"`orchestrator status` and try again") from None
                time.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    def rollback(self, to_version: str | None = None, *, wait_lock_s: float = 0.0) -> dict[str, Any]:
        if to_version:
            known_version(self.ctx, to_version)
        with target_lock(self.ctx.config.state_path, self.target, wait_lock_s):
            self.close_interrupted()
            return self._rollback(to_version)

    def _rollback(self, to_version: str | None) -> dict[str, Any]:
        d = self.api.read_deployment()
        live = self.live_of(d)
        # kubectl refuses a paused Deployment too: the controller would not roll it.
        self.refuse_paused(d)
        rss = self.api.replicasets(d)
        live = self.live_of(d, rss)
        kept = ", ".join(f"{kr.revision(r)}={self.describe(r['spec']['template'], kr.revision(r)).label}"
                         + (" (failed)" if kr.is_failed(r) else "") for r in sorted(rss, key=kr.revision)) or "none"
        current = kr.new_replicaset(d, rss)
        # Revisions whose rollout failed are kept (never deleted) but never a way back.
        usable = [r for r in rss if not kr.is_failed(r)
                  and (current is None or r["metadata"]["uid"] != current["metadata"]["uid"])]
        if to_version:
            runs = [r for r in usable if self.describe(r["spec"]["template"], kr.revision(r)).version == to_version]
            if not runs and current is not None and \
                    self.describe(current["spec"]["template"], kr.revision(current)).version == to_version:
                runs = [current]  # the live one: a no-op below
            if not runs:
                raise UsageError(f"target {self.target}: no kept revision of {self.where} runs {to_version} "
                                 f"(revisions: {kept}); use `orchestrator switch {to_version}`")
            rs = max(runs, key=kr.revision)
        else:
            if not usable:
                raise UsageError(f"target {self.target}: nothing to roll back to: {self.where} has no earlier "
                                 f"revision that did not fail (revisions: {kept})")
            rs = max(usable, key=kr.revision)
        goal = self.describe(rs["spec"]["template"], kr.revision(rs))
        command = "orchestrator rollback" + (f" --to-version {to_version}" if to_version else "")
        if kr.equal_ignore_hash(rs["spec"]["template"], d["spec"]["template"]):
            reason = (f"{goal.label} is already live on {self.target} (revision {goal.revision} matches the "
                      f"current template); nothing to do")
            sw = self.begin("rollback", goal.label, live, goal.digest, command)
            self.ctx.ledger.finish_switch(sw.id, "noop", reason)
            self.ctx.note(reason)
            return result(outcome="noop", target=self.target, from_version=live.version, to_version=goal.version,
                          digest=goal.digest, slot=str(live.revision), reason=reason, revision=live.revision)
        sw = self.begin("rollback", goal.label, live, goal.digest, command, to_revision=goal.revision)
        steps = Steps(self.ctx, sw)
        try:
            with steps.step("undo", f"back to revision {goal.revision} ({goal.label}), as `kubectl rollout undo`"):
                patched = self.api.patch_deployment(kr.undo_patch(d, rs), JSON_PATCH, f"roll back {self.where}")
        except BaseException as e:
            self.ctx.ledger.finish_switch(sw.id, "failed", _reason(e))
            raise
        state = kr.rollout_status(d)
        return self._roll(sw, steps, patched, to=goal.version, digest=goal.digest, image=goal.image, back_to=live,
                          back_ok=state.done)

    # ---- the shared tail: wait, then finish or undo ------------------------------------------
    def begin(self, action: str, to_label: str, live: Revision, digest: str | None, command: str,
              **data: Any) -> Switch:
        return self.ctx.ledger.begin_switch(
            target=self.target, action=action, to_version=to_label, from_version=live.version or UNKNOWN,
            digest=digest, command=command,
            data={"kind": "kubernetes", "namespace": self.spec.namespace, "deployment": self.spec.deployment,
                  "from_revision": live.revision, "from_image": live.image, **data})

    def _roll(self, sw: Switch, steps: Steps, patched: dict[str, Any], *, to: str | None, digest: str | None,
              image: str | None, back_to: Revision, back_ok: bool) -> dict[str, Any]:
        timeout_s = self.rollout_timeout(patched)
        try:
            with steps.step("rollout", f"{self.where}: wait as `kubectl rollout status` (up to {timeout_s:g}s)"):
                final = self.wait_rollout(patched, timeout_s)
        except RolloutFailed as e:
            return self._undo_after_failure(sw, steps, _reason(e), to=to, digest=digest, back_to=back_to,
                                            back_ok=back_ok)
        except _Unobservable as e:
            why = (f"the Kubernetes API stopped answering during the rollout ({e}); its outcome is unknown and "
                   f"nothing was undone: see `orchestrator status --target {self.target}` once the API answers")
            self.ctx.ledger.finish_switch(sw.id, "unknown", why)
            raise RolloutUnknown(f"{sw.action} to {to or UNKNOWN} on {self.target}: outcome unknown: {why}") from None
        except KeyboardInterrupt:
            self.ctx.ledger.finish_switch(sw.id, "interrupted", "interrupted while waiting; the rollout goes on in "
                                                                "the cluster: see `orchestrator status`")
            raise
        rev = kr.current_revision(final, self.api.replicasets(final))
        with steps.step("finish", f"revision {rev} is live", revision=rev):
            with self.ctx.ledger.transaction() as db:
                if to and digest and image:
                    self.ctx.ledger.set_live(self.target, version=to, digest=digest, image_ref=image, slot=str(rev), db=db)
                self.ctx.ledger.finish_switch(sw.id, "succeeded", None, db=db)
        self.write_pin()
        self.ctx.note(f"[green]{to or UNKNOWN} is live on {self.target} ({self.where}, revision {rev})[/green]")
        return result(outcome="succeeded", target=self.target, from_version=back_to.version, to_version=to,
                      digest=digest, slot=str(rev), phases=steps.phases, revision=rev, image=image)

    def _undo_after_failure(self, sw: Switch, steps: Steps, reason: str, *, to: str | None, digest: str | None,
                            back_to: Revision, back_ok: bool) -> dict[str, Any]:
        self.ctx.note(f"[red]✗ {sw.action} to {to or UNKNOWN} failed: {reason}[/red]")
        goal_rev = back_to.revision
        failed: dict[str, Any] | None = None
        try:
            with steps.step("undo", "back to the last good revision, as `kubectl rollout undo`"):
                d = self.api.read_deployment()
                if (d.get("spec") or {}).get("paused"):
                    raise RolloutBusy(f"{self.where} was paused during the rollout; kubectl refuses to undo a "
                                      f"paused Deployment too: `kubectl rollout resume {self.where}`, then "
                                      f"`orchestrator rollback --target {self.target}`")
                rss = self.api.replicasets(d)
                failed = kr.new_replicaset(d, rss)
                # None: the controller never made a ReplicaSet for the new template (nothing to mark).
                failed_rev = kr.revision(failed) if failed else 0
                if failed is not None:
                    failed["metadata"].setdefault("annotations", {})[kr.FAILED] = reason
                rs = kr.undo_target(rss, failed_rev, back_to.revision if back_ok else None)
                goal_rev = kr.revision(rs)
                goal = self.describe(rs["spec"]["template"], goal_rev)
                patched = self.api.patch_deployment(kr.undo_patch(d, rs), JSON_PATCH, f"roll back {self.where}")
                self.ctx.ledger.enter_step(sw.id, "undo", revision=failed_rev, failed_revision=failed_rev,
                                           undo_from_revision=goal_rev)
            with steps.step("undo-wait", f"{self.where}: wait for revision {goal_rev}'s template"):
                # The way back gets at least a minute even where the budget is short: giving up on
                # it leaves the operator with a half-rolled Deployment.
                final = self.wait_rollout(patched, max(self.rollout_timeout(patched), UNDO_MIN_WAIT_S))
                now_rev = kr.current_revision(final, self.api.replicasets(final))
                self.ctx.ledger.enter_step(sw.id, "undo-wait", undo_revision=now_rev)
            # Marked once it is an old ReplicaSet: while it was the new one, the controller copied
            # the Deployment's annotations onto it at every sync.
            self.mark_failed(failed, reason)
        except (RolloutFailed, OrchestratorError, kr.NoRevision, _Unobservable) as e:
            self.mark_failed(failed, reason)
            why = f"{reason}; the automatic undo failed too: {_reason(e)}"
            self.ctx.ledger.finish_switch(sw.id, "failed", why)
            raise SwitchFailed(f"{sw.action} to {to or UNKNOWN} on {self.target} failed: {why}. Roll back by hand: "
                               f"`kubectl rollout undo {self.where} --to-revision={goal_rev}`") from None
        if digest and to:
            self.ctx.ledger.mark_failed_digest(digest=digest, version=to, target=self.target, reason=reason)
        self.ctx.ledger.finish_switch(sw.id, "reverted", reason)
        self.write_pin()
        kept = f"; the failed revision {failed_rev} is kept, marked failed" if failed is not None else ""
        raise SwitchFailed(f"{sw.action} to {to or UNKNOWN} on {self.target} failed: {reason}; rolled back to "
                           f"{goal.label} (revision {goal_rev}'s template, now revision {now_rev}{kept}), as "
                           f"`kubectl rollout undo` would")

    def mark_failed(self, rs: dict[str, Any] | None, reason: str) -> None:
        """Annotate a ReplicaSet whose rollout failed (kept, never deleted); best effort."""
        if rs is None:
            return
        try:
            self.api.patch_replicaset(rs["metadata"]["name"],
                                      kr.failed_mark(reason, kr.annotations(rs).get(kr.CHANGE_CAUSE)))
        except OrchestratorError as e:
            self.ctx.note(f"[yellow]warning: could not mark the failed revision {kr.revision(rs)} ({e}); "
                          f"`orchestrator rollback` may pick it: use --to-version[/yellow]")

    # ---- status and history ------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        d = self.api.read_deployment()
        live = self.live_of(d)
        rss = self.api.replicasets(d)
        live = self.live_of(d, rss)
        state = kr.rollout_status(d)
        s = d.get("status") or {}
        replicas = d["spec"].get("replicas", 1)
        health = ("failed" if state.failed else "progressing" if not state.done
                  else "ready" if s.get("availableReplicas", 0) >= replicas else "degraded")
        done = kr.condition(d, "Progressing") or {}
        current = next((r for r in rss if kr.revision(r) == live.revision), None)
        since = (done.get("lastUpdateTime") if done.get("reason") == "NewReplicaSetAvailable" else None) or (
            current["metadata"].get("creationTimestamp") if current else None)
        drift: list[str] = []
        if live.version is None:
            drift.append(f"{UNKNOWN}: {live.image} is not an image the ledger recorded a push for (edited by hand?); "
                         f"`orchestrator switch VERSION` replaces it")
        elif live.annotated and live.annotated != live.version:
            drift.append(f"the pod template says {kr.VERSION}={live.annotated} but its image is {live.version}'s")
        recorded = self.ctx.ledger.live(self.target)
        if recorded is not None and recorded.digest != live.digest:
            drift.append(f"the ledger last recorded {recorded.version} live (revision {recorded.slot}); the cluster "
                         f"runs {live.label} (revision {live.revision}): changed outside the orchestrator "
                         f"(e.g. `kubectl rollout undo`)")
        if not state.done:
            drift.append(state.failed or state.message)
        kept = []  # one row per kept revision, newest first (the "slots" of this backend)
        for rs in sorted(rss, key=kr.revision, reverse=True):
            info = self.describe(rs["spec"]["template"], kr.revision(rs))
            rst = rs.get("status") or {}
            kept.append({"revision": info.revision, "state": "live" if info.revision == live.revision else
                         ("scaling down" if rst.get("replicas") else
                          "failed, kept (0 pods)" if kr.is_failed(rs) else "kept (0 pods)"),
                         "failed": kr.annotations(rs).get(kr.FAILED),
                         "health": f"{rst.get('readyReplicas', 0)}/{rs['spec'].get('replicas', 0)} ready",
                         "version": info.label, "image": info.image})
        previous = next((k for k in kept if k["revision"] < live.revision and not k["failed"]), None)
        return {
            "target": self.target, "kind": self.kind, "namespace": self.spec.namespace,
            "deployment": self.spec.deployment, "server": self.api.server,
            "live": {"version": live.label, "digest": live.digest, "image": live.image, "revision": live.revision,
                     "variant": self.ctx.ledger.variant_of_digest(live.digest),
                     "slot": f"revision {live.revision}", "since": since, "health": health,
                     "annotated_version": live.annotated},
            "previous": previous and {"version": previous["version"], "slot": f"revision {previous['revision']}",
                                      "revision": previous["revision"]},
            "slots": kept,
            "replicas": {"desired": replicas, "updated": s.get("updatedReplicas", 0), "ready": s.get("readyReplicas", 0),
                         "available": s.get("availableReplicas", 0), "total": s.get("replicas", 0)},
            "rollout": state.message,
            "drift": drift,
        }

    def history(self, limit: int | None = None) -> dict[str, Any]:
        """One entry per kept revision (the rows of `kubectl rollout history`), oldest first,
        joined with the ledger's record of the switch that made it, where there is one."""
        d = self.api.read_deployment()
        rss = sorted(self.api.replicasets(d), key=kr.revision)
        switches = self.ctx.ledger.history(self.target)
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
            info = self.describe(rs["spec"]["template"], rev)
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
            e["variant"] = self.ctx.ledger.variant_of_digest((e.get("image") or "").rpartition("@")[2] or None)
        if limit:
            entries = entries[-limit:]
        counted = [COUNTED[s.outcome] for s in switches if s.outcome in COUNTED]
        return {"target": self.target, "kind": self.kind, "entries": entries,
                "success_rate": round(sum(counted) / len(counted), 4) if counted else None,
                "counted": len(counted), "succeeded": sum(counted)}


def _reason(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    return str(e) or type(e).__name__
