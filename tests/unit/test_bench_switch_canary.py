"""benchmarks/switch_canary.py: the canary run's per-step figures from the ledger's boundaries, the
edge's counters and the load's answers (pure parts; the run itself is `make bench-switch`)."""

from __future__ import annotations

import datetime as dt

from benchmarks import switch_canary as sc
from benchmarks.loadgen import LoadResult, LoadSpec, _Sample


def sampler(samples):
    s = sc.EdgeSampler.__new__(sc.EdgeSampler)
    s.samples = samples
    return s


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds")


def test_each_step_gets_the_candidates_share_between_its_boundaries():
    # Step 10%: 1000..1020, step 100%: 1020..1030 (the ledger's event time minus its seconds).
    edge = sampler([(1000.5, {"blue": 0, "green": 0}), (1019.5, {"blue": 180, "green": 20}),
                    (1020.5, {"blue": 181, "green": 21}), (1029.5, {"blue": 181, "green": 121})])
    canary = [{"share": 10, "weights": [90, 10], "seconds": 20.0, "at": iso(1020), "outcome": "pass"},
              {"share": 100, "weights": [0, 100], "seconds": 10.0, "at": iso(1030), "outcome": "pass"}]
    spec = LoadSpec(url="http://127.0.0.1:1/x")
    # The load started at unix 990: a sample at t=15 was sent at 1005 (step 10%), t=35 at 1025 (step 100%).
    load = LoadResult(spec, 60.0, [_Sample(15, "fresh", True, 0.1, answer="old"),
                                   _Sample(16, "fresh", True, 0.1, answer="new"),
                                   _Sample(35, "fresh", True, 0.1, answer="new"),
                                   _Sample(36, "keepalive", False, 0.1, error="timeout")])
    rows = sc.step_rows(canary, 8.0, {"canary-10": 21.5}, edge, "green", [(load, 990.0)], "new")
    assert [r["share"] for r in rows] == [10, 100]
    assert rows[0]["candidate_share_edge"] == 10.0 and rows[1]["candidate_share_edge"] == 100.0
    assert rows[0]["candidate_share_load"] == 50.0 and rows[0]["load_answers"] == 2
    assert rows[1]["candidate_share_load"] == 100.0 and rows[1]["load_answers"] == 1
    assert rows[0]["step_s"] == 21.5 and rows[0]["overhead_s"] == 13.5  # from the phase when recorded
    assert rows[1]["step_s"] == 10.0 and rows[1]["overhead_s"] == 2.0   # else the event's seconds


def test_a_step_with_too_few_edge_samples_has_no_share():
    edge = sampler([(1000.5, {"blue": 0, "green": 0})])
    canary = [{"share": 10, "weights": [90, 10], "seconds": 20.0, "at": iso(1020), "outcome": "pass"}]
    [row] = sc.step_rows(canary, 20.0, {}, edge, "green", [], "new")
    assert row["candidate_share_edge"] is None and row["candidate_share_load"] is None
    text = "\n".join(sc.markdown({
        "from": "a", "to": "b", "argv": "switch b --canary 10,100 --step 20s", "diagnose_rate": 1, "pool": 24,
        "thresholds": sc.THRESHOLDS, "outcome": "succeeded", "wall_s": 50.0, "steps_configured_s": 40.0,
        "wall_minus_steps_s": 10.0, "steps": [row],
        "load": {"fresh": {"sent": 3, "failed": 0}, "keepalive": {"sent": 3, "failed": 0}}}))
    assert "| 10% | 90:10 | 20.00 | 0.00 | – | – (0 answers) |" in text, text
    assert "Outcome succeeded; command wall 50.00 s, of which the configured step times 40 s: 10.00 s" in text, text


def test_fresh_bytes_keep_the_same_image():
    import io

    from PIL import Image

    png = sc.leaf_pool(__import__("pathlib").Path(__file__).resolve().parents[2] / "versions" / "v5.5.4-dinov3", n=2)[0]
    a, b = sc.with_nonce(png), sc.with_nonce(png)
    assert a != b and a != png
    assert Image.open(io.BytesIO(a)).tobytes() == Image.open(io.BytesIO(png)).tobytes()
