"""The compose backend: blue/green slots behind an HAProxy edge on one Docker host.

The upper of two layers: it keeps the ledger (what is live, what every switch did), takes the
target lock and runs the shared switch flow (orchestrator/switchflow.py) with a ComposeSwitch
(switch.py) on the stack (stack.py: env file, slots, edge, compose CLI). Crash repair and drift
live in repair.py, the candidate checks in checks.py, the GPU room check in gpu_room.py.
"""

from __future__ import annotations

from typing import Any

from orchestrator import switchflow
from orchestrator.backends.compose import repair as repairs
from orchestrator.backends.compose import canary_shift
from orchestrator.backends.compose.canary_shift import CanaryPlan
from orchestrator.backends.compose.checks import Candidate, Checks
from orchestrator.backends.compose.haproxy import EdgeError
from orchestrator.backends.compose.stack import SLOTS, ComposeStack
from orchestrator.backends.compose.switch import ComposeSwitch, FirstUp
from orchestrator.canary.analysis import Thresholds
from orchestrator.config import ComposeTarget
from orchestrator.context import Context
from orchestrator.errors import RegistryError, TamperError, UsageError
from orchestrator.ledger import Live, Switch
from orchestrator.lock import is_held, target_lock
from orchestrator.resolve import Deployable, known_version, resolve, valid_name
from orchestrator.switchflow import result


class ComposeBackend:
    def __init__(self, ctx: Context, target: str, spec: ComposeTarget):
        self.ctx = ctx
        self.target = target
        self.spec = spec
        self.stack = ComposeStack(ctx.config, target, spec, ctx.note)
        self.checks = Checks(self.stack)

    @property
    def edge_url(self) -> str:
        return self.stack.edge_url

    @property
    def variant(self) -> str:
        return self.stack.variant

    def _lock(self, wait_lock_s: float = 0.0):
        return target_lock(self.ctx.config.state_path, self.target, wait_lock_s)

    # -- commands ---------------------------------------------------------------------------------
    def up(self, version: str | None) -> dict[str, Any]:
        with self._lock():
            interrupted = repairs.repair_unfinished(self)
            live = self.ctx.ledger.live(self.target)
            if live is not None:
                if version and version != live.version:
                    self.ctx.note(f"{live.version} is live on {self.target}: switching to {version}")
                    return {**self._switch_locked(version, keep_previous=False, action="switch"),
                            "interrupted": interrupted}
                repaired = self.reconcile(live)
                return result(outcome="noop", target=self.target, from_version=live.version,
                              to_version=live.version, digest=live.digest, slot=live.slot,
                              reason=f"{live.version} is already live" + (f"; repaired: {'; '.join(repaired)}"
                                                                          if repaired else ""),
                              interrupted=interrupted, edge=self.edge_url)
            version = version or self.newest_pushed()
            valid_name(version)
            record = self._begin("up", version, None, data={"candidate_slot": "blue", "live_slot": None})
            return {**switchflow.run(self.ctx, record, FirstUp(self, version)), "interrupted": interrupted}

    def newest_pushed(self) -> str:
        variant = self.variant
        pushes = [p for p in self.ctx.ledger.pushes() if p.variant == variant]
        if not pushes:
            flag = f" --variant {variant}"
            raise UsageError(f"no version has a pushed {variant} image yet: run `orchestrator build VERSION{flag}` "
                             f"and `orchestrator push VERSION{flag}`")
        return pushes[-1].version

    def switch(self, version: str, *, keep_previous: bool = False, wait_lock_s: float = 0.0,
               canary: list[int] | None = None, step_s: float | None = None) -> dict[str, Any]:
        """`canary`/`step_s` override the target's canary steps; none anywhere: the all-at-once flip."""
        valid_name(version)
        plan = self.canary_plan(canary, step_s)
        with self._lock(wait_lock_s):
            interrupted = repairs.repair_unfinished(self)
            return {**self._switch_locked(version, keep_previous=keep_previous, action="switch", canary=plan),
                    "interrupted": interrupted}

    def canary_plan(self, canary: list[int] | None = None, step_s: float | None = None) -> CanaryPlan | None:
        """The canary steps of a switch: the command's, else the target's (None: no canary)."""
        shares = canary or self.spec.canary
        if not shares:
            return None
        return CanaryPlan(shares=list(shares), step_s=step_s or self.spec.canary_step_s,
                          thresholds=Thresholds.from_dict(self.spec.canary_thresholds),
                          prometheus_url=self.spec.analysis_url)

    def rollback(self, to_version: str | None = None, *, keep_previous: bool = False,
                 wait_lock_s: float = 0.0) -> dict[str, Any]:
        if to_version:
            valid_name(to_version)
        with self._lock(wait_lock_s):
            interrupted = repairs.repair_unfinished(self)
            live = self._live_or_refuse()
            version = to_version or live.previous_version
            if not version:
                raise UsageError(f"nothing to roll back to on {self.target}: {live.version} is the only version "
                                 f"that was live (use `orchestrator rollback --to-version VERSION`)")
            return {**self._switch_locked(version, keep_previous=keep_previous, action="rollback"),
                    "interrupted": interrupted}

    def _live_or_refuse(self) -> Live:
        live = self.ctx.ledger.live(self.target)
        if live is None:
            raise UsageError(f"nothing is live on target {self.target} yet: run `orchestrator up VERSION` first")
        return live

    def _switch_locked(self, version: str, *, keep_previous: bool, action: str,
                       canary: CanaryPlan | None = None) -> dict[str, Any]:
        live = self._live_or_refuse()
        repaired = self.reconcile(live)
        live = self._live_or_refuse()
        push = self.ctx.ledger.latest_push(version, self.variant)
        rollback_to_previous = action == "rollback" and version == live.previous_version
        if version == live.version and (push is None or push.digest == live.digest):
            reason = f"{version} is already live on {self.target} (slot {live.slot}); nothing to do"
            record = self._begin(action, version, live.version, digest=live.digest)
            self.ctx.ledger.finish_switch(record.id, "noop", reason)
            self.ctx.note(reason)
            return result(outcome="noop", target=self.target, from_version=live.version, to_version=version,
                          digest=live.digest, slot=live.slot, reason=reason, repaired=repaired)
        flow = ComposeSwitch(self, action=action, version=version, live=live, keep_previous=keep_previous,
                             rollback_to_previous=rollback_to_previous, repaired=repaired, canary=canary)
        digest_hint = live.previous_digest if rollback_to_previous else (push.digest if push else None)
        record = self._begin(action, version, live.version, digest=digest_hint,
                             data={"live_slot": flow.from_slot, "candidate_slot": flow.slot,
                                   "keep_previous": keep_previous, "live_image": live.image_ref,
                                   **({"canary": canary.shares} if canary else {})})
        flow.record = record
        return switchflow.run(self.ctx, record, flow)

    def _begin(self, action: str, version: str, from_version: str | None, digest: str | None = None,
               data: dict[str, Any] | None = None) -> Switch:
        if digest is None:
            push = self.ctx.ledger.latest_push(version, self.variant)
            digest = push.digest if push else None
        return switchflow.begin(self.ctx, target=self.target, action=action, to_version=version,
                                from_version=from_version, digest=digest, data=data)

    # -- resolving a candidate --------------------------------------------------------------------
    def resolve(self, version: str, previous: Live | None = None, tolerate_registry_down: bool = False) -> Candidate:
        """The exact image a slot runs for `version` (previous: roll back to what ran before it)."""
        known_version(self.ctx, version)
        check = self.spec.image_source == "registry"
        # A rollback returns to exactly what ran before, in the variant it ran.
        variant = (previous is not None and self.ctx.ledger.variant_of_digest(previous.previous_digest)) or self.variant
        if variant == self.variant:
            self.ctx.note(f"target {self.target} deploys the {variant} variant ({self.stack.variant_choice()[1]})")
        else:
            self.ctx.note(f"target {self.target} returns to the {variant} variant that ran before")
        try:
            dep = resolve(self.ctx, version, variant=variant, check_registry=check)
        except TamperError:
            raise
        except RegistryError as e:
            if not tolerate_registry_down:
                raise
            self.ctx.note(f"  [yellow]registry check skipped for the rollback: {e}[/yellow]")
            dep = resolve(self.ctx, version, variant=variant, check_registry=False)
        if previous is not None and previous.previous_digest and previous.previous_digest != dep.digest:
            # Roll back to exactly what ran before, even if the version was pushed again since.
            push = next((p for p in self.ctx.ledger.pushes(version) if p.digest == previous.previous_digest), None)
            if push is not None:
                dep = Deployable(version, push.variant, push.digest, push.image_ref,
                                 self.ctx.ledger.build(push.build_id), push)
        image = dep.build.image_id if self.spec.image_source == "local" else dep.image_ref
        return Candidate(version=version, digest=dep.digest, image=image, deployable=dep)

    # -- repair and drift (repair.py) -------------------------------------------------------------
    def reconcile(self, live: Live) -> list[str]:
        return repairs.reconcile(self, live)

    def known_image(self, container) -> str | None:
        return repairs.known_image(self, container)

    def repair(self, *, wait_lock_s: float = 0.0) -> dict[str, Any]:
        """Finish or undo the switches a killed orchestrator left running; the status plus what was done."""
        with self._lock(wait_lock_s):
            interrupted = repairs.repair_unfinished(self)
        return {**self.status(), "interrupted": interrupted,
                "repairs": [f"switch #{i['id']}: {i['repair']}" for i in interrupted]}

    # -- status and history -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What runs and what the ledger says, read-only: unfinished switches are listed, not repaired."""
        unfinished = [{"id": s.id, "action": s.action, "to_version": s.to_version, "step": s.step}
                      for s in self.ctx.ledger.unfinished_switches(self.target)]
        # Held: the switch is running now. Free: its process is gone, `repair` finishes or undoes it.
        running, left = (unfinished, []) if is_held(self.ctx.config.state_path, self.target) else ([], unfinished)
        live = self.ctx.ledger.live(self.target)
        stack = self.stack
        containers = stack.containers()
        try:
            servers = stack.edge().servers()
        except EdgeError:
            servers = None
        slots = []
        for slot in SLOTS:
            c = containers.get(slot)
            st = servers.get(slot) if servers else None
            slots.append({
                "slot": slot, "port": stack.slot_port(slot),
                "state": c.status if c is not None else "absent",
                "health": (c.attrs.get("State", {}).get("Health") or {}).get("Status") if c is not None else None,
                "image": c.attrs.get("Config", {}).get("Image") if c is not None else None,
                "version": self.known_image(c) if c is not None else None,
                "edge": _edge_word(st),
                "weight": st.weight if st is not None else None,
                # A slot the kernel killed for memory comes back by itself (restart: unless-stopped):
                # these two are the only trace of it.
                "restarts": int(c.attrs.get("RestartCount") or 0) if c is not None else None,
                "oom_killed": bool(c.attrs.get("State", {}).get("OOMKilled")) if c is not None else None,
            })
        out: dict[str, Any] = {"target": self.target, "kind": "compose", "project": self.spec.project,
                               "compose": stack.project.flavor.describe(), "edge": self.edge_url,
                               "live": None, "previous": None, "slots": slots,
                               "drift": repairs.drift(self, live, containers, servers),
                               "interrupted": [], "unfinished": left, "switch_running": running,
                               "last_analysis": canary_shift.last_analysis(self.ctx.ledger, self.target)}
        if live is not None:
            out["live"] = {"version": live.version, "digest": live.digest, "image": live.image_ref,
                           "variant": self.ctx.ledger.variant_of_digest(live.digest), "slot": live.slot,
                           "since": live.since, "health": stack.edge_health()}
            if live.previous_version:
                warm = stack.slot_runs(live.previous_slot, live.previous_image_ref) if live.previous_slot else False
                out["previous"] = {"version": live.previous_version, "digest": live.previous_digest,
                                   "variant": self.ctx.ledger.variant_of_digest(live.previous_digest),
                                   "image": live.previous_image_ref, "slot": live.previous_slot, "warm": warm}
        return out

    def history(self, limit: int | None = None) -> dict[str, Any]:
        out = switchflow.history(self.ctx, self.target, limit)
        canary = canary_shift.canary_by_switch(self.ctx.ledger, self.target)
        for entry in out["entries"]:  # each canary step and its analysis, for the switches that had them
            if entry["id"] in canary:
                entry["canary"] = canary[entry["id"]]
        return out

    def down(self) -> None:
        """Remove the project's containers and network (tests; `orchestrator down` is not a verb)."""
        self.stack.down()


def _edge_word(st) -> str:
    if st is None:
        return "unknown"
    if st.maint:
        return "disabled"
    if st.draining:
        return "draining"
    if not st.up:
        return "down"
    return "serving"
