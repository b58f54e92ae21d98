"""A compose switch as the shared flow's `Switch` (orchestrator/switchflow.py): blue/green behind the edge.

ComposeSwitch moves traffic from the live slot to the other one (switch and rollback):
  resolve  the version's digest (registry tag check), and whether the idle slot already runs it (warm)
  start    the candidate in the idle slot (refused first when the GPU has no room for two models)
  ready    its /ready answers 200
  smoke    golden images on the slot (skipped for a warm rollback: that slot passed it and has served since)
  flip     the edge enables the candidate, waits until HAProxy serves it, then drains the old slot
           (with canary steps, `canary` instead: the share moves in judged steps, canary_shift.py)
  confirm  three answers in a row through the edge name the candidate
  watch    the error rate through the edge over watch_s
then finish: drain (disable the old slot), stop it (unless --keep-previous), record it live. A
failure after the flip flips the edge back first; the candidate slot is stopped either way.
FirstUp is `up` on an empty host: one slot, no old slot to drain, nothing to flip back to.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from orchestrator import probe
from orchestrator.backends.compose import canary_shift
from orchestrator.backends.compose.canary_shift import CanaryPlan
from orchestrator.backends.compose.checks import Candidate, ConfirmFailed, SmokeFailed, WatchFailed
from orchestrator.backends.compose.gpu_room import GpuRoomError
from orchestrator.backends.compose.haproxy import EdgeRuntime
from orchestrator.backends.compose.stack import other, reason_of, short
from orchestrator.errors import CanaryFailed, CandidateExited, OrchestratorError
from orchestrator.ledger import Live
from orchestrator.switchflow import Reverted, Steps, Switch, pause_hook, result

if TYPE_CHECKING:
    from orchestrator.backends.compose.backend import ComposeBackend


def candidates_fault(e: Exception) -> bool:
    """Is this failure the candidate image's own (so its digest is marked failed)?"""
    if isinstance(e, CanaryFailed):  # too little traffic to judge is not the image's fault
        return e.verdict.metric != "traffic"
    return isinstance(e, (probe.ProbeError, SmokeFailed, ConfirmFailed, WatchFailed, CandidateExited))


class ComposeSwitch(Switch):
    step_names = {"shift": "flip"}

    def __init__(self, backend: ComposeBackend, *, action: str, version: str, live: Live, keep_previous: bool,
                 rollback_to_previous: bool, repaired: list[str], canary: CanaryPlan | None = None):
        self.b, self.stack, self.checks = backend, backend.stack, backend.checks
        self.action, self.to_version, self.target = action, version, backend.target
        self.live = live
        self.keep_previous = keep_previous
        self.rollback_to_previous = rollback_to_previous
        self.repaired = repaired
        self.from_slot = live.slot or "blue"
        self.slot = other(self.from_slot)
        self.cand: Candidate | None = None
        self.rt: EdgeRuntime | None = None
        self.warm = self.started = self.flipped = False
        self.t0 = time.monotonic()
        self.traffic_s: float | None = None  # command start -> new requests go to the candidate
        # --canary: the shift role moves traffic in judged steps (canary_shift.py) instead of at once.
        self.canary = canary
        self.canary_started = False
        self.canary_steps: Steps | None = None
        self.canary_results: list[dict[str, Any]] = []
        self.record: Any = None  # the switch's ledger record (the backend sets it; canary steps use it)
        if canary is not None:
            self.step_names = {"shift": "canary"}

    def plan(self, role: str) -> tuple[str, dict[str, Any]] | None:
        slot, version = self.slot, self.to_version
        if role == "resolve":
            return f"{version} → digest, registry tag check", {}
        if role == "start":
            assert self.cand is not None
            return (f"{slot} ← {short(self.cand.image)}" + (" (warm)" if self.warm else ""),
                    {"image": self.cand.image, "digest": self.cand.digest, "version": self.cand.version})
        if role == "ready":
            return f"{self.stack.slot_url(slot)}/ready", {}
        if role == "smoke":
            # A warm previous slot passed its smoke test when it went live and has served since.
            return None if (self.warm and self.rollback_to_previous) else ("golden images on the slot", {})
        if role == "shift":
            if self.canary is not None:
                return self.canary.describe(), {"canary": self.canary.shares}
            return f"edge → {slot}, drain {self.from_slot}", {}
        if role == "confirm":
            return f"{self.stack.edge_url}/v1/version names {version}", {}
        if role == "watch":
            watch_s = self.stack.spec.watch_s
            return (f"error rate through the edge for {watch_s:g}s", {}) if watch_s > 0 else None
        raise ValueError(role)

    # -- the roles ----------------------------------------------------------------------------------
    def resolve(self) -> None:
        self.cand = self.b.resolve(self.to_version, previous=self.live if self.rollback_to_previous else None,
                                   tolerate_registry_down=self.action == "rollback")
        self.warm = self.stack.slot_runs(self.slot, self.cand.image) and self.stack.ready_now(self.slot)

    def start(self) -> None:
        self._monitoring()
        if self.warm:
            return
        verdict = self.stack.check_gpu_room()
        if verdict:
            raise GpuRoomError(verdict)
        assert self.cand is not None
        image = self.stack.slot_image(self.cand.deployable)
        self.started = True
        self.stack.start_slot(self.slot, image)

    def ready(self) -> None:
        slot = self.slot
        probe.wait_ready(self.stack.slot_url(slot), self.stack.spec.ready_timeout_s,
                         abort=lambda: self.stack.slot_exit_reason(slot))

    def smoke(self) -> None:
        assert self.cand is not None
        self.checks.smoke(self.slot, self.cand)

    def _monitoring(self) -> None:
        """Prometheus next to the edge: needed by a canary, kept running by every switch when on."""
        if not self.stack.spec.monitoring:
            return
        try:
            self.stack.ensure_monitoring()
        except OrchestratorError as e:
            if self.canary is not None:
                raise
            self.b.ctx.note(f"[yellow]warning: monitoring not started: {reason_of(e)}[/yellow]")

    def shift(self) -> None:
        if self.canary is not None:
            self.canary_steps = Steps(self.b.ctx, self.record)
            results = canary_shift.run_canary(self, self.canary, self.canary_steps)
            self.canary_results = [r.to_dict() for r in results]
            self.traffic_s = round(time.monotonic() - self.t0, 3)
            self.stack.write_edge_config(self.slot)
            return
        self.rt = rt = self.stack.edge()
        self.flipped = True
        self.stack.point_edge_at(rt, self.slot)
        rt.shift(self.slot, self.from_slot, at=lambda point: pause_hook(f"flip:{point}"))
        self.traffic_s = round(time.monotonic() - self.t0, 3)
        self.stack.write_edge_config(self.slot)

    def confirm(self) -> None:
        assert self.cand is not None
        self.checks.confirm(self.cand)

    def watch(self) -> None:
        assert self.rt is not None
        self.checks.watch(self.rt, self.slot)

    # -- the ends -------------------------------------------------------------------------------------
    def finish(self, steps: Steps) -> dict[str, Any]:
        cand, rt, from_slot = self.cand, self.rt, self.from_slot
        assert cand is not None and rt is not None
        notes: list[str] = []
        with steps.step("drain", f"{from_slot} finishes its requests"):
            try:
                rt.retire(from_slot)
            except OrchestratorError as e:
                notes.append(f"old slot not disabled in the edge: {e}")
            if self.canary_started:
                problem = canary_shift.reset_weights(self)
                if problem:
                    notes.append(problem)
        if self.canary_steps is not None:
            steps.phases.update(self.canary_steps.phases)
        if not self.keep_previous:
            with steps.step("stop", f"stop {from_slot}"):
                try:
                    self.stack.stop_slot(from_slot)
                except OrchestratorError as e:
                    notes.append(f"old slot not stopped: {e}")
        ledger = self.b.ctx.ledger
        with steps.step("finish"):
            with ledger.transaction() as db:
                ledger.set_live(self.target, version=cand.version, digest=cand.digest, image_ref=cand.image,
                                slot=self.slot, db=db)
                ledger.finish_switch(steps.switch.id, "succeeded", "; ".join(notes) or None, db=db)
        for n in notes:
            self.b.ctx.note(f"[yellow]warning: {n}[/yellow]")
        return result(outcome="succeeded", target=self.target, from_version=self.live.version,
                      to_version=cand.version, digest=cand.digest, slot=self.slot, reason="; ".join(notes) or None,
                      phases=steps.phases, warm=self.warm, kept_previous=self.keep_previous,
                      repaired=self.repaired, traffic_switched_s=self.traffic_s,
                      **({"canary": self.canary_results} if self.canary is not None else {}))

    def revert(self, error: Exception, at: str) -> Reverted:
        outcome, problem = "failed", None
        if self.canary_started and self.flipped:
            problem = canary_shift.live_takes_all(self)
        if self.flipped:
            outcome = "reverted"
            try:
                self.stack.edge().flip(self.from_slot, self.slot)
                self.stack.write_edge_config(self.from_slot)
                self.b.ctx.note(f"  edge flipped back to {self.from_slot} ({self.live.version})")
            except Exception as back:
                flip_problem = f"flipping back failed: {reason_of(back)}"
                problem = f"{problem}; {flip_problem}" if problem else flip_problem
                self.stack.write_edge_config(self.from_slot)  # the file at least says what should be live
        if self.canary_started:
            weights = canary_shift.reset_weights(self)
            if weights:
                problem = f"{problem}; {weights}" if problem else weights
        if self.started or self.flipped:
            self.stack.stop_quietly(self.slot)
        return Reverted(outcome, problem)

    def candidate(self) -> tuple[str, str] | None:
        return (self.cand.digest, self.cand.version) if self.cand is not None else None

    def candidates_fault(self, error: Exception) -> bool:
        return candidates_fault(error)

    def failure_text(self, outcome: str, at: str, reason: str) -> str:
        keeps = f"{self.live.version} keeps serving" if outcome == "failed" else f"back on {self.live.version}"
        return f"{self.action} to {self.to_version} {outcome} at {at}: {reason} ({keeps})"


class FirstUp(Switch):
    """`up` with nothing live: the blue slot and a fresh edge; a failure stops the slot and leaves nothing live."""

    action = "up"

    def __init__(self, backend: ComposeBackend, version: str):
        self.b, self.stack, self.checks = backend, backend.stack, backend.checks
        self.to_version, self.target = version, backend.target
        self.slot = "blue"
        self.cand: Candidate | None = None

    def plan(self, role: str) -> tuple[str, dict[str, Any]] | None:
        slot = self.slot
        if role == "start":
            assert self.cand is not None
            return f"{slot} ← {short(self.cand.image)}", {"image": self.cand.image, "digest": self.cand.digest}
        return {"resolve": (self.to_version, {}),
                "ready": (f"{self.stack.slot_url(slot)}/ready", {}),
                "smoke": ("golden images on the slot", {}),
                "shift": (f"edge on {self.stack.edge_url} → {slot}", {}),
                "confirm": (f"{self.stack.edge_url}/v1/version names {self.to_version}", {}),
                "watch": None}[role]

    step_names = {"shift": "flip"}

    def resolve(self) -> None:
        self.cand = self.b.resolve(self.to_version)

    def start(self) -> None:
        assert self.cand is not None
        self.stack.ensure_edge_image()
        self.stack.write_env(BLUE_IMAGE=self.cand.image, GREEN_IMAGE=self.cand.image)
        self.stack.write_edge_config(None)
        if self.stack.spec.monitoring:
            try:
                self.stack.ensure_monitoring()
            except OrchestratorError as e:
                self.b.ctx.note(f"[yellow]warning: monitoring not started: {reason_of(e)}[/yellow]")
        self.stack.up_slot(self.slot)

    def ready(self) -> None:
        probe.wait_ready(self.stack.slot_url(self.slot), self.stack.spec.ready_timeout_s,
                         abort=lambda: self.stack.slot_exit_reason(self.slot))

    def smoke(self) -> None:
        assert self.cand is not None
        self.checks.smoke(self.slot, self.cand)

    def shift(self) -> None:
        rt = self.stack.start_edge(self.slot)
        self.stack.point_edge_at(rt, self.slot)
        rt.shift(self.slot, None)

    def confirm(self) -> None:
        assert self.cand is not None
        self.checks.confirm(self.cand)

    def finish(self, steps: Steps) -> dict[str, Any]:
        cand = self.cand
        assert cand is not None
        ledger = self.b.ctx.ledger
        with steps.step("finish"):
            with ledger.transaction() as db:
                ledger.set_live(self.target, version=cand.version, digest=cand.digest, image_ref=cand.image,
                                slot=self.slot, db=db)
                ledger.finish_switch(steps.switch.id, "succeeded", None, db=db)
        return result(outcome="succeeded", target=self.target, from_version=None, to_version=cand.version,
                      digest=cand.digest, slot=self.slot, phases=steps.phases, edge=self.stack.edge_url)

    def revert(self, error: Exception, at: str) -> Reverted:
        self.stack.stop_quietly(self.slot)
        return Reverted("failed")

    def candidate(self) -> tuple[str, str] | None:
        return (self.cand.digest, self.cand.version) if self.cand is not None else None

    def candidates_fault(self, error: Exception) -> bool:
        return candidates_fault(error)

    def failure_text(self, outcome: str, at: str, reason: str) -> str:
        return f"up {self.to_version} failed at {at}: {reason}"
