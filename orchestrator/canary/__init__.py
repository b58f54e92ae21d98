"""Canary analysis: the candidate version against the live one, judged from Prometheus.

`queries` (the PromQL), `prometheus` (the HTTP client), `analysis` (figures, thresholds, verdict),
`edge_weights` (the edge's share of traffic per slot through HAProxy's runtime API).
The switch flow calls, per step: `EdgeWeights.set_share(...)`, wait the step, `analyse(...)`.
"""

from orchestrator.canary.analysis import FAIL, PASS, WAIT, Figures, Thresholds, Verdict, analyse, judge, measure
from orchestrator.canary.edge_weights import EdgeWeights, weights_for_share
from orchestrator.canary.prometheus import PrometheusClient, PrometheusError, Sample

__all__ = [
    "FAIL",
    "PASS",
    "WAIT",
    "EdgeWeights",
    "Figures",
    "PrometheusClient",
    "PrometheusError",
    "Sample",
    "Thresholds",
    "Verdict",
    "analyse",
    "judge",
    "measure",
    "weights_for_share",
]
