"""The one switch flow every backend runs: begin -> steps -> finish, or revert -> mark -> raise.

A backend supplies the work of one switch as a `Switch` object (kamal-style roles: resolve, start,
ready, smoke, shift, confirm, watch, then finish or revert); `run()` drives it and owns what
every backend must do the same way: enter each step in the ledger before it runs, stop at the
first failure, let the backend revert, mark the candidate's digest failed when the failure was
the candidate's own, close the switch record with its outcome and raise `SwitchFailed` with the
input error's exit code kept. `history()` holds the success-rate rule.

A step is entered in the ledger (with the facts a repair needs) BEFORE it runs and its duration
recorded after, so a `kill -9` at any moment leaves a switch whose `step` says how far it got.

Test hook: env AADS_PAUSE_AT_STEP=<point> makes the switch wait 60 s (AADS_PAUSE_SECONDS changes the
60) at that point, so a test can kill the process there deterministically. A point is a step name
(right after the step is entered) or a point inside one: `flip:enabled` (the new slot serves, the
old one too) and `flip:drained` (the old slot drains). With AADS_PAUSE_REACHED_FILE=<path> the
switch writes the point's name to that file when it gets there, and stops waiting early once the
file is deleted. It is read only here and does nothing unless set.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from orchestrator.context import Context
from orchestrator.errors import SwitchFailed, TamperError, UsageError
from orchestrator.ledger import Switch as SwitchRecord

PAUSE_ENV = "AADS_PAUSE_AT_STEP"
REACHED_ENV = "AADS_PAUSE_REACHED_FILE"
# Outcomes that count for the success rate (noop and running do not).
COUNTED = {"succeeded": True, "failed": False, "reverted": False, "interrupted": False}


def pause_hook(point: str) -> None:
    if os.environ.get(PAUSE_ENV) != point:
        return
    deadline = time.monotonic() + float(os.environ.get("AADS_PAUSE_SECONDS", "60"))
    reached = os.environ.get(REACHED_ENV)
    if reached:
        Path(reached).write_text(point + "\n")
    while time.monotonic() < deadline:
        if reached and not os.path.exists(reached):
            return
        time.sleep(0.05)


class Steps:
    """Run the steps of one switch: ledger first, then progress on stderr, then the work."""

    def __init__(self, ctx: Context, switch: SwitchRecord):
        self.ctx = ctx
        self.switch = switch
        self.phases: dict[str, float] = {}
        self.current: str | None = None

    @contextmanager
    def step(self, name: str, what: str = "", **facts: Any) -> Iterator[None]:
        self.ctx.ledger.enter_step(self.switch.id, name, **facts)
        self.current = name
        pause_hook(name)
        self.ctx.stderr.print(f"[bold]→ {name:<8}[/bold] {what}".rstrip())
        start = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - start
            self.phases[name] = round(self.phases.get(name, 0.0) + seconds, 3)
            self.ctx.ledger.record_phase(self.switch.id, name, seconds)
        self.ctx.stderr.print(f"  [green]✓[/green] {name} {seconds:.2f}s")


def result(*, outcome: str, target: str, from_version: str | None, to_version: str | None,
           digest: str | None, slot: str | None, reason: str | None = None,
           phases: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    """The dict switch/rollback/up return (deploy.py renders it, or prints it with --json)."""
    return {"outcome": outcome, "target": target, "from_version": from_version, "to_version": to_version,
            "digest": digest, "slot": slot, "reason": reason, "phases": phases or {}, **extra}


def history(ctx: Context, target: str, limit: int | None = None) -> dict[str, Any]:
    """Every switch/rollback/up on `target` (oldest first) and the success rate over them."""
    failed = ctx.ledger.failed_digests()
    entries = []
    for s in ctx.ledger.history(target, limit):
        entries.append({
            "id": s.id, "at": s.started_at, "finished_at": s.finished_at, "action": s.action,
            "from_version": s.from_version, "to_version": s.to_version, "digest": s.digest,
            "variant": ctx.ledger.variant_of_digest(s.digest),
            "outcome": s.outcome, "reason": s.reason, "user": s.user, "phases": s.phases,
            "step": s.step, "failed_digest": bool(s.digest and any(
                r["target"] == target for r in failed.get(s.digest, []))),
        })
    return {"target": target, "entries": entries, **success_rate(e["outcome"] for e in entries)}


def success_rate(outcomes: Iterable[str | None]) -> dict[str, Any]:
    """The rule: succeeded / (succeeded + failed + reverted + interrupted); noop and running do not count."""
    counted = [COUNTED[o] for o in outcomes if o in COUNTED]
    rate = round(sum(counted) / len(counted), 4) if counted else None
    return {"success_rate": rate, "counted": len(counted), "succeeded": sum(counted)}


# -- the flow ---------------------------------------------------------------------------------------

ROLES = ("resolve", "start", "ready", "smoke", "shift", "confirm", "watch")


@dataclass(frozen=True)
class Reverted:
    """What a backend's revert did: `outcome` 'failed' (traffic never moved) or 'reverted' (moved back),
    or another outcome the ledger knows ('unknown': the backend cannot tell). `problem` names what
    went wrong while undoing (it is appended to the reason). `error`, when given, is raised instead
    of SwitchFailed (a backend error with its own exit code, e.g. an outcome that cannot be known)."""

    outcome: str = "failed"
    problem: str | None = None
    error: Exception | None = None


class Switch:
    """The work of one switch, supplied by a backend; `run()` calls it in this order.

    resolve -> start -> ready -> smoke -> shift -> confirm -> watch -> finish, or at the first
    failing role revert. `step_names` maps a role to the step name the ledger records (compose's
    shift is "flip"); `plan(role)` says what the progress line shows and which facts the ledger
    keeps with the step, or None to skip the role (a warm rollback skips smoke). `finish` runs
    after every role passed and returns the command's result; it may record more steps of its
    own through `steps` (compose: drain, stop, finish). Attributes `action`, `to_version`, `target`
    name the switch in messages.
    """

    action: str = "switch"
    to_version: str = ""
    target: str = ""
    step_names: dict[str, str] = {}

    def plan(self, role: str) -> tuple[str, dict[str, Any]] | None:
        return ("", {})

    def resolve(self) -> None: ...
    def start(self) -> None: ...
    def ready(self) -> None: ...
    def smoke(self) -> None: ...
    def shift(self) -> None: ...
    def confirm(self) -> None: ...
    def watch(self) -> None: ...

    def finish(self, steps: Steps) -> dict[str, Any]:
        raise NotImplementedError

    def revert(self, error: Exception, at: str) -> Reverted:
        """Undo what the roles did so far (the live version keeps or gets back all traffic)."""
        return Reverted()

    def candidate(self) -> tuple[str, str] | None:
        """(digest, version) of the candidate once resolved: what is marked failed on its own fault."""
        return None

    def candidates_fault(self, error: Exception) -> bool:
        """Was this failure the candidate image's own (so its digest is marked failed)?"""
        return False

    def failure_text(self, outcome: str, at: str, reason: str) -> str:
        """The SwitchFailed message."""
        return f"{self.action} to {self.to_version} {outcome} at {at}: {reason}"

    def record_reason(self, at: str, reason: str) -> str:
        """The reason the ledger keeps for the failed switch (and its failed digest)."""
        return f"{at}: {reason}"


def begin(ctx: Context, *, target: str, action: str, to_version: str, from_version: str | None,
          digest: str | None, data: dict[str, Any] | None = None, command: str | None = None) -> SwitchRecord:
    """Open the switch record (outcome 'running') with the command line that asked for it."""
    command = command or "orchestrator " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return ctx.ledger.begin_switch(target=target, action=action, to_version=to_version, from_version=from_version,
                                   digest=digest, command=command, data=data or {})


def run(ctx: Context, record: SwitchRecord, switch: Switch) -> dict[str, Any]:
    """Drive `switch` through its roles; its result, or SwitchFailed once it was reverted and recorded.

    Only Exception is caught: a KeyboardInterrupt or a kill leaves the record 'running' with its
    step, for the backend's repair to finish or undo.
    """
    steps = Steps(ctx, record)
    try:
        for role in ROLES:
            plan = switch.plan(role)
            if plan is None:
                continue
            what, facts = plan
            with steps.step(switch.step_names.get(role, role), what, **facts):
                getattr(switch, role)()
    except Exception as e:
        fail(ctx, record, switch, e, steps.current or switch.step_names.get("resolve", "resolve"))
    return switch.finish(steps)


def fail(ctx: Context, record: SwitchRecord, switch: Switch, error: Exception, at: str) -> None:
    """Revert, mark the candidate's digest when the failure was its own, record, raise SwitchFailed."""
    reason = reason_of(error)
    ctx.note(f"[red]✗ {switch.action} to {switch.to_version} failed at {at}: {reason}[/red]")
    undo = switch.revert(error, at)
    if undo.problem:
        reason += f"; {undo.problem}"
    recorded = switch.record_reason(at, reason)
    cand = switch.candidate()
    if cand is not None and switch.candidates_fault(error):
        ctx.ledger.mark_failed_digest(digest=cand[0], version=cand[1], target=switch.target, reason=recorded)
    ctx.ledger.finish_switch(record.id, undo.outcome, recorded)
    if undo.error is not None:
        raise undo.error from None
    err = SwitchFailed(switch.failure_text(undo.outcome, at, reason))
    if isinstance(error, (UsageError, TamperError)):
        err.exit_code = error.exit_code  # bad input or tampering keeps its own exit code
    raise err from None


def reason_of(e: BaseException) -> str:
    """An error's first line: what a failed step reports."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
