"""The canary in place of the all-at-once flip: the compose switch's traffic move in steps, each judged.

After ready + smoke the edge enables the candidate at weight 0 (live 100), waits one Prometheus
scrape interval (so the candidate's series exist), then for each share (e.g. 10, 50, 100) sets the
weights through HAProxy's runtime API, lets the share run `step_s` and judges it with the canary
analysis (orchestrator/canary). Each share is a step of its own in the ledger (`canary-10`, ...)
and each verdict an event (kind `canary`) that `history` and `status` show. The step at 100 is
judged over the whole canary: live takes no request during it, its figures come from the earlier
steps. A failed analysis leaves the candidate at weight 0 (run_steps does that first) and raises
CanaryFailed; the switch then flips back, stops the candidate and marks its digest failed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.canary.analysis import Thresholds, Verdict, analyse
from orchestrator.canary.edge_weights import EdgeWeights
from orchestrator.canary.prometheus import PrometheusClient
from orchestrator.canary.queries import matcher
from orchestrator.canary.steps import StepResult, run_steps
from orchestrator.errors import EdgeError
from orchestrator.polling import NotYet, PollTimeout, poll_until
from orchestrator.switchflow import Steps

if TYPE_CHECKING:
    from orchestrator.backends.compose.switch import ComposeSwitch

SCRAPE_INTERVAL_S = 5.0  # monitoring/prometheus.yml's global scrape_interval
EVENT_KIND = "canary"
INITIAL_WEIGHT = 1  # the weight of every server in the edge's config file (HAProxy's default)


@dataclass(frozen=True)
class CanaryPlan:
    shares: list[int]
    step_s: float
    thresholds: Thresholds
    prometheus_url: str

    def describe(self) -> str:
        return f"canary {','.join(map(str, self.shares))}% of requests, {self.step_s:g}s a step, judged by {self.prometheus_url}"

    def step_names(self) -> list[str]:
        return [f"canary-{s}" for s in self.shares]


def matchers(candidate_version: str, live_version: str | None, candidate_slot: str,
             live_slot: str) -> tuple[str, str]:
    """(candidate, live) label matchers: by version, or by slot when both slots run the same version."""
    if live_version is None or live_version == candidate_version:
        return matcher("slot", candidate_slot), matcher("slot", live_slot)
    return matcher("version", candidate_version), matcher("version", live_version)


def run_canary(sw: ComposeSwitch, plan: CanaryPlan, steps: Steps) -> list[StepResult]:
    """Move traffic to `sw.slot` step by step; every step judged. Raises CanaryFailed (weight 0 already)."""
    stack, live_slot, cand_slot = sw.stack, sw.from_slot, sw.slot
    assert sw.cand is not None
    container = stack.containers().get("edge")
    if container is None or container.status != "running":
        raise EdgeError(f"the edge of target {sw.target} is not running")
    edge = EdgeWeights.for_container(container)
    rt = sw.rt = stack.edge()
    stack.point_edge_at(rt, cand_slot)
    sw.canary_started = True  # from here a failure resets the weights
    # The candidate joins the backend at weight 0: it takes no request until the first step.
    edge.set(cand_slot, 0)
    edge.set(live_slot, 100)
    sw.flipped = True  # from here a failure flips back
    rt.enable(cand_slot)
    _wait_checked_up(rt, cand_slot)
    time.sleep(SCRAPE_INTERVAL_S)  # the candidate's first scrape: its counters start at a known value
    cand_sel, live_sel = matchers(sw.cand.version, sw.live.version, cand_slot, live_slot)
    ctx = sw.b.ctx
    canary_t0 = time.monotonic()
    done: list[StepResult] = []

    def record(r: StepResult) -> None:
        v = r.verdict
        ctx.ledger.add_event(EVENT_KIND, f"{r.share}%: {v.outcome} ({v.reason})", target=sw.target,
                             switch=steps.switch.id, version=sw.cand.version, slot=cand_slot, **r.to_dict())
        ctx.stderr.print(f"  analysis {r.share}%: {v.outcome} — {v.reason}; {_figures_line(v)}")

    def on_wait(v: Verdict) -> None:
        ctx.stderr.print(f"  analysis waits: {v.reason}")

    with PrometheusClient(plan.prometheus_url) as prom:
        for share in plan.shares:
            def judge(prom_, cand, live, step_s, thresholds, on_wait=None, _share=share):
                # At 100% live takes nothing during the step: judge over the whole canary.
                window = time.monotonic() - canary_t0 if _share == 100 else step_s
                return analyse(prom_, cand, live, max(window, step_s), thresholds, on_wait=on_wait)

            with steps.step(f"canary-{share}", f"{share}% of requests to {cand_slot}, {plan.step_s:g}s, then analysis",
                            canary_share=share):
                done += run_steps(edge, prom, live_slot=live_slot, candidate_slot=cand_slot, candidate=cand_sel,
                                  live=live_sel, shares=[share], step_s=plan.step_s, thresholds=plan.thresholds,
                                  record=record, on_wait=on_wait, judge_step=judge)
    # Every step passed: the candidate has all new requests; the old slot drains, as a flip leaves it.
    rt.drain(live_slot)
    return done


def live_takes_all(sw: ComposeSwitch) -> str | None:
    """Before a revert flips back: live's weight up again, the candidate's 0. After the 100% step live
    has weight 0, and the flip back waits for it to serve, which it never does at weight 0."""
    try:
        container = sw.stack.containers().get("edge")
        if container is None:
            return "the edge is gone: weights not set"
        EdgeWeights.for_container(container).set_share(sw.from_slot, sw.slot, 0)
    except Exception as e:  # noqa: BLE001 - the flip back then reports what it finds
        return f"edge weights not handed back to live: {e}"
    return None


def reset_weights(sw: ComposeSwitch) -> str | None:
    """Both servers back to the config file's weight (the next switch flips by state, not weight)."""
    return reset_stack_weights(sw.stack, (sw.from_slot, sw.slot))


def reset_stack_weights(stack: Any, slots: tuple[str, ...] = ("blue", "green")) -> str | None:
    """`slots` back to weight 1 in `stack`'s edge; None, or what went wrong (a note, never a failure)."""
    try:
        container = stack.containers().get("edge")
        if container is None:
            return "the edge is gone: weights not reset"
        edge = EdgeWeights.for_container(container)
        for slot in slots:
            edge.set(slot, INITIAL_WEIGHT)
    except Exception as e:  # noqa: BLE001 - reported with the switch's result, never hides its outcome
        return f"edge weights not reset: {e}"
    return None


def last_analysis(ledger: Any, target: str) -> dict[str, Any] | None:
    """The newest canary verdict recorded on `target` (for `status`)."""
    events = [e for e in ledger.events(target, limit=200) if e["kind"] == EVENT_KIND]
    if not events:
        return None
    e = events[-1]
    return {"at": e["at"], **e["data"]}


def canary_by_switch(ledger: Any, target: str) -> dict[int, list[dict[str, Any]]]:
    """Every canary step recorded on `target`, by switch id (for `history`)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for e in ledger.events(target, limit=100_000):
        if e["kind"] == EVENT_KIND and isinstance(e["data"].get("switch"), int):
            out.setdefault(e["data"]["switch"], []).append(
                {"at": e["at"], **{k: v for k, v in e["data"].items() if k != "switch"}})
    return out


def _wait_checked_up(rt: Any, slot: str, timeout_s: float = 10.0) -> None:
    """Until HAProxy's health check sees `slot` up and enabled (its weight is 0: not `serving` yet)."""
    def up() -> bool | NotYet:
        st = rt.servers().get(slot)
        return True if st is not None and st.up and not st.maint else NotYet(str(st))
    try:
        poll_until(up, timeout=timeout_s, interval=0.1, what=f"slot {slot} up in the edge")
    except PollTimeout as e:
        raise EdgeError(f"edge did not see slot {slot} up within {timeout_s:g}s ({e.last})") from None


def _figures_line(v: Verdict) -> str:
    f = v.figures
    parts = [("diagnoses", f"{_n(f.candidate_diagnoses)} vs {_n(f.live_diagnoses)}"),
             ("errors", _n(f.error_rate, 3)), ("p99 ratio", _n(f.p99_ratio, 2)),
             ("review +", _n(f.review_increase, 3)), ("mix TV", _n(f.decision_divergence, 3)),
             ("OOD KS", _n(f.ood_shift, 3))]
    return ", ".join(f"{k} {v}" for k, v in parts)


def _n(v: float | None, digits: int = 0) -> str:
    return "–" if v is None else f"{v:.{digits}f}"
