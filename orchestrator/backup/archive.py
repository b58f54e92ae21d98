"""The archive as a whole: write one, open one (small members checked), check its image.

Engine-free: the image arrives as an iterable of bytes when writing and leaves as a file object
when reading, so everything here runs in unit tests on synthetic archives.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from orchestrator.backup import format as fmt
from orchestrator.backup.dockersave import ImageFacts, ImageTarError, inspect_stream
from orchestrator.backup.reader import ArchiveError, ForeignArchiveError, Member, MemberReader, read_member, scan
from orchestrator.backup.writer import ArchiveWriter
from orchestrator.errors import UsageError
from aads_manifest import HASHED_FILES, ManifestError, load_manifest, manifest_sha256, validate_version_name

# (phase, bytes done, bytes total or None): how flows report progress; the CLI draws it.
Progress = Callable[[str, int, "int | None"], None]
CHUNK = 1 << 20
ZSTD_MAX_WINDOW = 1 << 27
IMAGE_ID_RE = re.compile(r"sha256:[0-9a-f]{64}")
TAR_BYTES_PLACEHOLDER = 10 ** 15   # as many digits as any real size: the patched value fits in its place


def no_progress(phase: str, done: int, total: int | None) -> None:
    pass


@dataclass(frozen=True)
class ArchiveInput:
    """Everything that goes into an archive except the image bytes."""

    descriptor: dict[str, Any]              # aads-backup.json; must hold "version"
    ledger: dict[str, Any]                  # {"build": {...}, "pushes": [...]}
    version_files: dict[str, bytes]         # file name in versions/<v>/ -> bytes
    adapters: dict[str, Any]                # adapters.json


def write_archive(final_path: Path, data: ArchiveInput, image_chunks: Iterable[bytes], *,
                  compress_threads: int | None = None, image_size: int | None = None,
                  progress: Progress = no_progress) -> dict[str, Any]:
    """Write the archive to `final_path` (via a temporary file); returns {member: sha256} and sizes.

    `compress_threads` None stores the image as it comes; a number stores it as zstd with that
    many worker threads.
    """
    version = data.descriptor["version"]
    image_member = fmt.IMAGE if compress_threads is None else fmt.IMAGE_ZSTD
    # The docker save tar's exact length bounds what a reader decompresses; it is known only once
    # the image streamed through, so the descriptor is written with room for it and patched.
    descriptor = {**data.descriptor, "image_member": image_member, "image_tar_bytes": TAR_BYTES_PLACEHOLDER}
    placeholder = _json_bytes(descriptor)
    with ArchiveWriter(final_path) as w:
        w.add_bytes(fmt.DESCRIPTOR, placeholder)
        w.add_bytes(fmt.LEDGER, _json_bytes(data.ledger))
        for name, content in sorted(data.version_files.items()):
            w.add_bytes(f"{fmt.VERSIONS_PREFIX}{version}/{name}", content)
        w.add_bytes(fmt.ADAPTERS, _json_bytes(data.adapters))
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            progress("write", done, image_size)

        w.add_stream(image_member, image_chunks, compress_threads=compress_threads, on_bytes=advance)
        final = _json_bytes({**descriptor, "image_tar_bytes": done})
        w.rewrite_bytes(fmt.DESCRIPTOR, final[:-1] + b" " * (len(placeholder) - len(final)) + b"\n")
        path = w.commit()
    return {"path": str(path), "sums": dict(w.sums), "sizes": dict(w.sizes), "image_member": image_member,
            "image_bytes_in": done}


def _json_bytes(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n").encode()


@dataclass
class OpenArchive:
    """An archive whose structure and small members are checked; the image is not read yet."""

    path: Path
    members: list[Member]
    sums: fmt.Sums
    descriptor: dict[str, Any]
    ledger: dict[str, Any]
    version_files: dict[str, bytes]
    adapters: dict[str, Any]
    image: Member
    checked: list[str] = field(default_factory=list)   # members whose checksum matched, in order

    @property
    def version(self) -> str:
        return self.descriptor["version"]

    @property
    def image_id(self) -> str:
        return self.descriptor["image_id"]

    @property
    def compressed(self) -> bool:
        return self.image.name == fmt.IMAGE_ZSTD

    @property
    def build(self) -> dict[str, Any]:
        return self.ledger["build"]

    @property
    def pushes(self) -> list[dict[str, Any]]:
        return list(self.ledger.get("pushes") or [])

    def manifest_sha256(self) -> str:
        with self.version_dir() as d:
            return manifest_sha256(d)

    @contextmanager
    def version_dir(self) -> Iterator[Path]:
        """The archived version folder, written to a fresh temporary directory.

        Paths come from fixed names (HASHED_FILES) under the version name, which open_archive
        matched in full; each is still checked to resolve inside the temporary directory.
        """
        with tempfile.TemporaryDirectory(prefix="aads-backup-version-") as tmp:
            d = inside(Path(tmp), self.version)
            d.mkdir()
            for name in HASHED_FILES:
                write_new_file(inside(d, name), self.version_files[name])
            yield d


def inside(root: Path, name: str) -> Path:
    """`root / name`, refused unless it resolves to a direct child of `root`."""
    path = root / name
    if path.resolve().parent != root.resolve() or path.name != name:
        raise ArchiveError(f"the name {name[:80]!r} from an archive leaves its directory")
    return path


def write_new_file(path: Path, data: bytes) -> None:
    """Create `path` (never an existing file or symlink: O_EXCL) and write `data`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def read_descriptor(path: str | Path) -> tuple[list[Member], dict[str, Any]]:
    """The table of members and aads-backup.json, without checking any checksum (for listings).

    Raises ForeignArchiveError / ArchiveError like scan(), or when the descriptor is unreadable.
    """
    path = Path(path)
    members = scan(path)
    with open(path, "rb") as f:
        raw = read_member(f, members[0], path.name, limit=1 << 20)
    return members, _parse_descriptor(path, raw)


def _parse_descriptor(path: Path, raw: bytes) -> dict[str, Any]:
    """aads-backup.json, with every field later code relies on checked (names become paths and tags)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ArchiveError(f"{path.name}: member {fmt.DESCRIPTOR} is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt.FORMAT:
        raise ForeignArchiveError(f"{path} is not an AADS-ULoRA backup archive ({fmt.DESCRIPTOR} names another format)")
    if not isinstance(doc.get("format_version"), int) or doc["format_version"] > fmt.FORMAT_VERSION:
        raise UsageError(f"{path.name} has archive format {doc.get('format_version')!r}; this orchestrator reads "
                         f"up to {fmt.FORMAT_VERSION}: use a newer orchestrator")
    for key in ("version", "image_id", "image_member"):
        if not isinstance(doc.get(key), str):
            raise ArchiveError(f"{path.name}: {fmt.DESCRIPTOR} has no {key}")
    try:
        validate_version_name(doc["version"])
    except ValueError as e:
        raise ArchiveError(f"{path.name}: {fmt.DESCRIPTOR}: {e}") from None
    if not IMAGE_ID_RE.fullmatch(doc["image_id"]):
        raise ArchiveError(f"{path.name}: {fmt.DESCRIPTOR}: image_id {doc['image_id'][:80]!r} is not sha256:<64 hex>")
    if doc["image_member"] not in (fmt.IMAGE, fmt.IMAGE_ZSTD):
        raise ArchiveError(f"{path.name}: {fmt.DESCRIPTOR}: image_member {doc['image_member'][:80]!r} is not "
                           f"{fmt.IMAGE} or {fmt.IMAGE_ZSTD}")
    for key in ("image_size", "image_tar_bytes"):
        value = doc.get(key)
        if key == "image_tar_bytes" and value is None:
            continue  # archives written before it was recorded
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= fmt.MAX_IMAGE_BYTES:
            raise ArchiveError(f"{path.name}: {fmt.DESCRIPTOR}: {key} {str(value)[:40]!r} is not a size between 0 "
                               f"and {fmt.MAX_IMAGE_BYTES}")
    return doc


def open_archive(path: str | Path) -> OpenArchive:
    """Scan the archive and check every member but the image against SHA256SUMS.

    Raises:
        UsageError / ForeignArchiveError: no file, or not a backup archive.
        ArchiveError: truncated, damaged, or a member that fails its checksum (named).
    """
    path = Path(path)
    members = scan(path)
    for m in members:  # before any member is read: metadata is small, whatever a header claims
        limit = fmt.MAX_IMAGE_BYTES if m.name in (fmt.IMAGE, fmt.IMAGE_ZSTD) else fmt.META_LIMIT
        if m.size > limit:
            raise ArchiveError(f"{path.name}: member {m.name!r} is {m.size} bytes, too large "
                               f"(at most {limit})")
    by_name = {m.name: m for m in members}
    if len(by_name) != len(members):
        raise ArchiveError(f"{path.name}: a member name occurs twice")
    if members[-1].name != fmt.SUMS:
        raise ArchiveError(f"{path.name}: the last member is {members[-1].name}, not {fmt.SUMS} (truncated or changed)")
    with open(path, "rb") as f:
        if members[-1].size > 1 << 20:
            raise ArchiveError(f"{path.name}: member {fmt.SUMS} is {members[-1].size} bytes, far too large")
        sums_reader = MemberReader(f, members[-1], path.name)
        raw_sums = sums_reader.read()
        sums_reader.finish()  # its padding must be zeros too
        try:
            sums = fmt.Sums.parse(raw_sums)
        except ValueError as e:
            raise ArchiveError(f"{path.name}: member {fmt.SUMS} is damaged ({e})") from None
        listed = set(sums.entries)
        present = {m.name for m in members[:-1]}
        for m in members[:-1]:
            if m.name not in listed:
                raise ArchiveError(f"{path.name}: member {m.name} is not listed in {fmt.SUMS} (added or renamed)")
        missing = [n for n in sums.entries if n not in present]
        if missing:
            raise ArchiveError(f"{path.name}: member {missing[0]} listed in {fmt.SUMS} is missing")
        image_members = [m for m in members if m.name in (fmt.IMAGE, fmt.IMAGE_ZSTD)]
        if len(image_members) != 1:
            raise ArchiveError(f"{path.name}: expected one image member ({fmt.IMAGE} or {fmt.IMAGE_ZSTD})")
        checked: list[str] = []
        contents: dict[str, bytes] = {}
        for m in members[:-1]:
            if m is image_members[0]:
                continue
            reader = MemberReader(f, m, path.name)
            data = reader.read()
            if reader.finish() != sums.entries[m.name]:
                raise ArchiveError(f"{path.name}: member {m.name} fails its checksum")
            contents[m.name] = data
            checked.append(m.name)

    descriptor = _parse_descriptor(path, contents[fmt.DESCRIPTOR])
    version = descriptor["version"]
    if image_members[0].name != descriptor["image_member"]:
        raise ArchiveError(f"{path.name}: {fmt.DESCRIPTOR} names image member {descriptor['image_member']}, "
                           f"the archive holds {image_members[0].name}")
    prefix = f"{fmt.VERSIONS_PREFIX}{version}/"
    version_files = {n[len(prefix):]: b for n, b in contents.items() if n.startswith(prefix)}
    strays = [n for n in contents if n not in (fmt.DESCRIPTOR, fmt.LEDGER, fmt.ADAPTERS) and not n.startswith(prefix)]
    if strays:
        raise ArchiveError(f"{path.name}: unexpected member {strays[0]}")
    if sorted(version_files) != sorted(HASHED_FILES):
        raise ArchiveError(f"{path.name}: the version folder {prefix} is missing or malformed (it must hold "
                           f"exactly {', '.join(HASHED_FILES)}; it holds {sorted(version_files)!r})")
    image = image_members[0]
    if image.name == fmt.IMAGE and descriptor.get("image_tar_bytes") not in (None, image.size):
        raise ArchiveError(f"{path.name}: member {image.name} is {image.size} bytes, {fmt.DESCRIPTOR} records "
                           f"{descriptor['image_tar_bytes']}")
    for name in (fmt.LEDGER, fmt.ADAPTERS):
        if name not in contents:
            raise ArchiveError(f"{path.name}: member {name} is missing")
    try:
        ledger = json.loads(contents[fmt.LEDGER])
        adapters = json.loads(contents[fmt.ADAPTERS])
        build = ledger["build"]
        if not isinstance(build, dict) or not isinstance(ledger.get("pushes", []), list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ArchiveError(f"{path.name}: member {fmt.LEDGER} or {fmt.ADAPTERS} is malformed") from None
    return OpenArchive(path=path, members=members, sums=sums, descriptor=descriptor, ledger=ledger,
                       version_files=version_files, adapters=adapters, image=image_members[0], checked=checked)


@contextmanager
def image_stream(archive: OpenArchive) -> Iterator[tuple[BinaryIO, MemberReader]]:
    """A file object giving the docker save tar (decompressed if stored as zstd), and the member
    reader underneath it (whose finish() returns the stored bytes' sha256)."""
    with open(archive.path, "rb") as f:
        reader = MemberReader(f, archive.image, archive.path.name)
        if archive.compressed:
            import zstandard

            # A frame may ask for a window of up to 2 GiB; writers here use far less (level 3).
            z = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
                reader, read_size=CHUNK, read_across_frames=True, closefd=False)
            yield z, reader
        else:
            yield reader, reader


class _Counting:
    """Pass reads through and report progress in stored (archive) bytes."""

    def __init__(self, inner: BinaryIO, reader: MemberReader, phase: str, progress: Progress):
        self.inner, self.reader, self.phase, self.progress = inner, reader, phase, progress

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.progress(self.phase, self.reader.done, self.reader.member.size)
        return data


def check_image(archive: OpenArchive, progress: Progress = no_progress) -> ImageFacts:
    """Stream the image member once: its checksum, and the docker save tar against its own config.

    Raises:
        ArchiveError: the member fails its checksum (named first: it is the cause), or it is not a
            docker save tar whose layers and config match.
    """
    import zstandard

    name = archive.path.name
    with image_stream(archive) as (stream, reader):
        problem: str | None = None
        facts: ImageFacts | None = None
        try:
            facts = inspect_stream(_Counting(stream, reader, "verify", progress),
                                   limit=fmt.image_tar_limit(archive.descriptor))
        except ImageTarError as e:
            problem = str(e)
        except zstandard.ZstdError as e:
            problem = f"its zstd stream is damaged ({e})"
        digest = reader.finish()
    if digest != archive.sums.entries[archive.image.name]:
        detail = f" ({problem})" if problem else ""
        raise ArchiveError(f"{name}: member {archive.image.name} fails its checksum{detail}")
    if problem or facts is None:
        raise ArchiveError(f"{name}: member {archive.image.name} is not a valid image: {problem}")
    archive.checked.append(archive.image.name)
    return facts


def check_consistency(archive: OpenArchive, facts: ImageFacts) -> dict[str, Any]:
    """The image against what the archive records: config digest, manifest label, version.

    Returns the facts checked (for reports). Raises ArchiveError naming the first mismatch.
    """
    name = archive.path.name
    build = archive.build
    recorded_id = archive.image_id
    if build.get("image_id") != recorded_id:
        raise ArchiveError(f"{name}: {fmt.LEDGER} records image {build.get('image_id')}, {fmt.DESCRIPTOR} {recorded_id}")
    if facts.config_digest != recorded_id:
        raise ArchiveError(f"{name}: the image config digest {facts.config_digest} does not match the recorded "
                           f"image id {recorded_id}")
    m = fmt.ARCHIVE_NAME_RE.match(name)
    if m and (m["version"] != archive.version or m["id12"] != fmt.short_id(recorded_id)):
        raise ArchiveError(f"{name}: the file name says {m['version']} {m['id12']}, the archive holds "
                           f"{archive.version} {fmt.short_id(recorded_id)}")
    try:
        with archive.version_dir() as d:
            load_manifest(d)
            folder_sha = manifest_sha256(d)
    except ManifestError as e:
        raise ArchiveError(f"{name}: the archived version folder is not a valid manifest ({e})") from None
    except OSError as e:
        raise ArchiveError(f"{name}: the archived version folder is incomplete ({e})") from None
    label = facts.labels.get("aads.manifest-sha256")
    if label != folder_sha:
        raise ArchiveError(f"{name}: the image label aads.manifest-sha256 ({label}) does not match the archived "
                           f"version folder ({folder_sha})")
    if build.get("manifest_sha256") != folder_sha:
        raise ArchiveError(f"{name}: {fmt.LEDGER} records manifest {build.get('manifest_sha256')}, the archived "
                           f"folder hashes to {folder_sha}")
    label_version = facts.labels.get("aads.version")
    if label_version != archive.version or build.get("version") != archive.version:
        raise ArchiveError(f"{name}: the image (aads.version={label_version}) or the ledger record "
                           f"({build.get('version')}) is not version {archive.version}")
    return {"image_id": facts.config_digest, "manifest_sha256": folder_sha, "layers": len(facts.layers)}
