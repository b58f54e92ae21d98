"""Prometheus metrics of one service instance (its own registry, so apps never share counters).

    aads_requests_total{method,route,status}      requests answered
    aads_request_duration_seconds{route}          latency histogram
    aads_requests_in_flight                       requests being handled now
    aads_batch_size                               items per batched forward pass (histogram)
    aads_batch_duration_seconds                   time of one batched forward pass
    aads_queue_depth                              items waiting for a batch
    aads_model_load_seconds                       load + hash check + warm-up time
    aads_model_state{state}                       1 for the current state (starting/ready/failed/stopping)
    aads_diagnoses_total{decision,reason}         diagnoses returned
    aads_model_info{version,family,model_id,random_init}   always 1; the labels say what is served
    aads_cache_lookups_total{result}              response cache lookups (hit / miss)
    aads_cache_hit_ratio                          hits / lookups since start (0 before any)
    aads_cache_entries, aads_cache_bytes          what the response cache holds now
    aads_ready_phase_seconds{phase}               time of each start-up phase until /ready
  per-version model behaviour (the canary analysis and the dashboard compare these between versions):
    aads_decisions_total{decision,crop,disease}   every diagnosis by what it decided ("none" for no crop/disease)
    aads_ood_score{crop}                          OOD score histogram (distance / threshold: > 1 = unfamiliar)
    aads_blocks_used                              encoder blocks run per image (histogram; dynamic depth)
    process_resident_memory_bytes, process_*      this process (prometheus_client's process collector)
    aads_cuda_memory_allocated_bytes{device}      on GPU only: tensors allocated / reserved by torch's
    aads_cuda_memory_reserved_bytes{device}         caching allocator

Every series carries `version` (the served version, from its manifest; "unknown" until it is read),
added when rendering, so Prometheus tells two versions apart without relabelling and a series
added later gets it too. The edge's scrape config adds `slot`.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

# Steps of at most 1.5x from 50 ms on: the canary compares p99s as a ratio (threshold 1.5), which
# buckets 2x apart would blur into "the same bucket".
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.45, 0.65, 1.0, 1.5, 2.25, 3.5, 5.0,
                   7.5, 10.0, 15.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# OOD scores are distance / the adapter's calibrated threshold: fine steps around 1, the decision edge.
OOD_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
BLOCK_BUCKETS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48)
UNKNOWN_VERSION = "unknown"
DIAGNOSE_ROUTES = ("/v1/diagnose", "/v1/diagnose/batch")


class ServiceMetrics:
    def __init__(self, version: str = UNKNOWN_VERSION) -> None:
        self.version = version
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "aads_requests", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "aads_request_duration_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.in_flight = Gauge("aads_requests_in_flight", "HTTP requests being handled", registry=r)
        self.batch_size = Histogram(
            "aads_batch_size", "Items per batched forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "aads_batch_duration_seconds", "Time of one batched forward pass", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("aads_queue_depth", "Items waiting for a batch", registry=r)
        self.model_load_seconds = Gauge(
            "aads_model_load_seconds", "Model load, hash check and warm-up time", registry=r
        )
        self.model_state = Gauge("aads_model_state", "1 for the current service state", ["state"], registry=r)
        self.diagnoses = Counter("aads_diagnoses", "Diagnoses returned", ["decision", "reason"], registry=r)
        self.model_info = Gauge(
            "aads_model_info", "What is served (always 1)", ["version", "family", "model_id", "random_init"], registry=r
        )
        self._init_model_series(r)

        # Speed: the response cache and the phases of a start (serving.response_cache, serving.runtime).
        self.cache_lookups = Counter("aads_cache_lookups", "Response cache lookups", ["result"], registry=r)
        self.cache_hit_ratio = Gauge("aads_cache_hit_ratio", "Response cache hits / lookups since start", registry=r)
        self.cache_entries = Gauge("aads_cache_entries", "Entries in the response cache", registry=r)
        self.cache_bytes = Gauge("aads_cache_bytes", "Bytes held by the response cache", registry=r)
        self.ready_phase_seconds = Gauge(
            "aads_ready_phase_seconds", "Seconds of each start-up phase until ready", ["phase"], registry=r
        )

    def observe_cache(self, result: str) -> None:
        self.cache_lookups.labels(result=result).inc()

    def track_cache(self, cache) -> None:
        """Read entries, bytes and the hit ratio from `cache` (a ResponseCache) at every scrape."""
        for result in ("hit", "miss"):
            self.cache_lookups.labels(result=result)  # both series exist from the start
        self.cache_entries.set_function(lambda: len(cache))
        self.cache_bytes.set_function(lambda: cache.bytes)
        self.cache_hit_ratio.set_function(lambda: cache.hits / max(1, cache.hits + cache.misses))

    def set_ready_phases(self, phases: dict[str, float]) -> None:
        for phase, seconds in phases.items():
            self.ready_phase_seconds.labels(phase=phase).set(seconds)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method=method, route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def observe_diagnosis(self, decision: str, reason: str | None) -> None:
        self.diagnoses.labels(decision=decision, reason=reason or "none").inc()

    def set_state(self, state: str, all_states: tuple[str, ...]) -> None:
        for s in all_states:
            self.model_state.labels(state=s).set(1 if s == state else 0)

    def track_queue_depth(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(_WithVersion(self.registry, self.version)), CONTENT_TYPE_LATEST  # type: ignore[arg-type]

    # -- per-version model behaviour (issue 15: monitoring and the canary analysis) -----------------

    def _init_model_series(self, r: CollectorRegistry) -> None:
        self.decisions = Counter(
            "aads_decisions", "Diagnoses by decision, crop and disease", ["decision", "crop", "disease"], registry=r
        )
        self.ood_score = Histogram(
            "aads_ood_score", "OOD score of the crop's adapter (> 1 = unfamiliar)", ["crop"], buckets=OOD_BUCKETS,
            registry=r,
        )
        self.blocks_used = Histogram("aads_blocks_used", "Encoder blocks run per image", buckets=BLOCK_BUCKETS,
                                     registry=r)
        ProcessCollector(registry=r)
        r.register(CudaMemoryCollector())

    def set_version(self, version: str) -> None:
        """The served version (from the manifest), put on every series from now on."""
        self.version = version

    def start_model_series(self, crops: dict[str, list[str]], routes: tuple[str, ...] = DIAGNOSE_ROUTES) -> None:
        """Every decision/crop/disease series at 0 once the model is ready: Prometheus' increase()
        over a canary step does not count a series' first sample, so a series born at 1 would lose it."""
        for decision in ("accept", "review"):
            self.decisions.labels(decision=decision, crop="none", disease="none")
            for crop, diseases in crops.items():
                self.decisions.labels(decision=decision, crop=crop, disease="none")
                for disease in diseases:
                    self.decisions.labels(decision=decision, crop=crop, disease=disease)
        for crop in (*crops, "none"):
            self.ood_score.labels(crop=crop)
        for route in routes:
            self.requests.labels(method="POST", route=route, status="200")
            self.latency.labels(route=route)

    def observe_model_output(self, diagnosis: Any, *, computed: bool = True) -> None:
        """One diagnosis served (serving.pipeline.Diagnosis, or a cached answer with the same fields):
        decision mix and OOD score count every answer, blocks used only a forward pass that ran
        (`computed`; a response-cache hit ran none)."""
        crop = diagnosis.crop or "none"
        self.decisions.labels(decision=diagnosis.decision, crop=crop, disease=diagnosis.disease or "none").inc()
        if diagnosis.ood_score is not None:
            self.ood_score.labels(crop=crop).observe(diagnosis.ood_score)
        if computed and diagnosis.blocks_used:
            self.blocks_used.observe(diagnosis.blocks_used)


class _WithVersion:
    """The registry's metrics with `version` added to every sample that lacks one (at render time)."""

    def __init__(self, registry: CollectorRegistry, version: str):
        self.registry, self.version = registry, version

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            out = copy.copy(metric)
            out.samples = [s if "version" in s.labels else s._replace(labels={**s.labels, "version": self.version})
                           for s in metric.samples]
            yield out


class CudaMemoryCollector:
    """torch's CUDA allocator figures per device; nothing on a CPU-only process or before CUDA is in use.

    torch is looked up, never imported: the collector must not pull torch into a process without it.
    """

    def collect(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        allocated = GaugeMetricFamily("aads_cuda_memory_allocated_bytes", "CUDA memory held by tensors",
                                      labels=["device"])
        reserved = GaugeMetricFamily("aads_cuda_memory_reserved_bytes", "CUDA memory reserved by torch's allocator",
                                     labels=["device"])
        for index in range(torch.cuda.device_count()):
            allocated.add_metric([str(index)], float(torch.cuda.memory_allocated(index)))
            reserved.add_metric([str(index)], float(torch.cuda.memory_reserved(index)))
        yield allocated
        yield reserved
