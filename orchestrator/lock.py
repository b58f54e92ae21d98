"""Per-target lock: one switch at a time. flock is released by the kernel when a process dies,
so a `kill -9`'d orchestrator never leaves a stale lock behind."""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from orchestrator.errors import LockBusyError


@contextmanager
def target_lock(state_dir: Path, target: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the lock for `target`; wait up to `wait_s`, then refuse naming the holder."""
    path = Path(state_dir) / "locks" / f"{target}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    raise LockBusyError(
                        f"target {target!r} is locked by {holder}: another switch is running "
                        f"(wait for it, or pass --lock-timeout SECONDS)"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def holder(state_dir: Path, target: str) -> str | None:
    """Who holds `target`'s lock now (what the holder wrote, e.g. "pid 42"), or None where nobody does.

    Reads only: no file is made or written, and the probe lock is released at once.
    """
    path = Path(state_dir) / "locks" / f"{target}.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def is_held(state_dir: Path, target: str) -> bool:
    """Does a live process hold `target`'s lock now? Reads only (see `holder`)."""
    return holder(state_dir, target) is not None
