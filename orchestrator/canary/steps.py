"""The canary steps of a switch: shift a share of traffic, let it run, judge it, next share.

`run_steps` is what the switch flow calls after ready + smoke, in place of the all-at-once flip:
for each share in `shares` (e.g. 10, 50, 100) it sets the edge's weights, waits `step_s`, and
runs the analysis; a failing analysis sets the candidate's weight to 0 at once and raises
`CanaryFailed` naming the metric (the flow then stops the candidate, marks the digest failed and
exits 5). The step with share 100 is judged too, then ends in the flow's normal finish. Every
step and verdict is handed to `record` before the next begins (the flow writes it to the ledger).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.canary.analysis import FAIL, Thresholds, Verdict, analyse
from orchestrator.canary.edge_weights import EdgeWeights
from orchestrator.canary.prometheus import PrometheusClient
from orchestrator.errors import CanaryFailed




@dataclass(frozen=True)
class StepResult:
    share: int
    weights: tuple[int, int]   # (live, candidate)
    seconds: float
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        return {"share": self.share, "weights": list(self.weights), "seconds": round(self.seconds, 3),
                **self.verdict.to_dict()}


def parse_shares(text: str) -> list[int]:
    """"10,50,100" -> [10, 50, 100]: increasing percentages ending at 100."""
    try:
        shares = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"canary steps {text!r}: expected percentages like 10,50,100") from None
    if not shares or shares[-1] != 100 or any(not 0 < s <= 100 for s in shares) \
            or any(a >= b for a, b in itertools.pairwise(shares)):
        raise ValueError(f"canary steps {text!r}: increasing percentages in 1..100 ending at 100, e.g. 10,50,100")
    return shares


def run_steps(
    edge: EdgeWeights,
    prom: PrometheusClient,
    *,
    live_slot: str,
    candidate_slot: str,
    candidate: str,
    live: str,
    shares: Sequence[int],
    step_s: float,
    thresholds: Thresholds | None = None,
    record: Callable[[StepResult], None] = lambda r: None,
    on_wait: Callable[[Verdict], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    judge_step: Callable[..., Verdict] = analyse,
) -> list[StepResult]:
    """Run the steps; the candidate ends with `shares[-1]`% (100: all) when every analysis passed.

    `candidate`/`live` are label matchers (queries.matcher("version", ...)).

    Raises:
        CanaryFailed: an analysis failed; the candidate's weight is already 0.
    """
    results: list[StepResult] = []
    for share in shares:
        started = time.monotonic()
        weights = edge.set_share(live_slot, candidate_slot, share)
        sleep(step_s)
        verdict = judge_step(prom, candidate, live, step_s, thresholds or Thresholds(), on_wait=on_wait)
        result = StepResult(share, weights, time.monotonic() - started, verdict)
        if verdict.outcome == FAIL:
            # Live takes everything back before anything else happens (recording included).
            edge.set_share(live_slot, candidate_slot, 0)
            record(result)
            raise CanaryFailed(share, verdict)
        record(result)
        results.append(result)
    return results
