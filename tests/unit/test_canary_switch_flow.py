"""The compose switch with canary steps, without an engine: the order of the weight moves, what the
ledger keeps, and a failed analysis (weight 0 first, flip back, digest marked naming the metric).

The stack and checks are test_compose_switch_flow.py's recorder; the edge is its fake HAProxy
runtime API plus server weights; the analysis is replaced by scripted verdicts (the analysis itself
is proven against a real Prometheus in tests/monitoring, the whole canary on the engine in
tests/integration/test_canary_switch.py).
"""

from __future__ import annotations

import pytest

from orchestrator.backends.compose import canary_shift, repair
from orchestrator.backends.compose.switch import candidates_fault
from orchestrator.canary.analysis import FAIL, PASS, Figures, Verdict
from orchestrator.canary.edge_weights import EdgeWeights
from orchestrator.errors import CanaryFailed, SwitchFailed
from tests.unit.test_compose_switch_flow import (  # noqa: F401 - project: the fixture
    NEW,
    OLD,
    digest,
    interrupted_switch,
    project,
)
from tests.unit.test_haproxy import SlowEdge

FIGURES = Figures(window_s=1, candidate_diagnoses=30, live_diagnoses=90, error_rate=0.0, p99_ratio=1.0,
                  candidate_review_share=0.1, live_review_share=0.1, review_increase=0.0,
                  decision_divergence=0.0, ood_shift=0.0)


class WeightedEdge(SlowEdge):
    """The fake runtime API with `set weight` / `get weight`, weights shown in `show servers state`."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.weights = {"blue": 1, "green": 1}

    def __call__(self, argv):
        line = argv[-1]
        if line.startswith("get weight"):
            return 0, f"{self.weights[line.split('/')[-1]]} (initial 1)\n"
        if line.startswith("set weight"):
            _, _, server, weight = line.split()
            self.weights[server.split("/")[1]] = int(weight)
            self.log.append(("set", line))
            return 0, "\n"
        code, out = super().__call__(argv)
        if line.startswith("show servers state"):
            rows = out.splitlines()
            for i, row in enumerate(rows[2:], 2):
                words = row.split()
                words[7] = str(self.weights[words[3]])
                rows[i] = " ".join(words)
            out = "\n".join(rows) + "\n"
        return code, out


class Edge:
    status = "running"


@pytest.fixture
def canary_project(project, monkeypatch):  # noqa: F811 - the imported fixture
    verdicts: dict[int, Verdict] = {}

    def make(fail_at: str | None = None):
        backend = project(fail_at=fail_at)
        backend.fake_edge = WeightedEdge(up_after=1)
        monkeypatch.setattr(backend.stack, "containers", lambda: {"edge": Edge()})
        monkeypatch.setattr(canary_shift.EdgeWeights, "for_container",
                            classmethod(lambda cls, c: EdgeWeights(lambda line: backend._exec(["sh", line])[1])))
        backend.verdicts = verdicts
        return backend

    def analyse(prom, candidate, live, window_s, thresholds, on_wait=None):
        asked.append((candidate, live, round(window_s, 1)))
        share = current["share"]
        return verdicts.get(share, Verdict(PASS, None, "every figure within its threshold", FIGURES))

    asked: list = []
    current = {"share": 0}
    real_run_steps = canary_shift.run_steps

    def run_steps(edge, prom, *, shares, **kw):
        current["share"] = shares[0]
        return real_run_steps(edge, prom, shares=shares, **kw)

    monkeypatch.setattr(canary_shift, "analyse", analyse)
    monkeypatch.setattr(canary_shift, "run_steps", run_steps)
    monkeypatch.setattr(canary_shift, "SCRAPE_INTERVAL_S", 0)
    make.asked = asked
    return make


def weight_sets(backend) -> list[str]:
    return [e[1].removeprefix("set weight slots/") for e in backend.fake_edge.log
            if e[0] == "set" and e[1].startswith("set weight")]


def test_every_step_moves_the_share_then_judges_it_and_the_ledger_keeps_each(canary_project):
    backend = canary_project()
    out = backend.switch(NEW, canary=[10, 50, 100], step_s=0.01)
    assert out["outcome"] == "succeeded" and out["slot"] == "green"
    # Joins at 0 (live 100), then each share: the candidate's weight down first, up last; then reset.
    assert weight_sets(backend) == ["green 0", "blue 100", "blue 90", "green 10", "blue 50", "green 50",
                                    "blue 0", "green 100", "blue 1", "green 1"]
    assert [(s["share"], s["weights"], s["outcome"]) for s in out["canary"]] == [
        (10, [90, 10], "pass"), (50, [50, 50], "pass"), (100, [0, 100], "pass")]
    # Two versions: told apart by version; the 100 step is judged over the whole canary.
    assert canary_project.asked[0][:2] == (f'version="{NEW}"', f'version="{OLD}"')
    sw = backend.ctx.ledger.history("local")[-1]
    assert list(sw.phases)[:7] == ["resolve", "start", "ready", "smoke", "canary-10", "canary-50", "canary-100"]
    assert "canary" in sw.phases and "flip" not in sw.phases and sw.data["canary"] == [10, 50, 100]
    entry = backend.history()["entries"][-1]
    assert [(s["share"], s["outcome"], s["slot"]) for s in entry["canary"]] == [
        (10, "pass", "green"), (50, "pass", "green"), (100, "pass", "green")]
    assert backend.ctx.ledger.live("local").version == NEW
    assert backend.rt.serving_slots() == ["green"]


def test_a_failed_analysis_sets_weight_0_first_then_flips_back_and_marks_the_digest_with_the_metric(canary_project):
    backend = canary_project()
    backend.verdicts[50] = Verdict(FAIL, "review_increase", "review_increase 0.400 > 0.1 (increase of the share "
                                                            "sent to review)", FIGURES)
    with pytest.raises(SwitchFailed) as err:
        backend.switch(NEW, canary=[10, 50, 100], step_s=0.01)
    assert err.value.exit_code == 5
    assert "reverted at canary: canary step 50%: analysis failed on review_increase" in str(err.value)
    sets = weight_sets(backend)
    assert sets[:6] == ["green 0", "blue 100", "blue 90", "green 10", "blue 50", "green 50"]
    assert sets[6:8] == ["green 0", "blue 100"]  # at once, before anything else
    assert sets[-2:] == ["blue 1", "green 1"]
    assert [e for e in backend.events if "weight" not in e][-3:] == [
        "edge: green state drain", "edge: green state maint", "stop green"]
    sw = backend.ctx.ledger.history("local")[-1]
    assert sw.outcome == "reverted" and "review_increase" in sw.reason
    reasons = [r["reason"] for r in backend.ctx.ledger.failed_digests()[digest(NEW)]]
    assert any("analysis failed on review_increase" in r for r in reasons)
    entry = backend.history()["entries"][-1]
    assert [(s["share"], s["outcome"], s["metric"]) for s in entry["canary"]] == [
        (10, "pass", None), (50, "fail", "review_increase")]
    assert backend.ctx.ledger.live("local").version == OLD


def test_too_little_traffic_to_judge_reverts_without_blaming_the_image(canary_project):
    backend = canary_project()
    backend.verdicts[10] = Verdict(FAIL, "traffic", "candidate diagnosed 2 images in 120s, fewer than the 20 "
                                                    "needed to judge (waited 120s, the bound is 120s)", FIGURES)
    with pytest.raises(SwitchFailed, match="analysis failed on traffic"):
        backend.switch(NEW, canary=[10, 100], step_s=0.01)
    assert backend.ctx.ledger.failed_digests() == {}
    assert backend.ctx.ledger.history("local")[-1].outcome == "reverted"


def test_the_targets_canary_is_the_default_and_the_command_overrides_it(canary_project):
    backend = canary_project()
    backend.spec = backend.spec.model_copy(update={"canary": [20, 100], "canary_step_s": 0.01})
    out = backend.switch(NEW)
    assert [s["share"] for s in out["canary"]] == [20, 100]


def test_without_canary_no_weight_is_touched(canary_project):
    backend = canary_project()
    out = backend.switch(NEW)
    assert "canary" not in out and weight_sets(backend) == []
    assert "flip" in out["phases"]


def test_only_a_judged_failure_is_the_candidates_fault():
    fail = Verdict(FAIL, "decision_divergence", "x", FIGURES)
    assert candidates_fault(CanaryFailed(10, fail))
    assert not candidates_fault(CanaryFailed(10, Verdict(FAIL, "traffic", "x", FIGURES)))


@pytest.mark.parametrize(("live", "cand_slot", "expected"), [
    ("v1", "green", ('version="v2"', 'version="v1"')),
    ("v2", "green", ('slot="green"', 'slot="blue"')),
])
def test_the_two_sides_are_told_apart_by_version_or_by_slot(live, cand_slot, expected):
    assert canary_shift.matchers("v2", live, cand_slot, "blue") == expected


def test_a_repair_of_a_canary_killed_at_the_last_step_gives_live_its_weight_back(canary_project):
    backend = canary_project()
    sw = interrupted_switch(backend, "canary-100")
    backend.ctx.ledger.enter_step(sw.id, "canary-100", canary=[10, 100])
    backend.fake_edge.weights = {"blue": 0, "green": 100}  # as a kill -9 during the 100% step leaves them
    with backend._lock():
        done = repair.repair_unfinished(backend)
    assert [d["id"] for d in done] == [sw.id]
    assert backend.fake_edge.weights == {"blue": 1, "green": 1}
    assert backend.ctx.ledger.switch(sw.id).outcome == "interrupted"


@pytest.mark.parametrize("fail_at", ["confirm", "watch"])
def test_a_failure_after_the_last_step_gives_live_its_weight_back_before_flipping_back(canary_project, fail_at):
    """At 100% live's weight is 0: flipping back onto it waits for a server that never serves unless
    its weight comes back first (seen on the engine: `flipping back failed: edge did not see slot
    green up`, the candidate left enabled while it was stopped)."""
    backend = canary_project(fail_at=fail_at)
    with pytest.raises(SwitchFailed) as err:
        backend.switch(NEW, canary=[10, 100], step_s=0.01)
    assert err.value.exit_code == 5 and f"reverted at {fail_at}" in str(err.value)
    assert "flipping back failed" not in str(err.value), str(err.value)
    sets = weight_sets(backend)
    assert sets[-4:] == ["green 0", "blue 100", "blue 1", "green 1"], sets
    back = backend.events.index("edge: blue state ready")
    assert [e for e in backend.events[back:] if "weight" not in e] == [
        "edge: blue state ready", "edge: green state drain", "edge: green state maint", "stop green"]
    assert backend.rt.serving_slots() == ["blue"]
    assert backend.ctx.ledger.live("local").version == OLD
