"""Crash repair and drift of a compose target: make the host match what the ledger says.

Crash repair (a switch the ledger still shows as running, its process gone): while the switch had
not passed its watch window (steps resolve..watch) the edge goes back to the slot the ledger says
is live and the candidate stops; from `drain` on (flip, confirm and watch all passed) the repair
completes it forward. Either way the switch is marked 'interrupted' with what the repair did.
Drift is any difference between the host and the ledger's live version; `drift()` only reads,
`reconcile()` fixes it (the next switch or `up` calls it, and a repair going back does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator import probe
from orchestrator.backends.compose.canary_shift import reset_stack_weights
from orchestrator.backends.compose.haproxy import EdgeError
from orchestrator.backends.compose.stack import SLOTS, other, short
from orchestrator.ledger import Live, Switch

if TYPE_CHECKING:
    from orchestrator.backends.compose.backend import ComposeBackend

# Steps after which a crashed switch is completed forward by the repair (see the module doc).
FORWARD_STEPS = {"drain", "stop", "finish"}


def repair_unfinished(b: ComposeBackend) -> list[dict[str, Any]]:
    """Repair switches left 'running' by a dead process (call with the target lock held)."""
    done = []
    for sw in b.ctx.ledger.unfinished_switches(b.target):
        b.ctx.note(f"[yellow]switch #{sw.id} ({sw.action} → {sw.to_version}) was interrupted at "
                   f"step {sw.step}: repairing[/yellow]")
        what = repair_switch(b, sw)
        b.ctx.ledger.add_event("repair", what, target=b.target, switch=sw.id, step=sw.step)
        b.ctx.note(f"  {what}")
        done.append({"id": sw.id, "action": sw.action, "to_version": sw.to_version, "step": sw.step,
                     "repair": what})
    return done


def repair_switch(b: ComposeBackend, sw: Switch) -> str:
    """Finish or undo one interrupted switch; what was done, in one line."""
    stack, ledger = b.stack, b.ctx.ledger
    live = ledger.live(b.target)
    data = sw.data
    cand_slot = data.get("candidate_slot")
    image = data.get("image")
    if data.get("canary"):
        # A canary killed mid-step leaves its weights (live may be at 0): back to the config's first.
        problem = reset_stack_weights(stack)
        if problem:
            b.ctx.note(f"  [yellow]{problem}[/yellow]")
    forward = sw.step in FORWARD_STEPS and live is not None and cand_slot and image \
        and stack.slot_runs(cand_slot, image) and stack.ready_now(cand_slot)
    if forward:
        rt = stack.edge_or_start(cand_slot)
        stack.point_edge_at(rt, cand_slot)
        rt.flip(cand_slot, other(cand_slot))
        stack.write_edge_config(cand_slot)
        if not data.get("keep_previous"):
            stack.stop_quietly(other(cand_slot))
        what = f"completed forward: {sw.to_version} live on {cand_slot} (it had passed flip, confirm and watch)"
        with ledger.transaction() as db:
            ledger.set_live(b.target, version=sw.to_version, digest=data.get("digest") or sw.digest,
                            image_ref=image, slot=cand_slot, db=db)
            ledger.finish_switch(sw.id, "interrupted", f"at {sw.step}; {what}", db=db)
        return what
    if live is None:  # an interrupted first `up`: nothing was live, start clean next time
        if cand_slot:
            stack.stop_quietly(cand_slot)
        what = "nothing was live yet; the half-started slot was stopped"
    else:
        repaired = b.reconcile(live)
        # Before `start` the switch never touched the idle slot (it may hold a warm previous version).
        stop = bool(cand_slot and cand_slot != live.slot and sw.step not in (None, "resolve"))
        if stop:
            stack.stop_quietly(cand_slot)
        what = (f"back to {live.version} on {live.slot}" + (f" ({'; '.join(repaired)})" if repaired else "")
                + (f"; candidate slot {cand_slot} stopped" if stop else ""))
    ledger.finish_switch(sw.id, "interrupted", f"at {sw.step}; {what}")
    return what


def reconcile(b: ComposeBackend, live: Live) -> list[str]:
    """Make the host match the ledger's live version: live slot running + ready, edge sending it all traffic."""
    stack = b.stack
    fixed: list[str] = []
    slot = live.slot or "blue"
    if not (stack.slot_runs(slot, live.image_ref) and stack.ready_now(slot)):
        b.ctx.note(f"  live slot {slot} does not run {live.version}: starting it")
        stack.start_slot(slot, live.image_ref)
        probe.wait_ready(stack.slot_url(slot), stack.spec.ready_timeout_s, abort=lambda: stack.slot_exit_reason(slot))
        fixed.append(f"live slot {slot} restarted on {live.version}")
    try:
        rt = stack.edge()
    except EdgeError:
        rt = stack.start_edge(slot)
        fixed.append("edge started")
    serving = rt.serving_slots()
    if serving != [slot]:
        stack.point_edge_at(rt, slot)
        rt.flip(slot, other(slot))
        fixed.append(f"edge sent traffic to {', '.join(serving) or 'no slot'}; now {slot}")
    if stack.config_live_slot() != slot:
        stack.write_edge_config(slot)
        fixed.append(f"haproxy.cfg rewritten for {slot}")
    for f in fixed:
        b.ctx.note(f"  [yellow]repaired drift: {f}[/yellow]")
    if fixed:
        b.ctx.ledger.add_event("drift-repaired", "; ".join(fixed), target=b.target)
    return fixed


def known_image(b: ComposeBackend, container) -> str | None:
    """The version the ledger knows this container's image as, or None."""
    image_id = container.attrs.get("Image")
    for build in b.ctx.ledger.builds():
        if build.image_id == image_id:
            return build.version
    try:
        digests = b.stack.client.images.get(image_id).attrs.get("RepoDigests") or []
    except Exception:
        digests = []
    for ref in digests:
        v = b.ctx.ledger.version_for_digest(ref.rpartition("@")[2])
        if v:
            return v
    return None


def drift(b: ComposeBackend, live: Live | None, containers: dict[str, Any], servers: dict[str, Any] | None) -> list[str]:
    """Every difference between the host and the ledger, one line each (reads only)."""
    out = []
    for slot in SLOTS:
        c = containers.get(slot)
        if c is not None and c.status == "running" and b.known_image(c) is None:
            out.append(f"slot {slot} runs an image the ledger does not know ({c.attrs.get('Config', {}).get('Image')})")
    if live is None:
        return out
    if not b.stack.slot_runs(live.slot, live.image_ref):
        out.append(f"live slot {live.slot} does not run {live.version} ({short(live.image_ref)})")
    if servers is None:
        out.append("the edge is not running")
    else:
        serving = sorted(s for s, st in servers.items() if st.serving)
        if serving != [live.slot]:
            out.append(f"the edge sends traffic to {', '.join(serving) or 'no slot'}, "
                       f"the ledger says {live.slot}")
    on_disk = b.stack.config_live_slot()
    if on_disk != live.slot:
        out.append(f"haproxy.cfg on disk enables {on_disk or 'no single slot'}, the ledger says {live.slot}")
    return out
