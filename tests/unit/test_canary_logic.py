"""The pure parts of the canary: threshold logic, PromQL builders, edge weight commands, ledger figures.
(The queries themselves run against a real Prometheus in tests/monitoring.)"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.canary import FAIL, PASS, WAIT, Figures, Thresholds, judge
from orchestrator.canary import queries as q
from orchestrator.canary.compare import window_seconds
from orchestrator.canary.edge_weights import (
    EdgeWeightError,
    EdgeWeights,
    parse_weight,
    weight_command,
    weights_for_share,
)
from orchestrator.ledger import Ledger
from orchestrator.ledger_metrics import exposition, ledger_figures

HEALTHY = Figures(window_s=60, candidate_diagnoses=50, live_diagnoses=450, error_rate=0.0, p99_ratio=1.1,
                  candidate_review_share=0.2, live_review_share=0.18, review_increase=0.02,
                  decision_divergence=0.08, ood_shift=0.1)


def with_(**changes) -> Figures:
    return Figures(**{**HEALTHY.to_dict(), **changes})


def test_a_healthy_step_passes():
    v = judge(HEALTHY, Thresholds())
    assert (v.outcome, v.metric) == (PASS, None)


@pytest.mark.parametrize("changes, metric", [
    ({"error_rate": 0.02}, "error_rate"),
    ({"p99_ratio": 2.0}, "p99_ratio"),
    ({"review_increase": 0.3}, "review_increase"),
    ({"decision_divergence": 0.4}, "decision_divergence"),
    ({"ood_shift": 0.5}, "ood_shift"),
])
def test_each_figure_over_its_threshold_fails_naming_it(changes, metric):
    v = judge(with_(**changes), Thresholds())
    assert (v.outcome, v.metric) == (FAIL, metric)
    assert metric in v.reason and ">" in v.reason


def test_a_figure_at_its_threshold_passes():
    t = Thresholds()
    assert judge(with_(error_rate=t.max_error_rate, p99_ratio=t.max_p99_ratio), t).outcome == PASS


def test_errors_are_judged_before_the_model_behaviour():
    assert judge(with_(error_rate=0.5, decision_divergence=0.9), Thresholds()).metric == "error_rate"


@pytest.mark.parametrize("changes", [{"candidate_diagnoses": 5}, {"live_diagnoses": None}, {"candidate_diagnoses": 19}])
def test_too_little_traffic_waits(changes):
    v = judge(with_(**changes), Thresholds(min_diagnoses=20))
    assert (v.outcome, v.metric) == (WAIT, "traffic")


def test_a_missing_latency_waits_but_missing_ood_scores_do_not_block():
    assert judge(with_(p99_ratio=None), Thresholds()).outcome == WAIT
    assert judge(with_(ood_shift=None), Thresholds()).outcome == PASS


def test_thresholds_from_config_reject_unknown_keys():
    assert Thresholds.from_dict({"max_p99_ratio": "2", "min_diagnoses": 50}).max_p99_ratio == 2.0
    with pytest.raises(ValueError, match="unknown canary threshold.*max_p99"):
        Thresholds.from_dict({"max_p99": 2})


def test_matchers_escape_values_and_reject_bad_labels():
    assert q.matcher("version", 'v1"} or up{x="') == 'version="v1\\"} or up{x=\\""'
    with pytest.raises(ValueError):
        q.matcher("bad-label", "x")
    with pytest.raises(ValueError):
        q.diagnoses('version="a"', "5 minutes")
    assert q.window(0.2) == "1s" and q.window(59.6) == "60s"


def test_compare_windows():
    assert window_seconds("10m") == 600 and window_seconds("90s") == 90 and window_seconds("1d") == 86400
    for bad in ("0m", "10", "1w", "-5m", "m"):
        with pytest.raises(ValueError, match="expected a duration"):
            window_seconds(bad)


def test_weights_for_a_share():
    assert weights_for_share(10) == (90, 10) and weights_for_share(100) == (0, 100) and weights_for_share(0) == (100, 0)
    with pytest.raises(ValueError):
        weights_for_share(101)
    assert weight_command("green", 10) == "set weight slots/green 10"
    with pytest.raises(ValueError):
        weight_command("green; shutdown", 10)
    with pytest.raises(ValueError):
        weight_command("green", 257)
    assert parse_weight("10 (initial 1)\n\n") == 10
    with pytest.raises(EdgeWeightError):
        parse_weight("No such server.")


def test_set_share_orders_the_weights_so_the_candidate_never_overshoots():
    """Against a recorder of the command lines (the real HAProxy: tests/integration/test_monitoring_stack.py)."""
    weights = {"blue": 1, "green": 0}
    sent = []

    def send(line: str) -> str:
        sent.append(line)
        words = line.split()
        server = words[2].split("/")[1]
        if words[0] == "set":
            weights[server] = int(words[3])
            return ""
        return f"{weights[server]} (initial 1)\n"

    edge = EdgeWeights(send)
    edge.set_share("blue", "green", 10)
    assert weights == {"blue": 90, "green": 10}
    assert [s for s in sent if s.startswith("set")] == ["set weight slots/blue 90", "set weight slots/green 10"]
    sent.clear()
    edge.set_share("blue", "green", 0)
    assert [s for s in sent if s.startswith("set")] == ["set weight slots/green 0", "set weight slots/blue 100"]


def test_ledger_figures_count_switches_and_backups(tmp_path):
    ledger = Ledger(tmp_path)
    for outcome in ("succeeded", "succeeded", "failed"):
        sw = ledger.begin_switch(target="local", action="switch", to_version="v2", from_version="v1",
                                 digest="sha256:" + "a" * 64, command="switch v2", data={})
        sw = sw.id
        ledger.finish_switch(sw, outcome)
    ledger.add_event("backup", "created aads-v1.tar", version="v1")
    ledger.add_event("backup", "restored v1 from aads-v1.tar", version="v1")
    figures = ledger_figures(ledger)
    counts = {(r["action"], r["outcome"]): r["count"] for r in figures["switches"]}
    assert counts == {("switch", "succeeded"): 2, ("switch", "failed"): 1}
    assert figures["backups"] == {"create": 1, "restore": 1} and figures["last_backup_timestamp_seconds"]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(exposition(figures).decode()) for s in f.samples}
    assert samples[("aads_orchestrator_switches_total",
                    (("action", "switch"), ("outcome", "succeeded"), ("target", "local")))] == 2
    assert samples[("aads_orchestrator_backups_total", (("operation", "create"),))] == 1
    ledger.close()


# -- the steps (run_steps) with a recording edge and canned verdicts: the order of effects ------------------

def _recording_edge():
    weights = {"blue": 1, "green": 0}
    log: list[str] = []

    def send(line: str) -> str:
        words = line.split()
        server = words[2].split("/")[1]
        if words[0] == "set":
            weights[server] = int(words[3])
            log.append(f"{server}={words[3]}")
            return ""
        return f"{weights[server]} (initial 1)\n"

    return EdgeWeights(send), weights, log


def _verdicts(*outcomes):
    from orchestrator.canary.analysis import Verdict

    it = iter(outcomes)

    def judge_step(prom, candidate, live, step_s, thresholds, on_wait=None):
        outcome, metric = next(it)
        return Verdict(outcome, metric, f"{metric} over", HEALTHY)
    return judge_step


def test_steps_promote_through_every_share_and_record_each():
    from orchestrator.canary.steps import run_steps

    edge, weights, _ = _recording_edge()
    recorded = []
    results = run_steps(edge, None, live_slot="blue", candidate_slot="green", candidate='version="b"',
                        live='version="a"', shares=[10, 50, 100], step_s=60, record=recorded.append,
                        sleep=lambda s: None, judge_step=_verdicts((PASS, None), (PASS, None), (PASS, None)))
    assert [r.share for r in results] == [10, 50, 100] == [r.share for r in recorded]
    assert [r.weights for r in results] == [(90, 10), (50, 50), (0, 100)]
    assert weights == {"blue": 0, "green": 100}


def test_a_failed_step_gives_live_everything_back_before_raising():
    from orchestrator.canary.steps import CanaryFailed, run_steps
    from orchestrator.errors import SwitchFailed

    edge, weights, log = _recording_edge()
    recorded = []
    with pytest.raises(CanaryFailed, match="canary step 50%: analysis failed on review_increase") as e:
        run_steps(edge, None, live_slot="blue", candidate_slot="green", candidate='version="b"', live='version="a"',
                  shares=[10, 50, 100], step_s=60, record=recorded.append, sleep=lambda s: None,
                  judge_step=_verdicts((PASS, None), (FAIL, "review_increase")))
    assert isinstance(e.value, SwitchFailed) and e.value.exit_code == 5 and e.value.verdict.metric == "review_increase"
    assert weights == {"blue": 100, "green": 0} and log[-2:] == ["green=0", "blue=100"]
    assert [(r.share, r.verdict.outcome) for r in recorded] == [(10, PASS), (50, FAIL)]


@pytest.mark.parametrize("text", ["", "50,10,100", "10,50", "0,100", "10,x,100", "10,10,100", "10,150"])
def test_bad_canary_steps_are_refused(text):
    from orchestrator.canary.steps import parse_shares

    with pytest.raises(ValueError, match="canary steps"):
        parse_shares(text)


def test_canary_steps_parse():
    from orchestrator.canary.steps import parse_shares

    assert parse_shares("10,50,100") == [10, 50, 100] and parse_shares("100") == [100]


def test_orchestrator_metrics_prints_the_ledger_totals_and_fails_in_one_line_when_the_push_fails(
        tmp_path, monkeypatch, capsys):
    import json

    from orchestrator.cli import main

    monkeypatch.setenv("AADS_STATE_DIR", str(tmp_path))
    ledger = Ledger(tmp_path)
    sw = ledger.begin_switch(target="local", action="up", to_version="v1", from_version=None, digest=None,
                             command="up v1")
    ledger.finish_switch(sw.id, "succeeded")
    ledger.close()
    assert main(["metrics", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["switches"][0] | {"duration_seconds_sum": 0} == {
        "target": "local", "action": "up", "outcome": "succeeded", "count": 1,
        "duration_seconds_sum": 0, "duration_seconds_count": 1}
    assert main(["metrics"]) == 0
    assert 'aads_orchestrator_switches_total{action="up",outcome="succeeded",target="local"} 1.0' in capsys.readouterr().out
    assert main(["metrics", "--push", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pushgateway at http://127.0.0.1:9 cannot be reached" in err[0]
