"""The switch's test pause hook (orchestrator/switchflow.py): the crash tests stop a switch with it."""

from __future__ import annotations

import threading
import time

from orchestrator import switchflow


def test_the_pause_hook_does_nothing_unless_its_point_is_named(monkeypatch, tmp_path):
    reached = tmp_path / "reached"
    monkeypatch.setenv("AADS_PAUSE_AT_STEP", "flip:drained")
    monkeypatch.setenv("AADS_PAUSE_SECONDS", "30")
    monkeypatch.setenv("AADS_PAUSE_REACHED_FILE", str(reached))
    switchflow.pause_hook("flip")
    switchflow.pause_hook("flip:enabled")
    assert not reached.exists()


def test_the_pause_hook_says_where_it_waits_and_goes_on_when_the_file_is_deleted(monkeypatch, tmp_path):
    reached = tmp_path / "reached"
    monkeypatch.setenv("AADS_PAUSE_AT_STEP", "flip:enabled")
    monkeypatch.delenv("AADS_PAUSE_SECONDS", raising=False)  # the 60 s default
    monkeypatch.setenv("AADS_PAUSE_REACHED_FILE", str(reached))
    waiter = threading.Thread(target=switchflow.pause_hook, args=("flip:enabled",), daemon=True)
    waiter.start()
    deadline = time.monotonic() + 60
    # the file is created, then written: wait for its content, not just its name
    while not (reached.exists() and reached.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reached.read_text() == "flip:enabled\n"
    assert waiter.is_alive()            # it waits there...
    reached.unlink()
    waiter.join(timeout=60)
    assert not waiter.is_alive()        # ...until the file is gone


def test_the_pause_hook_waits_the_pause_seconds_without_a_file(monkeypatch):
    monkeypatch.setenv("AADS_PAUSE_AT_STEP", "ready")
    monkeypatch.setenv("AADS_PAUSE_SECONDS", "0.2")
    monkeypatch.delenv("AADS_PAUSE_REACHED_FILE", raising=False)
    start = time.monotonic()
    switchflow.pause_hook("ready")
    assert time.monotonic() - start >= 0.2


# -- the shared flow (switchflow.run) ------------------------------------------------------------

import pytest

from orchestrator.errors import SwitchFailed, TamperError


class Ledger:
    """The few ledger calls the flow makes, recorded."""

    def __init__(self):
        self.calls: list[tuple] = []

    def enter_step(self, switch_id, name, **facts):
        self.calls.append(("enter", name, facts))

    def record_phase(self, switch_id, name, seconds):
        pass

    def mark_failed_digest(self, **kw):
        self.calls.append(("mark", kw["digest"], kw["reason"]))

    def finish_switch(self, switch_id, outcome, reason, db=None):
        self.calls.append(("finish", outcome, reason))


class Ctx:
    def __init__(self):
        self.ledger = Ledger()
        self.notes: list[str] = []
        import rich.console
        self.stderr = rich.console.Console(file=open("/dev/null", "w"))

    def note(self, text):
        self.notes.append(text)


class Record:
    id = 7


class Demo(switchflow.Switch):
    action, to_version, target = "switch", "v2", "local"
    step_names = {"shift": "flip"}

    def __init__(self, fail_at=None, error=RuntimeError, skip=()):
        self.done: list[str] = []
        self.fail_at, self.error, self.skip = fail_at, error, skip

    def plan(self, role):
        return None if role in self.skip else (role, {"role": role})

    def __getattribute__(self, name):
        if name in switchflow.ROLES:
            def work():
                self.done.append(name)
                if name == self.fail_at:
                    raise self.error(f"{name} broke (on purpose)\nsecond line")
            return work
        return object.__getattribute__(self, name)

    def finish(self, steps):
        return {"outcome": "succeeded", "done": list(self.done)}

    def revert(self, error, at):
        self.done.append(f"revert@{at}")
        return switchflow.Reverted("reverted" if at in ("flip", "confirm", "watch") else "failed",
                                   "flipping back failed" if at == "watch" else None)

    def candidate(self):
        return ("sha256:c", "v2") if "resolve" in self.done else None

    def candidates_fault(self, error):
        return isinstance(error, ValueError)


def test_the_flow_runs_every_role_in_order_under_its_step_name_then_finishes():
    ctx = Ctx()
    res = switchflow.run(ctx, Record(), Demo(skip=("smoke",)))
    assert res["done"] == ["resolve", "start", "ready", "shift", "confirm", "watch"]
    entered = [c[1] for c in ctx.ledger.calls if c[0] == "enter"]
    assert entered == ["resolve", "start", "ready", "flip", "confirm", "watch"]   # smoke skipped, shift is "flip"
    assert ("enter", "flip", {"role": "shift"}) in ctx.ledger.calls
    assert not [c for c in ctx.ledger.calls if c[0] == "finish"]   # finish() owns the success record


def test_a_failing_role_stops_the_flow_reverts_and_raises_switch_failed():
    ctx = Ctx()
    sw = Demo(fail_at="confirm")
    with pytest.raises(SwitchFailed) as e:
        switchflow.run(ctx, Record(), sw)
    assert sw.done == ["resolve", "start", "ready", "smoke", "shift", "confirm", "revert@confirm"]
    assert str(e.value) == "switch to v2 reverted at confirm: confirm broke (on purpose)"
    assert e.value.exit_code == SwitchFailed.exit_code
    assert ctx.ledger.calls[-1] == ("finish", "reverted", "confirm: confirm broke (on purpose)")
    assert not [c for c in ctx.ledger.calls if c[0] == "mark"]   # not the candidate's fault


def test_the_candidates_own_failure_marks_its_digest_and_a_revert_problem_joins_the_reason():
    ctx = Ctx()
    with pytest.raises(SwitchFailed) as e:
        switchflow.run(ctx, Record(), Demo(fail_at="watch", error=ValueError))
    assert "watch broke (on purpose); flipping back failed" in str(e.value)
    assert ("mark", "sha256:c", "watch: watch broke (on purpose); flipping back failed") in ctx.ledger.calls
    assert ctx.ledger.calls[-1][:2] == ("finish", "reverted")


def test_an_input_error_keeps_its_exit_code_and_marks_nothing():
    ctx = Ctx()
    with pytest.raises(SwitchFailed) as e:
        switchflow.run(ctx, Record(), Demo(fail_at="resolve", error=TamperError))
    assert e.value.exit_code == TamperError.exit_code
    assert ctx.ledger.calls[-1] == ("finish", "failed", "resolve: resolve broke (on purpose)")
    assert not [c for c in ctx.ledger.calls if c[0] == "mark"]


def test_the_success_rate_counts_only_finished_switches():
    assert switchflow.success_rate(["succeeded", "noop", "failed", "running", "reverted", "succeeded"]) == \
        {"success_rate": 0.5, "counted": 4, "succeeded": 2}
    assert switchflow.success_rate(["noop"])["success_rate"] is None


def test_a_revert_may_raise_its_own_error_and_record_its_own_outcome_and_reason():
    class Unknowable(Demo):
        def revert(self, error, at):
            return switchflow.Reverted("unknown", error=TamperError("outcome unknown (on purpose)"))

        def record_reason(self, at, reason):
            return reason

    ctx = Ctx()
    with pytest.raises(TamperError, match="outcome unknown"):
        switchflow.run(ctx, Record(), Unknowable(fail_at="ready"))
    assert ctx.ledger.calls[-1] == ("finish", "unknown", "ready broke (on purpose)")


class PlanBreaks(Demo):
    """The first role's plan fails: no step was entered yet."""

    def plan(self, role):
        raise RuntimeError(f"cannot plan {role} (on purpose)")


@pytest.mark.parametrize("step_names, at", [({}, "resolve"), ({"resolve": "lookup"}, "lookup")])
def test_a_failure_before_the_first_step_is_recorded_at_the_resolve_step(step_names, at):
    ctx = Ctx()
    sw = PlanBreaks()
    sw.step_names = step_names
    with pytest.raises(SwitchFailed) as e:
        switchflow.run(ctx, Record(), sw)
    assert sw.done == [f"revert@{at}"]
    assert str(e.value) == f"switch to v2 failed at {at}: cannot plan resolve (on purpose)"
    assert ctx.ledger.calls == [("finish", "failed", f"{at}: cannot plan resolve (on purpose)")]


class Clock:
    """time.monotonic and time.sleep for the pause hook: sleeping moves the clock, instantly."""

    def __init__(self):
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_the_pause_hook_waits_as_long_as_the_pause_seconds_say_polling_often(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(switchflow, "time", clock)
    monkeypatch.setenv("AADS_PAUSE_AT_STEP", "ready")
    monkeypatch.setenv("AADS_PAUSE_SECONDS", "2")
    monkeypatch.delenv("AADS_PAUSE_REACHED_FILE", raising=False)
    switchflow.pause_hook("ready")
    assert set(clock.sleeps) == {0.05}                 # a deleted file is seen within 50 ms
    assert 2.0 <= sum(clock.sleeps) < 2.0 + 2 * 0.05    # AADS_PAUSE_SECONDS, not the 60 s default


def test_the_revert_gets_the_error_that_stopped_the_switch():
    # Kubernetes' revert decides by it (an unobservable rollout is "unknown", not undone).
    class Keeps(Demo):
        def revert(self, error, at):
            self.got = error
            return super().revert(error, at)

    sw = Keeps(fail_at="ready", error=ValueError)
    with pytest.raises(SwitchFailed):
        switchflow.run(Ctx(), Record(), sw)
    assert isinstance(sw.got, ValueError) and str(sw.got).startswith("ready broke (on purpose)")
