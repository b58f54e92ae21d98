"""The orchestrator's figures for Prometheus: totals read from the ledger, as exposition text.

The orchestrator is a command, not a server, so Prometheus cannot scrape it. After a switch or a
backup (or on demand) `orchestrator metrics --push URL` PUTs these figures to the compose stack's
pushgateway (Debian's prometheus-pushgateway), which Prometheus scrapes with honor_labels. They
are totals recomputed from the ledger every time, so a lost push, a restarted pushgateway or two
machines pushing the same ledger never make them wrong; a PUT replaces the group whole.

    aads_orchestrator_switches_total{target,action,outcome}             switches recorded
    aads_orchestrator_switch_duration_seconds_{sum,count}{target,action,outcome}   finished ones
    aads_orchestrator_last_switch_timestamp_seconds{target}             start of the latest switch
    aads_orchestrator_backups_total{operation}                          backups created / restored
    aads_orchestrator_last_backup_timestamp_seconds                     latest backup created
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from orchestrator.errors import PushError

JOB = "aads-orchestrator"




def _seconds(ts: str | None) -> float | None:
    if not ts:
        return None
    try:
        return datetime.fromisoformat(ts).timestamp()
    except ValueError:
        return None


def ledger_figures(ledger: Any) -> dict[str, Any]:
    """Plain totals (also what `--json` prints)."""
    switches: Counter = Counter()
    durations: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    last_switch: dict[str, float] = {}
    for sw in ledger.history():
        key = (sw.target, sw.action, sw.outcome)
        switches[key] += 1
        start, end = _seconds(sw.started_at), _seconds(sw.finished_at)
        if start is not None:
            last_switch[sw.target] = max(last_switch.get(sw.target, 0.0), start)
            if end is not None:
                durations[key].append(max(0.0, end - start))
    backups: Counter = Counter()
    last_backup = None
    for ev in ledger.events(limit=1_000_000):
        if ev["kind"] != "backup":
            continue
        operation = "restore" if ev["message"].startswith("restored") else "create"
        backups[operation] += 1
        if operation == "create":
            last_backup = max(last_backup or 0.0, _seconds(ev["at"]) or 0.0)
    return {
        "switches": [{"target": t, "action": a, "outcome": o, "count": n,
                      "duration_seconds_sum": round(sum(durations[(t, a, o)]), 3),
                      "duration_seconds_count": len(durations[(t, a, o)])}
                     for (t, a, o), n in sorted(switches.items())],
        "last_switch_timestamp_seconds": last_switch,
        "backups": dict(sorted(backups.items())),
        "last_backup_timestamp_seconds": last_backup,
    }


class _LedgerCollector:
    def __init__(self, figures: dict[str, Any]):
        self.figures = figures

    def collect(self) -> list[Metric]:
        f = self.figures
        labels = ["target", "action", "outcome"]
        total = CounterMetricFamily("aads_orchestrator_switches", "Switches recorded in the ledger", labels=labels)
        duration_sum = GaugeMetricFamily("aads_orchestrator_switch_duration_seconds_sum",
                                         "Seconds taken by finished switches, summed", labels=labels)
        duration_count = GaugeMetricFamily("aads_orchestrator_switch_duration_seconds_count",
                                           "Finished switches with a duration", labels=labels)
        for row in f["switches"]:
            key = [row["target"], row["action"], row["outcome"]]
            total.add_metric(key, row["count"])
            duration_sum.add_metric(key, row["duration_seconds_sum"])
            duration_count.add_metric(key, row["duration_seconds_count"])
        last = GaugeMetricFamily("aads_orchestrator_last_switch_timestamp_seconds",
                                 "Start of the latest switch per target", labels=["target"])
        for target, ts in sorted(f["last_switch_timestamp_seconds"].items()):
            last.add_metric([target], ts)
        backups = CounterMetricFamily("aads_orchestrator_backups", "Backups recorded in the ledger",
                                      labels=["operation"])
        for operation in ("create", "restore"):
            backups.add_metric([operation], f["backups"].get(operation, 0))
        out: list[Metric] = [total, duration_sum, duration_count, last, backups]
        if f["last_backup_timestamp_seconds"]:
            last_backup = GaugeMetricFamily("aads_orchestrator_last_backup_timestamp_seconds",
                                            "When the latest backup was created")
            last_backup.add_metric([], f["last_backup_timestamp_seconds"])
            out.append(last_backup)
        return out


def exposition(figures: dict[str, Any]) -> bytes:
    """Prometheus text format of `ledger_figures(...)`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_LedgerCollector(figures))  # type: ignore[arg-type]
    return generate_latest(registry)


def push(figures: dict[str, Any], url: str, instance: str, timeout_s: float = 10.0) -> str:
    """PUT the figures to a pushgateway (replacing this instance's group); the group URL.

    Raises:
        PushError: unreachable, or an answer other than 2xx.
    """
    group = f"{url.rstrip('/')}/metrics/job/{JOB}/instance/{instance}"
    try:
        r = httpx.put(group, content=exposition(figures), timeout=timeout_s,
                      headers={"Content-Type": "text/plain; version=0.0.4"})
    except httpx.HTTPError as e:
        raise PushError(f"pushgateway at {url} cannot be reached ({type(e).__name__}: {e}); "
                        "is the monitoring stack up (`docker compose ... up pushgateway`)?") from None
    if not r.is_success:
        raise PushError(f"pushgateway at {url} answered HTTP {r.status_code}: {r.text.strip()[:200]}")
    return group
