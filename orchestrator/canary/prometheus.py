"""A small client of Prometheus' HTTP API (instant queries): the one place the orchestrator talks to it.

Answers come back as plain data (`Sample`: labels + float); Prometheus' own errors (a bad query,
a timeout) and a server that cannot be reached become `PrometheusError` with the fix in the line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Self

import httpx

from orchestrator.errors import PrometheusError

DEFAULT_URL = "http://127.0.0.1:9090"




@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


class PrometheusClient:
    """Instant queries against one Prometheus server (`url`: e.g. http://127.0.0.1:9090)."""

    def __init__(self, url: str = DEFAULT_URL, timeout_s: float = 10.0, transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """Evaluate `expr` (at unix time `at`, default now): one Sample per series; [] when empty.

        Raises:
            PrometheusError: unreachable server, HTTP error, or a query Prometheus refuses.
        """
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        try:
            r = self._http.post("/api/v1/query", data=params)
        except httpx.HTTPError as e:
            raise PrometheusError(f"Prometheus at {self.url} cannot be reached ({type(e).__name__}: {e}); "
                                  "is the monitoring stack up (`docker compose ... up prometheus`)?") from None
        try:
            body = r.json()
        except ValueError:
            raise PrometheusError(f"Prometheus at {self.url} answered HTTP {r.status_code} without JSON") from None
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus refused the query ({body.get('errorType')}: {body.get('error')}): "
                                  f"{' '.join(expr.split())}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [Sample({}, float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise PrometheusError(f"expected an instant vector, got {data['resultType']}: {expr}")
        return [Sample(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The value of a query that yields at most one series; None when empty or NaN (no data)."""
        samples = self.query(expr, at)
        if len(samples) > 1:
            raise PrometheusError(f"expected one series, got {len(samples)}: {' '.join(expr.split())}")
        if not samples or math.isnan(samples[0].value):
            return None
        return samples[0].value
