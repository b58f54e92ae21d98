"""`backup create`: a built version as one archive — image, version folder, ledger records, hashes.

The image streams from `docker save` (by image id) through the hashing writer into the archive:
memory stays flat whatever its size. Free space is checked before anything is written; the
archive appears under its final name only when complete.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from orchestrator.backup import catalog, engine_io
from orchestrator.backup import format as fmt
from orchestrator.backup.archive import ArchiveInput, Progress, no_progress, write_archive
from orchestrator.context import Context
from orchestrator.engine import docker_client
from orchestrator.errors import NoSpaceError, UsageError
from orchestrator.ledger import who
from orchestrator.resolve import known_version
from aads_manifest import HASHED_FILES, manifest_sha256

# Room asked beyond the image's own size: tar headers, metadata, filesystem slack.
SPACE_MARGIN = 64 << 20
# Test hook (documented in docs/backup.md): pause this long once the image stream passed N bytes,
# so a test can interrupt a create mid-stream deterministically.
PAUSE_ENV = "AADS_BACKUP_PAUSE_AFTER_BYTES"


def default_dir(ctx: Context) -> Path:
    return ctx.config.state_path / "backups"


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def space_needed(image_size: int) -> int:
    """Bytes to ask for: the uncompressed image plus a margin (zstd may save some; not counted on)."""
    return int(image_size * 1.01) + SPACE_MARGIN


def check_space(out_dir: Path, image_size: int, version: str, disk_free: Callable[[Path], int] = free_bytes) -> None:
    """Refuse before writing anything when `out_dir` cannot hold the archive.

    Raises:
        NoSpaceError: naming what is needed and what is free.
    """
    need, have = space_needed(image_size), disk_free(out_dir)
    if have < need:
        raise NoSpaceError(f"not enough free space in {out_dir}: the archive of {version} needs about "
                           f"{_mib(need)} MiB, {_mib(have)} MiB are free; nothing was written")


def create_backup(ctx: Context, version: str, *, out_dir: Path | None = None, note: str | None = None,
                  compress: str | None = None, progress: Progress = no_progress,
                  disk_free: Callable[[Path], int] = free_bytes) -> dict[str, Any]:
    """Write the archive of `version`'s latest build; returns what was written (for the CLI).

    Raises:
        UsageError: unknown/unbuilt version, a folder changed since the build, bad compression.
        EngineError: the image is not on the engine, or docker save failed.
        NoSpaceError: `out_dir` has less free space than the image needs (nothing written).
    """
    if compress not in (None, "zstd"):
        raise UsageError(f"unknown compression {compress!r}: use zstd (or none)")
    known_version(ctx, version)
    key = catalog.host_key(ctx.config.state_path)   # a broken key file stops us before anything is written
    build = ctx.ledger.latest_build(version)
    if build is None:
        raise UsageError(f"version {version} is not built: nothing to back up (run `orchestrator build {version}`)")
    folder = ctx.config.versions_path / version
    folder_sha = manifest_sha256(folder)
    if folder_sha != build.manifest_sha256:
        raise UsageError(f"{folder} changed since build {build.id} (manifest {folder_sha[:12]}…, built from "
                         f"{build.manifest_sha256[:12]}…): a changed folder is a new version; rebuild first")
    pushes = [p for p in ctx.ledger.pushes(version) if p.build_id == build.id]
    client = docker_client(timeout=3600)
    image = engine_io.get_image(client, build.image_id)
    if image is None:
        raise UsageError(f"the image of {version} ({build.image_id[:19]}…) is not on this engine: "
                         f"rebuild it or restore it from an archive first")
    image_size = int(image.attrs.get("Size") or 0)

    out_dir = Path(out_dir) if out_dir else default_dir(ctx)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {out_dir}: {e.strerror}") from None
    check_space(out_dir, image_size, version, disk_free)

    created = dt.datetime.now(dt.timezone.utc)
    latest_push = pushes[-1] if pushes else None
    descriptor = {
        "format": fmt.FORMAT,
        "format_version": fmt.FORMAT_VERSION,
        "version": version,
        "image_id": build.image_id,
        "variant": build.variant,
        "manifest_sha256": build.manifest_sha256,
        "registry_digest": latest_push.digest if latest_push else None,
        "repository": latest_push.repository if latest_push else None,
        "image_size": image_size,
        "created_at": created.isoformat(timespec="seconds"),
        "created_by": who(),
        "note": note,
        "tool": f"aads-ulora {_tool_version()}",
    }
    data = ArchiveInput(
        descriptor=descriptor,
        ledger={"build": dataclasses.asdict(build), "pushes": [dataclasses.asdict(p) for p in pushes]},
        # exactly the files the manifest hash covers: a reader accepts no other name
        version_files={name: (folder / name).read_bytes() for name in HASHED_FILES},
        adapters=engine_io.model_set_hashes(client, image),
    )
    name = fmt.archive_name(version, build.image_id, created, compressed=compress is not None)
    threads = None if compress is None else max(1, os.cpu_count() or 1)
    start = time.monotonic()
    written = write_archive(out_dir / name, data, _paused(engine_io.save_chunks(client, build.image_id)),
                            compress_threads=threads, image_size=image_size, progress=progress)
    seconds = time.monotonic() - start
    path = Path(written["path"])
    size = path.stat().st_size
    catalog.write_sidecar(path, catalog.facts_from_descriptor(path, {**descriptor, "image_member":
                                                                     written["image_member"]}), verified=None,
                          key=key)
    ctx.ledger.add_event("backup", f"created {name}", version=version, archive=str(path), size=size)
    image_bytes = written["image_bytes_in"]
    return {
        "archive": str(path),
        "name": name,
        "version": version,
        "image_id": build.image_id,
        "registry_digest": descriptor["registry_digest"],
        "size": size,
        "image_bytes": image_bytes,
        "compressed": compress,
        "ratio": round(image_bytes / written["sizes"][written["image_member"]], 3) if compress else None,
        "seconds": round(seconds, 2),
        "mb_per_s": round(image_bytes / 1e6 / seconds, 1) if seconds > 0 else None,
        "note": note,
        "sha256": written["sums"],
    }


def _paused(chunks: Iterable[bytes]) -> Iterator[bytes]:
    after = os.environ.get(PAUSE_ENV)
    limit = int(after) if after and after.isdigit() else None
    seen = 0
    for chunk in chunks:
        yield chunk
        seen += len(chunk)
        if limit is not None and seen >= limit:
            limit = None
            time.sleep(60)


def _mib(n: int) -> int:
    return n // (1 << 20)


def _tool_version() -> str:
    try:
        return metadata.version("aads-ulora")
    except metadata.PackageNotFoundError:
        return "unknown"
