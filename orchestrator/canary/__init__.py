"""Canary analysis: the candidate version against the live one, judged from Prometheus.

`queries` (the PromQL), `prometheus` (the HTTP client), `analysis` (figures, thresholds, verdict),
`edge_weights` (the edge's share of traffic per slot through HAProxy's runtime API), `steps`
(`run_steps`: per share set the weights, wait, analyse; on a failure weight 0 and CanaryFailed),
`compare` (two versions side by side for `orchestrator compare`).
"""

from orchestrator.canary.analysis import (
    FAIL,
    PASS,
    WAIT,
    Figures,
    Thresholds,
    Verdict,
    analyse,
    judge,
    measure,
)
from orchestrator.canary.edge_weights import EdgeWeights, weights_for_share
from orchestrator.canary.prometheus import PrometheusClient, PrometheusError, Sample
from orchestrator.canary.steps import CanaryFailed, StepResult, parse_shares, run_steps

__all__ = [
    "FAIL",
    "PASS",
    "WAIT",
    "CanaryFailed",
    "EdgeWeights",
    "Figures",
    "PrometheusClient",
    "PrometheusError",
    "Sample",
    "StepResult",
    "Thresholds",
    "Verdict",
    "analyse",
    "judge",
    "measure",
    "parse_shares",
    "run_steps",
    "weights_for_share",
]
