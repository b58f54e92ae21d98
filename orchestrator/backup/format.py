"""The backup archive format: one plain tar that `tar` and `sha256sum -c` can read by hand.

    aads-backup.json                 what this is: format, version, image id, registry digest, note
    ledger.json                      the ledger records: the build (with its golden outputs) and its pushes
    versions/<v>/version.yaml        the version folder, byte for byte
    versions/<v>/adapter_spec.json
    adapters.json                    sha256 of every model/adapter file baked into the image
    image.tar | image.tar.zst        the image as `docker save <image id>` writes it (optionally zstd)
    SHA256SUMS                       "<sha256>  <member>" per member above, then a line that hashes those lines

The outer tar is never compressed, so a member's header can be written before its size is known
and patched afterwards (the image streams through; nothing is buffered) and the small members
can be read without touching the image. GNU headers keep every header at 512 bytes, whatever
the size (base-256 sizes beyond 8 GiB). Every byte of the file is covered by a check: headers by
the tar header checksum, member bytes by SHA256SUMS, padding and the end marker must be zeros, and
nothing may follow the end marker.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import tarfile
from dataclasses import dataclass

FORMAT = "aads-ulora-backup"
FORMAT_VERSION = 1

DESCRIPTOR = "aads-backup.json"
LEDGER = "ledger.json"
ADAPTERS = "adapters.json"
IMAGE = "image.tar"
IMAGE_ZSTD = "image.tar.zst"
SUMS = "SHA256SUMS"
VERSIONS_PREFIX = "versions/"

BLOCK = 512
MAX_MEMBERS = 64                 # an archive has 7; a file with more is not one of ours
META_LIMIT = 1 << 20             # every member but the image is small metadata
MAX_IMAGE_BYTES = 1 << 40        # 1 TiB: a bound for sizes an archive declares
END_MARKER = b"\0" * (2 * BLOCK)
ENCODING = "utf-8"
SELF_CHECK_PREFIX = "# sha256 of the lines above: "

ARCHIVE_SUFFIX = ".tar"
ARCHIVE_PREFIX = "aads-ulora_"
# aads-ulora_<version>_<image id, 12 hex>_<UTC time>[_zstd].tar
ARCHIVE_NAME_RE = re.compile(
    r"^aads-ulora_(?P<version>v[^_/]+)_(?P<id12>[0-9a-f]{12})_(?P<stamp>\d{8}T\d{6}Z)(?P<zstd>_zstd)?\.tar$"
)


def archive_name(version: str, image_id: str, created: dt.datetime, compressed: bool) -> str:
    """The file name of a new archive: version, image id and creation time, so two never clash."""
    stamp = created.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{ARCHIVE_PREFIX}{version}_{short_id(image_id)}_{stamp}{'_zstd' if compressed else ''}{ARCHIVE_SUFFIX}"


def image_tar_limit(descriptor: dict) -> int:
    """The most bytes the docker save tar of an archive may have, from its descriptor.

    Archives record the tar's exact length (`image_tar_bytes`); older ones only the engine's
    image size, which a tar exceeds by its headers and padding: twice that plus 256 MiB then.
    """
    exact = descriptor.get("image_tar_bytes")
    if isinstance(exact, int) and not isinstance(exact, bool):
        return exact
    return 2 * int(descriptor["image_size"]) + (256 << 20)


def short_id(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def padding(size: int) -> int:
    """Zero bytes after `size` bytes of member data, up to the next 512-byte block."""
    return -size % BLOCK


def header(name: str, size: int, mtime: float) -> bytes:
    """One 512-byte GNU tar header for a regular file.

    Raises:
        ValueError: the name would need a GNU long-name block (more than 100 bytes).
    """
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    buf = info.tobuf(format=tarfile.GNU_FORMAT, encoding=ENCODING, errors="strict")
    if len(buf) != BLOCK:
        raise ValueError(f"member name {name!r} is too long for a one-block tar header")
    return buf


def parse_header(block: bytes) -> tarfile.TarInfo:
    """Parse one header block; raises tarfile.HeaderError when its checksum or fields are bad."""
    return tarfile.TarInfo.frombuf(block, ENCODING, "strict")


@dataclass(frozen=True)
class Sums:
    """SHA256SUMS: member name -> sha256 hex, in archive order."""

    entries: dict[str, str]

    def render(self) -> bytes:
        body = "".join(f"{digest}  {name}\n" for name, digest in self.entries.items())
        check = hashlib.sha256(body.encode(ENCODING)).hexdigest()
        return (body + f"{SELF_CHECK_PREFIX}{check}\n").encode(ENCODING)

    @classmethod
    def parse(cls, data: bytes) -> "Sums":
        """Read SHA256SUMS and check its own last line.

        Raises:
            ValueError: the file is damaged (unreadable, malformed, or its lines do not match their
                own hash), so none of its checksums can be trusted.
        """
        try:
            text = data.decode(ENCODING)
        except UnicodeDecodeError:
            raise ValueError("not UTF-8 text") from None
        body, sep, last = text.rstrip("\n").rpartition("\n")
        body += sep
        if not last.startswith(SELF_CHECK_PREFIX) or not text.endswith("\n"):
            raise ValueError("its self-check line is missing")
        if hashlib.sha256(body.encode(ENCODING)).hexdigest() != last[len(SELF_CHECK_PREFIX):]:
            raise ValueError("its lines do not match their own recorded hash")
        entries: dict[str, str] = {}
        for line in body.splitlines():
            digest, sep, name = line.partition("  ")
            if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest) or not name or name in entries:
                raise ValueError(f"malformed line {line[:80]!r}")
            entries[name] = digest
        return cls(entries)
