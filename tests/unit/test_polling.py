"""poll_until: the one deadline loop (a fake clock, so nothing here sleeps or depends on speed)."""

import pytest

from orchestrator.polling import NotYet, PollTimeout, poll_until


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def answers(*seq):
    it = iter(seq)
    calls = []

    def check():
        calls.append(1)
        return next(it)
    return check, calls


def test_returns_the_first_real_answer():
    clock = FakeClock()
    check, calls = answers(None, False, NotYet("booting"), "ready")
    assert poll_until(check, timeout=10, interval=1, what="x", clock=clock, sleep=clock.sleep) == "ready"
    assert len(calls) == 4
    assert clock.slept == [1, 1, 1]


def test_falsy_values_other_than_none_and_false_are_answers():
    clock = FakeClock()
    check, _ = answers(0)
    assert poll_until(check, timeout=1, interval=1, what="x", clock=clock, sleep=clock.sleep) == 0


def test_timeout_names_what_and_the_last_reason():
    clock = FakeClock()
    check, calls = answers(*([NotYet("/ready answered 503")] * 100))
    with pytest.raises(PollTimeout) as e:
        poll_until(check, timeout=2.5, interval=1, what="slot blue to become ready", clock=clock, sleep=clock.sleep)
    assert e.value.last == "/ready answered 503"
    assert str(e.value) == "slot blue to become ready: not done after 2.5s (last: /ready answered 503)"
    assert isinstance(e.value, TimeoutError)
    # calls at t=0,1,2,2.5: never sleeps past the deadline
    assert len(calls) == 4 and clock.slept == [1, 1, 0.5]


def test_zero_timeout_is_exactly_one_try():
    clock = FakeClock()
    check, calls = answers(None, "late")
    with pytest.raises(PollTimeout) as e:
        poll_until(check, timeout=0, interval=0.2, what="the lock", clock=clock, sleep=clock.sleep)
    assert len(calls) == 1 and clock.slept == []
    assert "(last:" not in str(e.value)


def test_no_raise_returns_the_last_not_yet():
    clock = FakeClock()
    check, _ = answers(NotYet("a"), NotYet("b"), NotYet("c"), NotYet("d"))
    got = poll_until(check, timeout=2, interval=1, what="x", raise_on_timeout=False, clock=clock, sleep=clock.sleep)
    assert isinstance(got, NotYet) and not got and got.reason == "c"


def test_an_exception_from_check_ends_the_wait_at_once():
    clock = FakeClock()

    def check():
        raise RuntimeError("the container exited with code 1")
    with pytest.raises(RuntimeError, match="exited"):
        poll_until(check, timeout=60, interval=1, what="x", clock=clock, sleep=clock.sleep)
    assert clock.slept == []


def test_real_clock_short_wait():
    seen = []

    def check():
        seen.append(1)
        return len(seen) >= 3 or None
    assert poll_until(check, timeout=30, interval=0.001, what="x") is True
