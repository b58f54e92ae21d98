"""`orchestrator switch VERSION --dry-run`: what the switch would do, doing none of it.

Reads only: the ledger (live version, recorded push), the registry (the tag must still point at
the recorded digest, as the real switch checks) and, on Kubernetes, the Deployment. It starts
nothing, takes no lock (it only says whether one is held) and writes no ledger record.
"""

from __future__ import annotations

from typing import Any

from orchestrator import lock
from orchestrator.config import ComposeTarget, KubernetesTarget
from orchestrator.context import Context
from orchestrator.errors import UsageError
from orchestrator.resolve import known_version, resolve
from orchestrator.results import SwitchPlan
from orchestrator.variants import deployment_variant

REVISION_ANNOTATION = "deployment.kubernetes.io/revision"


def _lock_note(ctx: Context, target: str) -> list[str]:
    holder = lock.holder(ctx.config.state_path, target)
    if holder is None:
        return []
    note = f"the target's lock is held by {holder} now: the switch would refuse (exit 3) unless --lock-timeout lets it wait"
    return [note]


def compose_plan(ctx: Context, target: str, spec: ComposeTarget, version: str, *, variant: str, why: str,
                 keep_previous: bool, canary: Any = None) -> SwitchPlan:
    """The plan on a compose target; `variant` is the one the backend deploys (GPU seen or not)."""
    known_version(ctx, version)
    live = ctx.ledger.live(target)
    notes = [f"target {target} deploys the {variant} variant ({why})", *_lock_note(ctx, target)]
    from_slot = (live.slot or "blue") if live else None
    slot = "green" if from_slot == "blue" else "blue"
    push = ctx.ledger.latest_push(version, variant)
    if live is not None and version == live.version and (push is None or push.digest == live.digest):
        return SwitchPlan(action="switch", target=target, kind="compose", from_version=live.version,
                          to_version=version, variant=variant, digest=live.digest, image=live.image_ref,
                          slot=live.slot, from_slot=live.slot, noop=True,
                          notes=[*notes, f"{version} is already live (slot {live.slot}): the switch does nothing"])
    if live is None:  # as the switch itself refuses
        raise UsageError(f"nothing is live on target {target} yet: run `orchestrator up VERSION` first")
    d = resolve(ctx, version, variant=variant)
    moves = ["flip"] if canary is None else canary.step_names()
    steps = ["resolve", "start", "ready", "smoke", *moves, "confirm"]
    steps += ["watch"] if spec.watch_s > 0 else []
    steps += ["drain"] + ([] if keep_previous else ["stop"]) + ["finish"]
    if canary is not None:
        notes.append(f"{canary.describe()}: each step's analysis must pass (thresholds {canary.thresholds})")
    if keep_previous:
        notes.append(f"--keep-previous: {from_slot} keeps running after the switch (a rollback is then a flip)")
    return SwitchPlan(action="switch", target=target, kind="compose", from_version=live.version,
                      to_version=version, variant=d.variant, digest=d.digest, image=d.image_ref, slot=slot,
                      from_slot=from_slot, steps=steps, notes=notes)


def kubernetes_plan(ctx: Context, target: str, spec: KubernetesTarget, version: str, *,
                    deployment: dict[str, Any], image_for) -> SwitchPlan:
    """The plan on a Kubernetes target: `deployment` as read from the API, `image_for(repo, digest)`
    the backend's mapping to the image the nodes pull (it refuses a loopback repository)."""
    known_version(ctx, version)
    variant, why = deployment_variant(spec.variant, deployment, spec.container)
    notes = [f"target {target} deploys the {variant} variant ({why})", *_lock_note(ctx, target)]
    meta = deployment.get("metadata") or {}
    revision = int((meta.get("annotations") or {}).get(REVISION_ANNOTATION) or 0) or None
    containers = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    running = next((c.get("image") for c in containers if c.get("name") == spec.container), None)
    live = ctx.ledger.live(target)
    d = resolve(ctx, version, variant=variant)
    image = image_for(d.image_ref.split("@", 1)[0], d.digest)
    noop = running is not None and running.endswith("@" + d.digest)
    if (deployment.get("spec") or {}).get("paused"):
        notes.append(f"deployment/{spec.deployment} is paused: the switch would refuse (exit 3)")
    if noop:
        notes.append(f"{version} is already live (revision {revision}): the switch does nothing")
    return SwitchPlan(action="switch", target=target, kind="kubernetes", from_version=live.version if live else None,
                      to_version=version, variant=d.variant, digest=d.digest, image=image, revision=revision,
                      noop=noop, steps=[] if noop else ["resolve", "patch", "rollout", "finish"], notes=notes)
