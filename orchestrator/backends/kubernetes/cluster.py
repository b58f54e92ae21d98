"""One target's Deployment as the verbs see it: what it runs, why its pods do not come, and the
few writes every verb shares (the switch patch, the failure mark, the re-apply pin).

The layer under the backend: API objects (dicts) and small dataclasses in and out. It reads the
ledger only to name an image's version; it never begins or finishes a switch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.backends.kubernetes import rollout as kr
from orchestrator.backends.kubernetes.api import KubeApi
from orchestrator.backends.kubernetes.errors import KubeConflict, RolloutBusy
from orchestrator.config import KubernetesTarget
from orchestrator.context import Context
from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.fsutil import atomic_write

STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
UNKNOWN = "unknown image"
PATCH_ATTEMPTS = 3  # a 409 (someone wrote the Deployment between our read and our patch): read again


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


class Cluster:
    """The target's namespace, Deployment and container, through one lazily built KubeApi."""

    def __init__(self, ctx: Context, target: str, spec: KubernetesTarget, api: KubeApi | None = None):
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

    # ---- reading -----------------------------------------------------------------------------
    def describe(self, template: dict[str, Any], rev: int) -> Revision:
        image = kr.container_image(template, self.spec.container)
        digest = kr.image_digest(image)
        version = self.ctx.ledger.version_for_digest(digest) if digest else None
        return Revision(image=image, digest=digest, version=version, annotated=kr.template_version(template),
                        revision=rev)

    def describe_rs(self, rs: dict[str, Any]) -> Revision:
        return self.describe(rs["spec"]["template"], kr.revision(rs))

    def live_of(self, d: dict[str, Any], rss: list[dict[str, Any]] | None = None) -> Revision:
        """What the Deployment runs. With its ReplicaSets, the revision is the new ReplicaSet's (the
        Deployment's annotation follows it a sync later)."""
        template = d["spec"]["template"]
        if kr.container_image(template, self.spec.container) is None:
            names = ", ".join(c.get("name", "?") for c in template.get("spec", {}).get("containers", []))
            raise UsageError(f"target {self.target}: {self.where} has no container {self.spec.container!r} "
                             f"(containers: {names}); set `container:` in the target")
        return self.describe(template, kr.current_revision(d, rss) if rss is not None else kr.revision(d))

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

    # ---- writing -----------------------------------------------------------------------------
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

    def undo_to(self, d: dict[str, Any], rs: dict[str, Any]) -> dict[str, Any]:
        """Send the JSON patch `kubectl rollout undo` sends, back to `rs`'s template."""
        return self.api.patch_deployment(kr.undo_patch(d, rs), JSON_PATCH, f"roll back {self.where}")

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

    @property
    def pin_path(self) -> Path:
        return self.ctx.config.state_path / "k8s" / self.target / "kustomization.yaml"

    def pin_text(self, d: dict[str, Any]) -> str | None:
        """<state>/k8s/<target>/kustomization.yaml's content for `d`: the target's overlay with what
        is live pinned; None (with a warning) when the overlay is not a directory."""
        overlay = self.ctx.config.path(self.spec.overlay)
        if not overlay.is_dir():
            self.ctx.note(f"[yellow]warning: target {self.target}: overlay {overlay} is not a directory; set "
                          f"`overlay:` to the manifests it was applied from (no pin written)[/yellow]")
            return None
        return kr.pinned_kustomization(overlay=os.path.relpath(overlay, self.pin_path.parent),
                                       namespace=self.spec.namespace, deployment=d, container=self.spec.container,
                                       target=self.target)

    def write_pin(self, d: dict[str, Any] | None = None) -> bool:
        """Write the re-apply pin for what is live (read now unless given); True if written."""
        if d is None:
            try:
                d = self.api.read_deployment()
            except OrchestratorError as e:
                self.ctx.note(f"[yellow]warning: could not read {self.where} to pin it for re-apply: {e}[/yellow]")
                return False
        self.pin_path.parent.mkdir(parents=True, exist_ok=True)
        text = self.pin_text(d)
        if text is None:
            return False
        atomic_write(self.pin_path, text)
        return True
