"""The PromQL of the canary analysis and of `orchestrator compare`: every figure is one query.

Two versions are told apart by a label matcher (`version="v5.5.4-dinov3"` by default; `slot="green"`
when both slots run the same version). Each query looks back over one window (a canary step) and
answers one number with no labels, or nothing when there is no data. Only diagnosis traffic
(`/v1/diagnose`, `/v1/diagnose/batch`) counts.

Why these shapes:
  - increase() over the window, not rate(): figures are counts over the step.
  - `or vector(0)` where a zero count has no series (no 5xx yet, no review yet).
  - distributions are compared as shares of each version's own total, so a 10% canary step
    compares like with like: total variation distance for the decision mix (0: same mix,
    1: disjoint), and the largest gap between the two bucketed CDFs (a Kolmogorov-Smirnov
    statistic) for the OOD scores.
"""

from __future__ import annotations

import re

DIAGNOSE = 'route=~"/v1/diagnose.*"'
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_WINDOW = re.compile(r"^[0-9]+(ms|s|m|h|d)$")


def matcher(label: str, value: str) -> str:
    """`label="value"`, the value escaped for PromQL."""
    if not _LABEL.match(label):
        raise ValueError(f"not a Prometheus label name: {label!r}")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{label}="{escaped}"'


def window(seconds: float) -> str:
    """A range selector duration in whole seconds (at least 1s)."""
    return f"{max(1, round(seconds))}s"


def _check(w: str) -> str:
    if not _WINDOW.match(w):
        raise ValueError(f"not a PromQL duration: {w!r}")
    return w


def diagnoses(sel: str, w: str) -> str:
    """Images diagnosed in the window."""
    return f"sum(increase(aads_decisions_total{{{sel}}}[{_check(w)}]))"


def requests(sel: str, w: str) -> str:
    """Diagnosis requests answered in the window (any status)."""
    return f"sum(increase(aads_requests_total{{{sel},{DIAGNOSE}}}[{_check(w)}]))"


def error_rate(sel: str, w: str) -> str:
    """5xx answers over all answers to diagnosis requests."""
    return (f'(sum(increase(aads_requests_total{{{sel},{DIAGNOSE},status=~"5.."}}[{_check(w)}])) or vector(0))'
            f" / {requests(sel, w)}")


def latency_quantile(sel: str, w: str, q: float = 0.99) -> str:
    """The q-quantile of diagnosis latency (seconds), from the histogram buckets."""
    return (f"histogram_quantile({q}, sum by (le) "
            f"(increase(aads_request_duration_seconds_bucket{{{sel},{DIAGNOSE}}}[{_check(w)}])))")


def latency_ratio(candidate: str, live: str, w: str, q: float = 0.99) -> str:
    """Candidate's latency quantile over live's (1.0: the same)."""
    return f"{latency_quantile(candidate, w, q)} / {latency_quantile(live, w, q)}"


def review_share(sel: str, w: str) -> str:
    """Share of diagnoses answered `review`."""
    return (f'(sum(increase(aads_decisions_total{{{sel},decision="review"}}[{_check(w)}])) or vector(0))'
            f" / {diagnoses(sel, w)}")


def review_share_increase(candidate: str, live: str, w: str) -> str:
    """Candidate's review share minus live's (0.1: ten points more sent to review)."""
    return f"({review_share(candidate, w)}) - ({review_share(live, w)})"


def _decision_shares(sel: str, w: str) -> str:
    return (f"(sum by (decision, crop, disease) (increase(aads_decisions_total{{{sel}}}[{_check(w)}]))"
            f" / scalar({diagnoses(sel, w)}))")


def decision_divergence(candidate: str, live: str, w: str) -> str:
    """Total variation distance between the two versions' decision/crop/disease mixes (0..1)."""
    c, lv = _decision_shares(candidate, w), _decision_shares(live, w)
    # `or`: a decision/crop/disease only one version gave still counts with its whole share.
    return f"0.5 * sum(abs(({c} - {lv}) or {c} or ({lv} * -1)))"


def _ood_cdf(sel: str, w: str) -> str:
    return (f"(sum by (le) (increase(aads_ood_score_bucket{{{sel}}}[{_check(w)}]))"
            f" / scalar(sum(increase(aads_ood_score_count{{{sel}}}[{w}]))))")


def ood_shift(candidate: str, live: str, w: str) -> str:
    """Largest gap between the two versions' OOD-score CDFs over the buckets (0..1)."""
    return f"max(abs({_ood_cdf(candidate, w)} - {_ood_cdf(live, w)}))"


def ood_quantile(sel: str, w: str, q: float = 0.9) -> str:
    return f"histogram_quantile({q}, sum by (le) (increase(aads_ood_score_bucket{{{sel}}}[{_check(w)}])))"


def mean_blocks(sel: str, w: str) -> str:
    return (f"sum(increase(aads_blocks_used_sum{{{sel}}}[{_check(w)}]))"
            f" / sum(increase(aads_blocks_used_count{{{sel}}}[{w}]))")


def mean_batch_size(sel: str, w: str) -> str:
    return (f"sum(increase(aads_batch_size_sum{{{sel}}}[{_check(w)}]))"
            f" / sum(increase(aads_batch_size_count{{{sel}}}[{w}]))")


def resident_memory(sel: str) -> str:
    """Largest resident memory of the version's processes now (bytes)."""
    return f"max(process_resident_memory_bytes{{{sel}}})"


def cuda_memory(sel: str) -> str:
    """CUDA memory held by tensors now (bytes, summed over devices); empty on CPU."""
    return f"sum(aads_cuda_memory_allocated_bytes{{{sel}}})"
