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
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    def __init__(self) -> None:
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
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
