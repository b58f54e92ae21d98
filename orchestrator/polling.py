"""One deadline loop for every "ask again until it is true or time runs out" wait.

`poll_until(check, timeout=, interval=, what=)` calls `check()` until it gives an answer, and
`check()` says "not yet" by returning None, False or `NotYet("why")`. The reason in the last
`NotYet` goes into the timeout error, so an operator reads what was last seen ("/ready answered
503"), not only that time ran out. `check()` is always called at least once (a zero timeout is
one try), and an exception it raises ends the wait at once: that is how a caller aborts early
(the container exited, the lock holder is known to be dead, ...).

Callers that have their own error type catch `PollTimeout` and raise theirs from its `.last`.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


class NotYet:
    """A "keep waiting" answer from a check, with what was seen this time (falsy)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str = ""):
        self.reason = reason

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"NotYet({self.reason!r})"


class PollTimeout(TimeoutError):
    """The check never gave an answer in time; `.last` is the last reason it gave ("" if none)."""

    def __init__(self, what: str, timeout: float, last: str):
        self.what, self.timeout, self.last = what, timeout, last
        tail = f" (last: {last})" if last else ""
        super().__init__(f"{what}: not done after {timeout:g}s{tail}")


def _pending(answer: object) -> bool:
    return answer is None or answer is False or isinstance(answer, NotYet)


def poll_until(check: Callable[[], T | None | NotYet], *, timeout: float, interval: float, what: str,
               raise_on_timeout: bool = True, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> T | NotYet:
    """Call `check()` every `interval` seconds until it answers; return the answer.

    Args:
        check: returns the answer, or None / False / `NotYet(reason)` to be asked again.
        timeout: seconds from the first call; after it no new call is made.
        interval: seconds slept between calls (never past the deadline by more than one interval).
        what: what is awaited, for the timeout message ("the edge to answer its runtime API").
        raise_on_timeout: False turns the timeout into a return of the last `NotYet` (falsy), for
            waits where running out of time is a normal end (a pause hook, a watch window).
        clock, sleep: injectable for tests.

    Raises:
        PollTimeout: when time runs out and `raise_on_timeout` is true.
        Whatever `check()` raises, at once.
    """
    deadline = clock() + timeout
    last = NotYet()
    while True:
        answer = check()
        if not _pending(answer):
            return answer  # type: ignore[return-value]
        if isinstance(answer, NotYet):
            last = answer
        if clock() >= deadline:
            if raise_on_timeout:
                raise PollTimeout(what, timeout, last.reason)
            return last
        sleep(max(0.0, min(interval, deadline - clock())))
