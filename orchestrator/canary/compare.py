"""Two versions side by side over a window, from Prometheus (`orchestrator compare`).

Every figure is one query of `queries.py`; a figure with no data is None (printed as "-").
"""

from __future__ import annotations

import re
from typing import Any

from orchestrator.canary import queries as q
from orchestrator.canary.prometheus import PrometheusClient

_DURATION = re.compile(r"^([0-9]+)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# (key, label, query builder(sel, window)); memory figures are "now", not over the window.
PER_VERSION = (
    ("diagnoses", "images diagnosed", q.diagnoses),
    ("requests", "diagnosis requests", q.requests),
    ("error_rate", "5xx share", q.error_rate),
    ("p50_seconds", "p50 latency (s)", lambda s, w: q.latency_quantile(s, w, 0.5)),
    ("p99_seconds", "p99 latency (s)", lambda s, w: q.latency_quantile(s, w, 0.99)),
    ("review_share", "share sent to review", q.review_share),
    ("ood_p90", "OOD score p90", lambda s, w: q.ood_quantile(s, w, 0.9)),
    ("mean_blocks", "encoder blocks per image", q.mean_blocks),
    ("mean_batch_size", "images per batch", q.mean_batch_size),
    ("resident_memory_bytes", "resident memory (bytes, now)", lambda s, w: q.resident_memory(s)),
    ("cuda_memory_bytes", "CUDA memory (bytes, now)", lambda s, w: q.cuda_memory(s)),
)
BETWEEN = (
    ("p99_ratio", "p99 ratio (B / A)", lambda a, b, w: q.latency_ratio(b, a, w)),
    ("review_increase", "review share B - A", lambda a, b, w: q.review_share_increase(b, a, w)),
    ("decision_divergence", "decision mix divergence", lambda a, b, w: q.decision_divergence(b, a, w)),
    ("ood_shift", "OOD score shift (KS)", lambda a, b, w: q.ood_shift(b, a, w)),
)


def window_seconds(text: str) -> int:
    """"10m" -> 600. Raises ValueError naming the accepted form."""
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"--window {text!r}: expected a duration like 90s, 10m, 2h or 1d")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


def compare(prom: PrometheusClient, a: str, b: str, window_s: int, label: str = "version") -> dict[str, Any]:
    """Figures of `a` and `b` (values of `label`) over the last `window_s` seconds, and between them."""
    sel_a, sel_b, w = q.matcher(label, a), q.matcher(label, b), q.window(window_s)
    return {
        "label": label,
        "window_seconds": window_s,
        "a": a,
        "b": b,
        "figures": {key: {"a": prom.value(build(sel_a, w)), "b": prom.value(build(sel_b, w))}
                    for key, _, build in PER_VERSION},
        "between": {key: prom.value(build(sel_a, sel_b, w)) for key, _, build in BETWEEN},
    }


def render(result: dict[str, Any]) -> str:
    """A plain text table."""
    def fmt(v: float | None) -> str:
        if v is None:
            return "-"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"

    a, b = result["a"], result["b"]
    width = max(len(a), len(b), 10)
    lines = [f"{result['label']}s over the last {result['window_seconds']}s (Prometheus)",
             f"{'':32} {a:>{width}} {b:>{width}}"]
    for key, label, _ in PER_VERSION:
        row = result["figures"][key]
        lines.append(f"{label:32} {fmt(row['a']):>{width}} {fmt(row['b']):>{width}}")
    for key, label, _ in BETWEEN:
        lines.append(f"{label:32} {fmt(result['between'][key]):>{width * 2 + 1}}")
    return "\n".join(lines)
