"""Judge a canary step: the candidate against the live version over the step, from Prometheus.

`measure` runs the queries of `queries.py` and returns `Figures`; `judge` is the pure threshold
logic (`Thresholds` -> a `Verdict` that names the failing metric); `analyse` measures, and while
there is too little traffic to judge it waits and measures again, up to `Thresholds.max_wait_s`,
then fails with metric "traffic": a step is never passed without evidence.

Why each default (docs/operations.md, "Canary analysis", has the measurements):
  max_error_rate 0.01          any steady 5xx is a defect; 1% absorbs one unlucky request in 100
  max_p99_ratio 1.5            p99 over few requests is noisy on a shared CPU host; 1.5x still
                               catches a doubled latency
  max_review_increase 0.10     ten more points of images sent to review is a visible change to users
  max_decision_divergence 0.25 total variation distance between the decision/crop/disease mixes
  max_ood_shift 0.30           largest gap between the OOD-score CDFs (Kolmogorov-Smirnov)
  min_diagnoses 20             per version: below it a share moves by 5 points per image
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from orchestrator.canary import queries as q
from orchestrator.canary.prometheus import PrometheusClient

PASS, FAIL, WAIT = "pass", "fail", "wait"


@dataclass(frozen=True)
class Thresholds:
    """Per-target limits of the canary analysis (orchestrator.yaml can override each)."""

    max_error_rate: float = 0.01
    max_p99_ratio: float = 1.5
    max_review_increase: float = 0.10
    max_decision_divergence: float = 0.25
    max_ood_shift: float = 0.30
    min_diagnoses: int = 20
    max_wait_s: float = 120.0
    poll_s: float = 5.0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Thresholds:
        """From a config mapping; an unknown key is an error naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown canary threshold(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: type(getattr(cls(), k))(v) for k, v in values.items()})


@dataclass(frozen=True)
class Figures:
    """What the queries measured over one window (None: no data for that figure)."""

    window_s: float
    candidate_diagnoses: float | None
    live_diagnoses: float | None
    error_rate: float | None
    p99_ratio: float | None
    candidate_review_share: float | None
    live_review_share: float | None
    review_increase: float | None
    decision_divergence: float | None
    ood_shift: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    outcome: str            # pass | fail | wait
    metric: str | None      # the figure that failed or is missing (None on pass)
    reason: str
    figures: Figures

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "metric": self.metric, "reason": self.reason,
                "figures": self.figures.to_dict()}


def measure(prom: PrometheusClient, candidate: str, live: str, window_s: float, at: float | None = None) -> Figures:
    """Run every analysis query for `candidate` vs `live` (label matchers) over the last `window_s`."""
    w = q.window(window_s)
    return Figures(
        window_s=window_s,
        candidate_diagnoses=prom.value(q.diagnoses(candidate, w), at),
        live_diagnoses=prom.value(q.diagnoses(live, w), at),
        error_rate=prom.value(q.error_rate(candidate, w), at),
        p99_ratio=prom.value(q.latency_ratio(candidate, live, w), at),
        candidate_review_share=prom.value(q.review_share(candidate, w), at),
        live_review_share=prom.value(q.review_share(live, w), at),
        review_increase=prom.value(q.review_share_increase(candidate, live, w), at),
        decision_divergence=prom.value(q.decision_divergence(candidate, live, w), at),
        ood_shift=prom.value(q.ood_shift(candidate, live, w), at),
    )


def judge(f: Figures, t: Thresholds) -> Verdict:
    """Pure: the verdict of one measurement. Order: traffic, errors, latency, then the model's behaviour."""
    for side, count in (("candidate", f.candidate_diagnoses), ("live", f.live_diagnoses)):
        if count is None or count < t.min_diagnoses:
            return Verdict(WAIT, "traffic", f"{side} diagnosed {_fmt(count)} images in {f.window_s:.0f}s, "
                                            f"fewer than the {t.min_diagnoses} needed to judge", f)
    checks: list[tuple[str, float | None, float, str]] = [
        ("error_rate", f.error_rate, t.max_error_rate, "share of 5xx answers"),
        ("p99_ratio", f.p99_ratio, t.max_p99_ratio, "p99 latency over live's"),
        ("review_increase", f.review_increase, t.max_review_increase, "increase of the share sent to review"),
        ("decision_divergence", f.decision_divergence, t.max_decision_divergence,
         "decision mix divergence from live (total variation)"),
        ("ood_shift", f.ood_shift, t.max_ood_shift, "OOD score distribution shift (KS)"),
    ]
    for metric, value, limit, what in checks:
        if value is None:
            if metric == "ood_shift":  # no OOD scores at all (every request named a crop it lacks): nothing to compare
                continue
            return Verdict(WAIT, metric, f"no data for {metric} yet", f)
        if value > limit:
            return Verdict(FAIL, metric, f"{metric} {value:.3f} > {limit:g} ({what})", f)
    return Verdict(PASS, None, "every figure within its threshold", f)


def analyse(
    prom: PrometheusClient,
    candidate: str,
    live: str,
    step_s: float,
    thresholds: Thresholds = Thresholds(),
    *,
    on_wait: Callable[[Verdict], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Verdict:
    """Judge the step that just ran `step_s` seconds; while the verdict is "wait", wait (`poll_s`) and
    judge again over the grown window, at most `max_wait_s`, then fail on the missing figure."""
    started = clock()
    while True:
        waited = clock() - started
        verdict = judge(measure(prom, candidate, live, step_s + waited), thresholds)
        if verdict.outcome != WAIT:
            return verdict
        if waited + thresholds.poll_s > thresholds.max_wait_s:
            return Verdict(FAIL, verdict.metric, f"{verdict.reason} (waited {waited:.0f}s, the bound is "
                                                 f"{thresholds.max_wait_s:g}s)", verdict.figures)
        if on_wait is not None:
            on_wait(verdict)
        sleep(thresholds.poll_s)


def _fmt(v: float | None) -> str:
    return "no" if v is None else f"{v:.0f}"
