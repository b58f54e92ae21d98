"""What every backend's switch shares: recorded steps, the test pause hook, results and history.

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
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from orchestrator.context import Context
from orchestrator.ledger import Switch

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

    def __init__(self, ctx: Context, switch: Switch):
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
    counted = [COUNTED[e["outcome"]] for e in entries if e["outcome"] in COUNTED]
    rate = round(sum(counted) / len(counted), 4) if counted else None
    return {"target": target, "entries": entries, "success_rate": rate,
            "counted": len(counted), "succeeded": sum(counted)}
