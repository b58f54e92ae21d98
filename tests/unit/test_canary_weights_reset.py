"""A canary switch whose edge refuses to put the weights back: the switch's outcome stands, the
problem is said in its reason (never hidden, never a failure of its own), and the canary steps'
phases are in the result. Same doubles as tests/unit/test_canary_switch_flow.py.
"""

from __future__ import annotations

import pytest

from orchestrator.canary.analysis import FAIL, Verdict
from orchestrator.errors import SwitchFailed
from tests.unit.test_canary_switch_flow import FIGURES, WeightedEdge, canary_project  # noqa: F401 - fixture
from tests.unit.test_compose_switch_flow import NEW, OLD, project  # noqa: F401 - the fixture canary_project uses


class RefusesTheReset(WeightedEdge):
    """Answers an error to `set weight slots/<slot> 1`, the reset after a canary."""

    def __call__(self, argv):
        if argv[-1].startswith("set weight") and argv[-1].endswith(" 1"):
            return 0, "cannot set the weight now (on purpose)\n"
        return super().__call__(argv)


def refusing(backend):
    backend.fake_edge = RefusesTheReset(up_after=1)
    return backend


def test_a_canary_that_succeeds_says_the_weights_were_not_reset_and_keeps_its_step_phases(canary_project, capsys):
    backend = refusing(canary_project())
    out = backend.switch(NEW, canary=[10, 100], step_s=0.01)
    assert out["outcome"] == "succeeded"
    assert out["reason"].startswith("edge weights not reset: the edge refused `set weight slots/"), out["reason"]
    assert "cannot set the weight now (on purpose)" in out["reason"]
    assert {"canary-10", "canary-100", "drain", "finish"} <= set(out["phases"]), out["phases"]
    assert "warning: edge weights not reset" in capsys.readouterr().err
    assert backend.ctx.ledger.history("local")[-1].reason == out["reason"]


def test_a_reverted_canary_says_the_weights_were_not_reset(canary_project):
    backend = refusing(canary_project())
    backend.verdicts[10] = Verdict(FAIL, "error_rate", "error_rate 0.5 > 0.01", FIGURES)
    with pytest.raises(SwitchFailed) as err:
        backend.switch(NEW, canary=[10, 100], step_s=0.01)
    message = str(err.value)
    assert "analysis failed on error_rate" in message
    assert ("error_rate 0.5 > 0.01; edge weights not reset: the edge refused `set weight slots/blue 1`: "
            "cannot set the weight now (on purpose) (back on " + OLD + ")") in message, message
    assert "None" not in message
    sw = backend.ctx.ledger.history("local")[-1]
    assert sw.outcome == "reverted" and sw.reason.endswith("cannot set the weight now (on purpose)")
    assert backend.ctx.ledger.live("local").version == OLD


def test_when_flipping_back_and_the_weights_both_fail_the_reason_names_both(canary_project):
    backend = canary_project(fail_at="confirm and the edge dies")
    with pytest.raises(SwitchFailed) as err:
        backend.switch(NEW, canary=[10, 100], step_s=0.01)
    message = str(err.value)
    assert "; flipping back failed: edge runtime API failed (exit 126)" in message, message
    assert message.index("flipping back failed") < message.index("; edge weights not reset:"), message


def test_a_finished_canary_leaves_the_config_file_naming_the_new_slot_and_times_its_traffic(canary_project):
    import time

    from orchestrator.backends.compose.haproxy import config_live_slot

    backend = canary_project()
    started = time.monotonic()
    out = backend.switch(NEW, canary=[10, 100], step_s=0.01)
    took = time.monotonic() - started
    assert config_live_slot(backend.stack.cfg_path.read_text()) == out["slot"] == "green"
    assert isinstance(out["traffic_switched_s"], float) and 0 <= out["traffic_switched_s"] <= took, out


def test_a_canary_switch_that_fails_before_its_steps_still_records_the_planned_shares(canary_project):
    backend = canary_project(fail_at="smoke")
    with pytest.raises(SwitchFailed):
        backend.switch(NEW, canary=[10, 100], step_s=0.01)
    sw = backend.ctx.ledger.history("local")[-1]
    assert sw.outcome == "failed" and sw.data["canary"] == [10, 100], sw.data
