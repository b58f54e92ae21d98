"""Atomic file writes with one durability rule, for every file a crash must never leave half-written.

The rule: write a temporary file in the same directory, fsync it, rename it over the target, then
fsync the directory. A reader sees the old file or the new one, never a torn one, and after the
call returns both the data and the rename survive a power cut. The temporary name is created with
O_EXCL (a symlink planted at it fails the open instead of being followed), and `os.replace` swaps a
symlink planted at the target itself, never the file it points to.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new name in `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


def atomic_write(path: Path | str, data: bytes | str, mode: int | None = None) -> Path:
    """Replace `path` with `data` (str is written as UTF-8) atomically and durably.

    Args:
        path: the file to write; its directory is created when missing.
        data: the whole new content.
        mode: permission bits of the new file. They apply from the file's creation, so a 0o600
            secret is never readable by others, even for a moment. None: 0o666 less the umask.

    Returns:
        The path written.

    Raises:
        OSError: the write failed; the target is untouched and no temporary file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o666 if mode is None else mode & 0o600)
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)  # the exact bits asked for, whatever the umask
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path
