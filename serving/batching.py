"""Micro-batching: many concurrent requests, one batched model call.

Requests put one item each on a bounded queue and wait on a future. One worker thread takes
the first waiting item, gathers more until the batch is full or `max_wait_s` has passed since
that first item, and hands the whole batch to `process_batch` in one call. While a batch runs,
new requests queue up, so under load the next batch is full without waiting at all.

`process_batch(items)` returns one result per item, in order; an item's result may be an
exception instance, which fails that item alone. If the call raises as a whole, the batch is
split in halves and retried, so one bad item never fails its batch-mates. A full queue refuses
at once with `Overloaded` (503 + Retry-After) instead of growing without bound.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from serving.errors import Overloaded

log = logging.getLogger("serving.batching")

T = TypeVar("T")
R = TypeVar("R")


class BatcherState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class InvalidStateError(RuntimeError):
    def __init__(self, current: BatcherState, expected: BatcherState):
        super().__init__(f"batcher is {current.value}, expected {expected.value}")
        self.current, self.expected = current, expected


@dataclass
class _Pending(Generic[T]):
    item: T
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Batched(Generic[R]):
    """What a caller gets back: its own result plus how it was served."""

    result: R
    batch_size: int
    queue_ms: float  # from submit until its batch started
    run_ms: float  # the batched call


@dataclass(frozen=True)
class BatchStats:
    size: int
    seconds: float
    failed_whole: bool  # the batch call raised and was split to isolate the bad item(s)


_STOP = object()


class MicroBatcher(Generic[T, R]):
    """Gathers items from many callers into batched calls of `process_batch` in one worker thread.

    Args:
        process_batch: called with a list of up to `max_batch_size` items; returns one result
            (or exception instance) per item, in order.
        max_batch_size: the most items per call.
        max_wait_s: how long the first item of a batch waits for company (0: take only what is queued).
        queue_size: the most items waiting; beyond it `submit` raises `Overloaded`.
        on_batch: called after every batched call with its `BatchStats` (metrics).
    """

    def __init__(
        self,
        process_batch: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        max_batch_size: int = 8,
        max_wait_s: float = 0.005,
        queue_size: int = 256,
        on_batch: Callable[[BatchStats], None] | None = None,
        name: str = "micro-batcher",
    ):
        if max_batch_size < 1 or queue_size < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and queue_size must be >= 1 and max_wait_s >= 0")
        self._process_batch = process_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self._on_batch = on_batch
        self._name = name
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._state = BatcherState.NEW
        self._state_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._recent_batch_s = 0.0  # moving average, for Retry-After

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def state(self) -> BatcherState:
        return self._state

    def _assert_state(self, expected: BatcherState) -> None:
        if self._state is not expected:
            raise InvalidStateError(self._state, expected)

    def start(self) -> "MicroBatcher[T, R]":
        with self._state_lock:
            self._assert_state(BatcherState.NEW)
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._state = BatcherState.RUNNING
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Refuse new items, finish every queued one, then end the worker.

        Returns True when the worker ended within `timeout`.
        """
        with self._state_lock:
            if self._state is BatcherState.NEW:
                self._state = BatcherState.STOPPED
                return True
            if self._state is BatcherState.RUNNING:
                self._state = BatcherState.STOPPING
                self._queue.put(_STOP)  # behind every queued item, so they run first
        assert self._thread is not None
        self._thread.join(timeout)
        finished = not self._thread.is_alive()
        if finished:
            self._state = BatcherState.STOPPED
        return finished

    # -- submitting --------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def submit_nowait(self, item: T) -> concurrent.futures.Future:
        """Queue one item; the future resolves to a `Batched` result or raises the item's error.

        Raises:
            Overloaded: the queue is full (the caller should answer 503 with Retry-After).
            InvalidStateError: the batcher is not running.
        """
        pending: _Pending[T] = _Pending(item)
        try:
            with self._state_lock:  # so no item can land behind the stop mark
                self._assert_state(BatcherState.RUNNING)
                self._queue.put_nowait(pending)
        except queue.Full:
            raise Overloaded(
                f"the request queue is full ({self.queue_size} waiting); retry shortly",
                retry_after=self._retry_after(),
            ) from None
        return pending.future

    async def submit(self, item: T) -> Batched[R]:
        """`submit_nowait` and wait for the result without blocking the event loop.

        A cancelled wait (client gone) cancels the item if its batch has not started yet.
        """
        return await asyncio.wrap_future(self.submit_nowait(item))

    def _retry_after(self) -> float:
        batches_ahead = self.queue_size / self.max_batch_size
        return max(1.0, batches_ahead * self._recent_batch_s)

    # -- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            stop_seen = self._gather(batch)
            self._run_batch(batch)
            if stop_seen:
                break
        log.debug("%s stopped", self._name)

    def _gather(self, batch: list) -> bool:
        """Add items to `batch` until it is full or the wait is over; True if the stop mark came."""
        deadline = batch[0].enqueued + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            batch.append(item)
        return False

    def _run_batch(self, batch: list[_Pending[T]]) -> None:
        # Drop items whose callers have gone (their future was cancelled).
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if not live:
            return
        started = time.perf_counter()
        results, failed_whole = self._call(live)
        seconds = time.perf_counter() - started
        self._recent_batch_s = seconds if not self._recent_batch_s else 0.8 * self._recent_batch_s + 0.2 * seconds
        for pending, result in zip(live, results):
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(
                    Batched(
                        result=result,
                        batch_size=len(live),
                        queue_ms=(started - pending.enqueued) * 1000.0,
                        run_ms=seconds * 1000.0,
                    )
                )
        if self._on_batch is not None:
            try:
                self._on_batch(BatchStats(size=len(live), seconds=seconds, failed_whole=failed_whole))
            except Exception:  # metrics must never take the worker down
                log.exception("on_batch callback failed")

    def _call(self, pending: list[_Pending[T]]) -> tuple[list[R | BaseException], bool]:
        """One batched call; on a whole-batch failure, split and retry to find the bad item(s)."""
        items = [p.item for p in pending]
        try:
            results = list(self._process_batch(items))
            if len(results) != len(items):
                raise RuntimeError(f"process_batch returned {len(results)} results for {len(items)} items")
            return results, False
        except Exception as e:
            if len(pending) == 1:
                log.warning("batched call failed for one item: %s: %s", type(e).__name__, e)
                return [e], True
            log.warning("batched call of %d items failed (%s); retrying in halves", len(pending), e)
            half = len(pending) // 2
            left, _ = self._call(pending[:half])
            right, _ = self._call(pending[half:])
            return left + right, True
