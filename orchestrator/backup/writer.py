"""Write an archive: members stream through a hashing writer into a temporary file, renamed at the end.

The final name appears only once every byte is written and flushed to disk; an interrupted or
failed write removes the temporary file, so no partial archive ever sits under the final name.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from orchestrator.backup import format as fmt
from orchestrator.errors import NoSpaceError, OrchestratorError
from orchestrator.fsutil import fsync_dir

# Bytes of member data handed to a progress callback after each chunk.
ProgressFn = Callable[[int], None]
# Every this many bytes, start writing the new data out and drop what is already on disk from the
# page cache: the final fsync then has little left to wait for, and a multi-GB archive does not
# push the engine's hot files out of memory.
WRITEBACK_STEP = 64 << 20


class HashingWriter:
    """A write-only file object that hashes and counts what passes through to `raw`."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.raw.write(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()

    # zstandard's stream_writer asks for these.
    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return False


class ArchiveWriter:
    """Build an archive at `final_path` through a hidden temporary file in the same directory.

    Use as a context manager: leaving the block by an exception (Ctrl-C included) removes the
    temporary file; `commit()` inside the block makes the archive appear under its final name.
    """

    def __init__(self, final_path: Path, mtime: float | None = None):
        self.final_path = Path(final_path)
        self.tmp_path = self.final_path.with_name(
            f".{self.final_path.name}.partial-{os.getpid()}-{secrets.token_hex(3)}"
        )
        self.mtime = time.time() if mtime is None else mtime
        self.sums: dict[str, str] = {}
        self.sizes: dict[str, int] = {}
        self.offsets: dict[str, int] = {}   # member -> offset of its data
        self._f: BinaryIO | None = None
        self.committed = False
        self._advised = (0, 0)   # (start of the range advised last time, end of it)

    def __enter__(self) -> "ArchiveWriter":
        try:
            self._f = open(self.tmp_path, "xb")
        except OSError as e:
            raise OrchestratorError(f"cannot write in {self.final_path.parent}: {e.strerror}") from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._f is not None and not self._f.closed:
            self._f.close()
        if not self.committed:
            self.tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OrchestratorError):
            raise _os_error(exc, self.final_path) from None

    @property
    def file(self) -> BinaryIO:
        if self._f is None:
            raise RuntimeError("ArchiveWriter used outside its `with` block")
        return self._f

    def add_bytes(self, name: str, data: bytes) -> str:
        """Add a small member held in memory; returns its sha256."""
        return self.add_stream(name, [data])

    def add_stream(self, name: str, chunks: Iterable[bytes], *, compress_threads: int | None = None,
                   on_bytes: ProgressFn | None = None) -> str:
        """Add a member whose size is not known up front; returns the sha256 of the stored bytes.

        A placeholder header goes first and is rewritten with the real size once the data is in.
        With `compress_threads` set, the stored bytes are zstd (that many worker threads, 0 = one
        thread without workers) and the checksum is over the compressed bytes, as stored.
        `on_bytes(n)` gets the number of input bytes after each chunk.
        """
        if name in self.sums:
            raise ValueError(f"duplicate member {name}")
        f = self.file
        start = f.tell()
        f.write(fmt.header(name, 0, self.mtime))
        out = HashingWriter(f)
        if compress_threads is None:
            for chunk in chunks:
                out.write(chunk)
                self._pace()
                if on_bytes:
                    on_bytes(len(chunk))
        else:
            import zstandard

            cctx = zstandard.ZstdCompressor(level=3, threads=compress_threads, write_checksum=True)
            with cctx.stream_writer(out, closefd=False, write_return_read=True) as z:
                for chunk in chunks:
                    z.write(chunk)
                    self._pace()
                    if on_bytes:
                        on_bytes(len(chunk))
        f.write(b"\0" * fmt.padding(out.size))
        self.offsets[name] = start + fmt.BLOCK
        end = f.tell()
        f.seek(start)
        f.write(fmt.header(name, out.size, self.mtime))
        f.seek(end)
        digest = out.sha256.hexdigest()
        self.sums[name] = digest
        self.sizes[name] = out.size
        return digest

    def rewrite_bytes(self, name: str, data: bytes) -> str:
        """Replace a small member's bytes by as many new ones (a fact known only later); its new sha256."""
        if len(data) != self.sizes.get(name):
            raise ValueError(f"member {name} must keep its size ({self.sizes.get(name)} bytes)")
        f = self.file
        end = f.tell()
        f.seek(self.offsets[name])
        f.write(data)
        f.seek(end)
        self.sums[name] = hashlib.sha256(data).hexdigest()
        return self.sums[name]

    def _pace(self) -> None:
        f = self.file
        end = f.tell()
        prev_start, prev_end = self._advised
        if end - prev_end < WRITEBACK_STEP:
            return
        f.flush()
        try:  # DONTNEED starts writeback of dirty pages and drops the clean ones (the range before)
            os.posix_fadvise(f.fileno(), prev_start, end - prev_start, os.POSIX_FADV_DONTNEED)
        except (AttributeError, OSError):
            pass
        self._advised = (prev_end, end)

    def commit(self) -> Path:
        """Write SHA256SUMS and the end marker, flush to disk, and rename to the final name."""
        f = self.file
        self.add_bytes(fmt.SUMS, fmt.Sums(dict(self.sums)).render())
        f.write(fmt.END_MARKER)
        f.flush()
        os.fsync(f.fileno())
        f.close()
        if self.final_path.exists():  # names carry a timestamp: a clash means two creates in one second
            raise OrchestratorError(f"{self.final_path} already exists; not overwriting it")
        os.rename(self.tmp_path, self.final_path)
        self.committed = True
        fsync_dir(self.final_path.parent)
        return self.final_path


def _os_error(e: OSError, where: Path) -> OrchestratorError:
    import errno

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(f"ran out of disk space writing {where.name} in {where.parent}; nothing was kept")
    return OrchestratorError(f"cannot write {where}: {e.strerror or e}")
