"""serving/batching.py: the micro-batcher, over plain callables (no model)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serving.batching import BatcherState, InvalidStateError, MicroBatcher
from serving.errors import Overloaded


class Recorder:
    """A batch function that records the batches it saw; items that are 'bad' fail per item or whole."""

    def __init__(self, delay: float = 0.0, whole_batch_fails_on: str | None = None):
        self.batches: list[list] = []
        self.delay = delay
        self.whole_batch_fails_on = whole_batch_fails_on
        self.lock = threading.Lock()

    def __call__(self, items: list) -> list:
        with self.lock:
            self.batches.append(list(items))
        if self.delay:
            time.sleep(self.delay)
        if self.whole_batch_fails_on is not None and self.whole_batch_fails_on in items:
            raise ValueError(f"cannot process {self.whole_batch_fails_on!r}")
        return [ValueError(f"bad item {x!r}") if str(x).startswith("bad") else f"result:{x}" for x in items]


async def _gather(batcher: MicroBatcher, items: list) -> list:
    return await asyncio.gather(*(batcher.submit(x) for x in items), return_exceptions=True)


def test_concurrent_items_share_one_batch_and_each_gets_its_own_result():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=8, max_wait_s=0.2, queue_size=64).start()
    try:
        out = asyncio.run(_gather(batcher, list(range(8))))
    finally:
        batcher.stop()
    assert [o.result for o in out] == [f"result:{i}" for i in range(8)]
    assert fn.batches == [list(range(8))]  # one call, all eight
    assert all(o.batch_size == 8 for o in out)


def test_batches_never_exceed_max_batch_size():
    fn = Recorder(delay=0.01)
    batcher = MicroBatcher(fn, max_batch_size=4, max_wait_s=0.05, queue_size=64).start()
    try:
        out = asyncio.run(_gather(batcher, list(range(10))))
    finally:
        batcher.stop()
    assert sorted(o.result for o in out) == sorted(f"result:{i}" for i in range(10))
    assert max(len(b) for b in fn.batches) <= 4
    assert sum(len(b) for b in fn.batches) == 10


def test_a_lone_item_waits_at_most_max_wait():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=32, max_wait_s=0.05, queue_size=8).start()
    try:
        started = time.perf_counter()
        out = asyncio.run(batcher.submit("x"))
        elapsed = time.perf_counter() - started
    finally:
        batcher.stop()
    assert out.result == "result:x" and out.batch_size == 1
    assert 0.04 <= elapsed < 2.0  # it waited for company, then ran alone


def test_a_bad_item_fails_alone_when_the_batch_returns_its_error():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch_size=8, max_wait_s=0.2, queue_size=64).start()
    try:
        out = asyncio.run(_gather(batcher, ["a", "bad1", "b", "c"]))
    finally:
        batcher.stop()
    assert isinstance(out[1], ValueError) and "bad1" in str(out[1])
    assert [out[i].result for i in (0, 2, 3)] == ["result:a", "result:b", "result:c"]
    assert len(fn.batches) == 1


def test_a_batch_call_that_raises_is_split_so_batch_mates_still_succeed():
    fn = Recorder(whole_batch_fails_on="poison")
    batcher = MicroBatcher(fn, max_batch_size=8, max_wait_s=0.2, queue_size=64).start()
    items = ["a", "b", "poison", "c", "d", "e"]
    try:
        out = asyncio.run(_gather(batcher, items))
    finally:
        batcher.stop()
    assert isinstance(out[2], ValueError) and "poison" in str(out[2])
    for i, x in enumerate(items):
        if x != "poison":
            assert out[i].result == f"result:{x}"
    # The first call had all six; later calls were halves that isolated the poison.
    assert fn.batches[0] == items and ["poison"] in fn.batches


def test_wrong_number_of_results_counts_as_a_failed_call():
    batcher = MicroBatcher(lambda items: ["only-one"], max_batch_size=4, max_wait_s=0.1, queue_size=8).start()
    try:
        out = asyncio.run(_gather(batcher, ["a", "b"]))
    finally:
        batcher.stop()
    # Split down to single items, each of which gets exactly one result.
    assert [o.result for o in out] == ["only-one", "only-one"]


def test_full_queue_refuses_at_once_with_retry_after():
    gate = threading.Event()

    def blocked(items):
        gate.wait(5)
        return items

    batcher = MicroBatcher(blocked, max_batch_size=1, max_wait_s=0, queue_size=2).start()
    try:
        first = batcher.submit_nowait("running")
        deadline = time.time() + 2
        while batcher.queue_depth and time.time() < deadline:  # the worker took it and is blocked
            time.sleep(0.01)
        queued = [batcher.submit_nowait("q1"), batcher.submit_nowait("q2")]
        with pytest.raises(Overloaded) as err:
            batcher.submit_nowait("one too many")
        assert err.value.status_code == 503
        assert err.value.retry_after is not None and err.value.retry_after >= 1
        gate.set()
        assert first.result(5).result == "running"
        assert [f.result(5).result for f in queued] == ["q1", "q2"]
    finally:
        gate.set()
        batcher.stop()


def test_stop_finishes_queued_items_then_refuses_new_ones():
    fn = Recorder(delay=0.02)
    batcher = MicroBatcher(fn, max_batch_size=2, max_wait_s=0, queue_size=64).start()
    futures = [batcher.submit_nowait(i) for i in range(6)]
    assert batcher.stop(timeout=10)
    assert [f.result(0).result for f in futures] == [f"result:{i}" for i in range(6)]
    assert batcher.state is BatcherState.STOPPED
    with pytest.raises(InvalidStateError, match="stopped, expected running"):
        batcher.submit_nowait("late")


def test_submit_before_start_names_the_state():
    batcher = MicroBatcher(lambda items: items)
    with pytest.raises(InvalidStateError, match="new, expected running"):
        batcher.submit_nowait(1)
    with pytest.raises(InvalidStateError):
        batcher.start().start()
    batcher.stop()


def test_cancelled_waiters_are_dropped_before_their_batch_runs():
    gate = threading.Event()
    seen: list[list] = []

    def fn(items):
        seen.append(list(items))
        gate.wait(5)
        return items

    batcher = MicroBatcher(fn, max_batch_size=4, max_wait_s=0, queue_size=16).start()
    try:
        blocker = batcher.submit_nowait("blocker")
        while batcher.queue_depth:
            time.sleep(0.01)
        gone = batcher.submit_nowait("gone")
        kept = batcher.submit_nowait("kept")
        assert gone.cancel()
        gate.set()
        assert blocker.result(5).result == "blocker"
        assert kept.result(5).result == "kept"
    finally:
        gate.set()
        batcher.stop()
    assert ["kept"] in seen and all("gone" not in b for b in seen)


def test_on_batch_reports_sizes_and_a_failing_callback_does_not_stop_the_worker():
    sizes: list[int] = []

    def on_batch(stats):
        sizes.append(stats.size)
        raise RuntimeError("metrics broke")

    batcher = MicroBatcher(lambda items: items, max_batch_size=8, max_wait_s=0.2, queue_size=16, on_batch=on_batch)
    batcher.start()
    try:
        asyncio.run(_gather(batcher, [1, 2, 3]))
        assert asyncio.run(batcher.submit(4)).result == 4
    finally:
        batcher.stop()
    assert sizes == [3, 1]


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"queue_size": 0}, {"max_wait_s": -1}])
def test_bad_configuration_is_refused(kwargs):
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, **kwargs)
