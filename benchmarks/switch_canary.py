"""The canary run of `make bench-switch`: a switch in steps (`--canary 10,50,100 --step 20s`) under
the same constant load as the other runs, plus a small diagnosis load the analysis can judge.

What it measures:
  failed requests   of both loads, per client kind (target 0);
  step overhead     each canary-N step as the ledger timed it (set the weights, run the step,
                    analysis, any bounded wait for traffic) minus the configured step time, and
                    the command's wall time minus the sum of the configured step times;
  share per step    the requests the candidate answered during each step over all answered,
                    against the configured share, from HAProxy's per-server counters (sampled
                    every half second through the runtime API) and, as a check, from the versions
                    the load's own answers named. The ledger's canary events give the boundaries:
                    a step ends at its event's time and began `seconds` before.

The random demo model sets decide differently (the demo shows the analysis stopping them), so the
bench target opens the model-behaviour thresholds: this run measures the canary's mechanics; the
analysis itself is proven by tests/integration/test_canary_switch.py and tests/monitoring.
"""

from __future__ import annotations

import datetime as dt
import io
import threading
import time
from itertools import cycle
from typing import Any

from benchmarks.loadgen import LoadGenerator, LoadResult, LoadSpec, with_nonce

BOUNDARY = "aadsbenchcanary"
# The bench target's analysis: errors judged as shipped; the figures the two random demo sets
# differ in opened; few diagnoses needed (the bench's diagnosis load is light).
THRESHOLDS = {"min_diagnoses": 4, "max_p99_ratio": 20.0, "max_review_increase": 1.0,
              "max_decision_divergence": 1.0, "max_ood_shift": 1.0, "max_wait_s": 120, "poll_s": 2}
SAMPLE_S = 0.5


def leaf_pool(version_dir, n: int = 24) -> list[bytes]:
    """`n` synthetic leaves over every crop/disease of the version (PNG bytes)."""
    from serving.manifest import load_manifest
    from serving.synthetic import leaf_image

    classes = [(crop, d) for crop, ds in load_manifest(version_dir).crops.items() for d in ds]
    pool = []
    for i in range(n):
        crop, disease = classes[i % len(classes)]
        buf = io.BytesIO()
        leaf_image(crop, disease, i // len(classes), seed=23).save(buf, "PNG")
        pool.append(buf.getvalue())
    return pool


def diagnose_load(url: str, pool: list[bytes], *, rate: float, headers: tuple) -> LoadGenerator:
    leaves = cycle(pool)
    lock = threading.Lock()

    def body() -> bytes:
        with lock:
            leaf = next(leaves)
        head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="leaf.png"\r\n'
                "Content-Type: image/png\r\n\r\n").encode()
        return head + with_nonce(leaf) + f"\r\n--{BOUNDARY}--\r\n".encode()

    return LoadGenerator(LoadSpec(url=url, rate=rate, duration_s=900, clients=1, method="POST", body_factory=body,
                                  content_type=f"multipart/form-data; boundary={BOUNDARY}", timeout_s=60,
                                  track_key="version", headers=headers))


class EdgeSampler(threading.Thread):
    """(unix time, {slot: HTTP answers so far}) every SAMPLE_S from the edge's runtime API."""

    def __init__(self, edge_container):
        super().__init__(name="edge-sampler", daemon=True)
        from orchestrator.backends.compose.haproxy import EdgeRuntime

        self.rt = EdgeRuntime.for_container(edge_container)
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                counts = {slot: st.http_total for slot, st in self.rt.stats().items()}
                self.samples.append((time.time(), counts))
            except Exception:  # noqa: BLE001 - a missed sample only widens the interval
                pass
            self.stopping.wait(SAMPLE_S)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)

    def answered(self, t0: float, t1: float) -> dict[str, int] | None:
        """Answers per slot between the samples nearest to [t0, t1] (inside it)."""
        inside = [(t, c) for t, c in self.samples if t0 <= t <= t1]
        if len(inside) < 2:
            return None
        (_, a), (_, b) = inside[0], inside[-1]
        return {slot: b.get(slot, 0) - a.get(slot, 0) for slot in b}


def unix(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def step_rows(canary: list[dict[str, Any]], step_s: float, phases: dict[str, float], sampler: EdgeSampler,
              cand_slot: str, loads: list[tuple[LoadResult, float]], new: str) -> list[dict[str, Any]]:
    """One row per step: its share, time, overhead and what the candidate answered in it.

    `loads` holds each load's result with the unix time of its t0 (its samples' times are relative)."""
    rows = []
    for step in canary:
        t1 = unix(step["at"])
        t0 = t1 - step["seconds"]
        edge = sampler.answered(t0, t1)
        cand_edge = None if not edge or not sum(edge.values()) else edge.get(cand_slot, 0) / sum(edge.values())
        answers = [s.answer for res, start in loads for s in res.samples
                   if s.ok and s.answer and t0 <= start + s.t <= t1]
        cand_load = None if not answers else sum(a == new for a in answers) / len(answers)
        seconds = phases.get(f"canary-{step['share']}", step["seconds"])
        rows.append({"share": step["share"], "weights": step["weights"], "outcome": step["outcome"],
                     "step_s": round(seconds, 2), "overhead_s": round(seconds - step_s, 2),
                     "edge_answered": edge, "candidate_share_edge": _pct(cand_edge),
                     "load_answers": len(answers), "candidate_share_load": _pct(cand_load),
                     "figures": step.get("figures")})
    return rows


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 1)


def markdown(run: dict[str, Any]) -> list[str]:
    outcome_note = f" ({run['error']})" if run.get("error") else ""
    thresholds = ", ".join(f"`{k}` {v:g}" for k, v in run["thresholds"].items())
    lines = ["", f"### Canary run ({run['from']} → {run['to']})", "",
             f"`orchestrator {run['argv']}` on the same stack and the same GET load, plus a diagnosis load of "
             f"{run['diagnose_rate']:g} req/s per client kind (1 thread each; {run['pool']} synthetic leaves, fresh bytes "
             "per request) so the analysis has evidence. The step time is shortened for the bench "
             f"(production default: `--step 60s`). Analysis thresholds of the bench target: {thresholds} "
             "(model-behaviour limits opened: the two random demo sets decide differently; this run measures "
             "the mechanics, tests/integration/test_canary_switch.py proves the analysis).", "",
             f"Outcome {run['outcome']}{outcome_note}; command wall {run['wall_s']:.2f} s, of which the configured "
             f"step times {run['steps_configured_s']:g} s: {run['wall_minus_steps_s']:.2f} s outside the steps "
             "(start, ready, smoke, drain, stop, CLI start-up).", "",
             "| step | weights live:candidate | step s (ledger) | overhead s | candidate share, HAProxy counters "
             "| candidate share, load's answers | analysis |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in run["steps"]:
        f = r["figures"] or {}
        lines.append(f"| {r['share']}% | {r['weights'][0]}:{r['weights'][1]} | {r['step_s']:.2f} | "
                     f"{r['overhead_s']:.2f} | {_pct_text(r['candidate_share_edge'])} | {_pct_text(r['candidate_share_load'])} "
                     f"({r['load_answers']} answers) | {r['outcome']}: diagnoses "
                     f"{_n(f.get('candidate_diagnoses'))} vs {_n(f.get('live_diagnoses'))}, p99 ratio "
                     f"{_n(f.get('p99_ratio'), 2)} |")
    f, k = run["load"]["fresh"], run["load"]["keepalive"]
    lines += ["", f"Requests (GET + diagnosis): fresh {f['sent']} sent / {f['failed']} failed, keep-alive "
              f"{k['sent']} / {k['failed']} (target 0 failed). \"Overhead\" is the step's time beyond the "
              "configured step: setting the weights, the analysis queries and any bounded wait for enough "
              "diagnoses; the 100% step is judged over the whole canary."]
    return lines


def _pct_text(v: float | None) -> str:
    return "–" if v is None else f"{v:g}%"


def _n(v: float | None, digits: int = 0) -> str:
    return "–" if v is None else f"{v:.{digits}f}"
