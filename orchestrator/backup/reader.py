"""Read an archive: its table of members (headers only, seeking over data) and hashing member streams.

`scan()` walks the headers and proves the file is whole before any member is trusted: every
header's checksum, every member inside the file, the end marker present and nothing after it.
A truncation anywhere, a damaged header or a foreign file each gives one ArchiveError naming
where.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from orchestrator.backup import format as fmt
from orchestrator.errors import ArchiveError, ForeignArchiveError, UsageError


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    header_offset: int
    data_offset: int

    @property
    def end(self) -> int:
        """Offset just past this member's padding."""
        return self.data_offset + self.size + fmt.padding(self.size)


def _foreign(path: Path, head: bytes) -> ForeignArchiveError:
    hint = ""
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        hint = " (it is zstd-compressed: backup archives are plain tar files)"
    elif head.startswith(b"\x1f\x8b"):
        hint = " (it is gzip-compressed: backup archives are plain tar files)"
    return ForeignArchiveError(f"{path} is not an AADS-ULoRA backup archive{hint}")


def _looks_like_ours(block: bytes) -> bool:
    """A first header that fails its checksum but still names our descriptor or the tar magic."""
    return fmt.DESCRIPTOR.encode() in block[:100] or block[257:262] == b"ustar"


def scan(path: str | Path) -> list[Member]:
    """The members of the archive at `path`, in order, after checking its structure.

    Raises:
        UsageError: the file does not exist or is not a file.
        ForeignArchiveError: not a tar file, or a tar whose first member is not aads-backup.json.
        ArchiveError: truncated, a damaged header, a member that is not a regular file, missing
            end marker, or bytes after it.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no archive at {path}")
    file_size = path.stat().st_size
    members: list[Member] = []
    with open(path, "rb") as f:
        head = f.read(fmt.BLOCK)
        if len(head) < fmt.BLOCK:
            if head and head[:len(fmt.DESCRIPTOR)] == fmt.DESCRIPTOR.encode()[:len(head)]:  # a cut copy of ours
                raise ArchiveError(f"{path.name} is truncated: {file_size} bytes, not even one header")
            raise _foreign(path, head)
        offset = 0
        while True:
            f.seek(offset)
            block = f.read(fmt.BLOCK)
            where = f"after member {members[-1].name}" if members else "at the start"
            if len(block) < fmt.BLOCK:
                raise ArchiveError(f"{path.name} is truncated at byte {file_size} ({where}: the end marker is missing)")
            if block == b"\0" * fmt.BLOCK:
                if not members:
                    raise _foreign(path, block)
                rest = f.read(fmt.BLOCK)
                if rest != b"\0" * fmt.BLOCK:
                    if len(rest) < fmt.BLOCK:
                        raise ArchiveError(f"{path.name} is truncated at byte {file_size} (in the end marker)")
                    raise ArchiveError(f"{path.name}: damaged end marker at byte {offset + fmt.BLOCK}")
                end = offset + 2 * fmt.BLOCK
                if file_size != end:
                    raise ArchiveError(f"{path.name}: {file_size - end} unexpected bytes after the end of the archive")
                break
            try:
                info = fmt.parse_header(block)
            except tarfile.HeaderError:
                if not members and not _looks_like_ours(block):
                    raise _foreign(path, block) from None
                raise ArchiveError(f"{path.name}: damaged tar header at byte {offset} ({where})") from None
            if not members and info.name != fmt.DESCRIPTOR:
                raise ForeignArchiveError(
                    f"{path} is not an AADS-ULoRA backup archive (its first member is {info.name!r}, "
                    f"not {fmt.DESCRIPTOR})")
            if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                raise ArchiveError(f"{path.name}: member {info.name!r} is not a regular file")
            # A negative size would move the next header back (an endless scan): refuse it, and
            # bound the member count, so a scan always ends after a few headers.
            if info.size < 0:
                raise ArchiveError(f"{path.name}: member {info.name!r} has a negative size in its header "
                                   f"(byte {offset})")
            if len(members) >= fmt.MAX_MEMBERS:
                raise ArchiveError(f"{path.name}: more than {fmt.MAX_MEMBERS} members, not a backup archive")
            member = Member(info.name, info.size, offset, offset + fmt.BLOCK)
            if member.end <= offset:
                raise ArchiveError(f"{path.name}: member {info.name!r} does not advance the archive")
            if member.end > file_size:
                raise ArchiveError(
                    f"{path.name} is truncated inside member {info.name}: it needs bytes up to {member.end}, "
                    f"the file has {file_size}")
            members.append(member)
            offset = member.end
    return members


class MemberReader:
    """A read-only file object over one member's data that hashes every byte it hands out.

    `finish()` reads what the caller left, checks the padding is zeros, and returns the sha256
    of the member's data.
    """

    def __init__(self, f: BinaryIO, member: Member, archive_name: str):
        self._f = f
        self.member = member
        self._archive_name = archive_name
        self._left = member.size
        self.sha256 = hashlib.sha256()
        f.seek(member.data_offset)

    @property
    def done(self) -> int:
        """Bytes of the member read so far."""
        return self.member.size - self._left

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._f.read(n)
        if not data:  # the file shrank after scan()
            raise ArchiveError(f"{self._archive_name} is truncated inside member {self.member.name}")
        self._left -= len(data)
        self.sha256.update(data)
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def finish(self, chunk: int = 1 << 20) -> str:
        while self._left > 0:
            self.read(chunk)
        pad = self._f.read(fmt.padding(self.member.size))
        if pad.strip(b"\0"):
            raise ArchiveError(f"{self._archive_name}: non-zero padding after member {self.member.name}")
        return self.sha256.hexdigest()


def read_member(f: BinaryIO, member: Member, archive_name: str, limit: int = fmt.META_LIMIT) -> bytes:
    """All bytes of a small member (metadata), refusing one larger than `limit`."""
    if member.size > limit:
        raise ArchiveError(f"{archive_name}: member {member.name} is {member.size} bytes, too large for metadata")
    f.seek(member.data_offset)
    data = f.read(member.size)
    if len(data) != member.size:
        raise ArchiveError(f"{archive_name} is truncated inside member {member.name}")
    return data


def file_identity(path: str | Path) -> dict[str, int]:
    """What tells a later look that the file is unchanged since we read it (for the verified cache)."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
