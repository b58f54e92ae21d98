"""Every compose switch keeps the target's Prometheus running when `monitoring` is on; a plain switch
goes on with a warning when it cannot start, a canary (judged from it) does not. Same doubles as
tests/unit/test_compose_switch_flow.py.
"""

from __future__ import annotations

import pytest

from orchestrator.errors import EngineError, SwitchFailed
from tests.unit.test_canary_switch_flow import canary_project  # noqa: F401 - the fixture
from tests.unit.test_compose_switch_flow import NEW, OLD, project  # noqa: F401 - the fixture


def broken_monitoring():
    raise EngineError("prometheus image build failed (on purpose)")


@pytest.mark.parametrize("on", [True, False])
def test_a_switch_starts_monitoring_only_when_the_target_has_it(project, on):
    backend = project()
    backend.stack.spec = backend.stack.spec.model_copy(update={"monitoring": on})
    assert backend.switch(NEW)["outcome"] == "succeeded"
    assert backend.monitoring_started == (1 if on else 0)


def test_a_plain_switch_goes_on_with_a_warning_when_monitoring_cannot_start(project, capsys):
    backend = project()
    backend.ensure_monitoring = broken_monitoring
    assert backend.switch(NEW)["outcome"] == "succeeded"
    assert "warning: monitoring not started: prometheus image build failed (on purpose)" in capsys.readouterr().err


def test_a_canary_without_monitoring_fails_at_start(canary_project):
    backend = canary_project()
    backend.ensure_monitoring = broken_monitoring
    with pytest.raises(SwitchFailed, match="failed at start: prometheus image build failed"):
        backend.switch(NEW, canary=[10, 100], step_s=0.01)
    assert backend.ctx.ledger.live("local").version == OLD
