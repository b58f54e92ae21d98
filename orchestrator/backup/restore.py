"""`backup restore`: an archive back into an engine and a ledger, ready to switch to.

Nothing is recorded, tagged or written to versions/ before the archive proved whole:
1. structure and every small member against SHA256SUMS; the archived folder is a valid manifest
   whose hash the build record names; conflicts with this host (a different local folder, another
   image recorded for the version) are refused unless --force;
2. the image member streams once into `docker load` while its checksum is computed. The engine
   checks every layer against the image config, and the loaded id must be the recorded one (the
   config digest), so the image is exactly the one backed up. A checksum or id mismatch removes
   what this load added and refuses;
3. only then: tag `<registry>:<version>`, restore the folder when absent (or replace it with
   --force, keeping the old one under the state dir), and record the build (origin
   `restore:<archive>`) with either a push record of origin `restore-local` (no registry: resolve
   skips the registry check, the compose target runs the local image id) or, with --push, a
   real push to the configured registry.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from orchestrator.backup import catalog, engine_io
from orchestrator.backup import format as fmt
from orchestrator.backup.archive import OpenArchive, Progress, image_stream, no_progress, open_archive
from orchestrator.backup.create import SPACE_MARGIN
from orchestrator.backup.reader import ArchiveError, MemberReader
from orchestrator.context import Context
from orchestrator.engine import docker_client
from orchestrator.errors import EngineError, NoSpaceError, UsageError
from orchestrator.ledger import now
from orchestrator.variants import registry_tag
from serving.manifest import ManifestError, load_manifest, manifest_sha256, validate_version_name

RESTORE_LOCAL = "restore-local"
CHUNK = 1 << 20


def restore_backup(ctx: Context, archive_path: str | Path, *, push: bool = False, force: bool = False,
                   progress: Progress = no_progress,
                   engine_free: Callable[[Any], tuple[str, int] | None] = engine_io.engine_free_bytes) -> dict[str, Any]:
    """Restore the archive at `archive_path`; returns what was done (for the CLI).

    Raises:
        UsageError: no such file, not a backup, or a conflict with this host without `force`.
        ArchiveError: the archive is damaged or changed (nothing restored).
        NoSpaceError: the engine's data root lacks the room the image needs.
        EngineError / RegistryError: docker load or the push failed.
    """
    path = Path(archive_path)
    archive = open_archive(path)
    version, image_id = archive.version, archive.image_id
    folder_sha = _check_records(archive)

    local_dir = ctx.config.versions_path / version
    folder_state = _compare_folder(local_dir, archive.version_files)
    if folder_state == "differs" and not force:
        raise UsageError(f"{local_dir} differs from the folder in {path.name} (here {_local_sha(local_dir)}, archived "
                         f"{folder_sha[:12]}…): refusing to restore over it; pass --force to replace the local folder "
                         f"(it is kept under {ctx.config.state_path / 'backup' / 'replaced'})")
    variant = archive.build.get("variant") or "cpu"  # each variant has its own records and tag
    latest = ctx.ledger.latest_build(version, variant)
    if latest is not None and latest.image_id != image_id and not force:
        raise UsageError(f"the ledger here records another image for {version} (build {latest.id}, "
                         f"{latest.image_id[:19]}…; the archive holds {image_id[:19]}…): pass --force to make the "
                         f"archived image the current one")
    latest_push = ctx.ledger.latest_push(version, variant)
    recorded = (latest is not None and latest.image_id == image_id and latest_push is not None
                and latest_push.build_id == latest.id)

    client = docker_client(timeout=3600)
    existed = engine_io.get_image(client, image_id) is not None
    if not existed:
        _check_engine_space(client, archive, engine_free)
    start = time.monotonic()
    stored = _load_verified(client, archive, existed, progress)
    seconds = time.monotonic() - start

    engine_io.tag(client, image_id, ctx.config.registry, registry_tag(version, variant))
    folder_done = _restore_folder(ctx, local_dir, archive, folder_state)

    build_fields = {k: archive.build.get(k) for k in ("version", "variant", "image_id", "manifest_sha256",
                                                      "git_commit", "built_at", "build_seconds", "size_bytes",
                                                      "golden")}
    build_fields["origin"] = f"restore:{path.name}"
    result: dict[str, Any] = {
        "archive": str(path), "version": version, "image_id": image_id, "loaded": not existed,
        "folder": folder_done, "seconds": round(seconds, 2),
        "mb_per_s": round(stored / 1e6 / seconds, 1) if seconds > 0 else None,
    }
    if push:
        from orchestrator.push import push as push_version

        if latest is None or latest.image_id != image_id:
            build, _ = ctx.ledger.record_restore(build=build_fields, push=None)
            result["build_id"] = build.id
        record, pushed = push_version(ctx, version, variant=variant)
        result.update(origin=record.origin, registry_digest=record.digest, push_id=record.id,
                      ledger="recorded" if pushed else "already recorded")
    elif recorded and latest_push.origin in (RESTORE_LOCAL, "push"):
        result.update(origin=latest_push.origin, registry_digest=latest_push.digest, build_id=latest.id,
                      push_id=latest_push.id, ledger="already recorded")
    else:
        last = archive.pushes[-1] if archive.pushes else None
        push_fields = {"version": version, "repository": (last or {}).get("repository") or ctx.config.registry,
                       "tag": registry_tag(version, variant), "digest": (last or {}).get("digest") or image_id,
                       "origin": RESTORE_LOCAL}
        build, push_rec = ctx.ledger.record_restore(build=build_fields, push=push_fields)
        result.update(origin=RESTORE_LOCAL, registry_digest=push_rec.digest, build_id=build.id,
                      push_id=push_rec.id, ledger="recorded")
    ctx.ledger.add_event("backup", f"restored {version} from {path.name}", version=version, archive=str(path),
                         origin=result["origin"], image_id=image_id)
    catalog.write_sidecar(path, catalog.facts_from_descriptor(path, archive.descriptor),
                          {"at": now(), "ok": True, "problem": None})
    return result


def _check_records(archive: OpenArchive) -> str:
    """The archive's own records agree (version name, image id, folder vs recorded manifest hash)."""
    name = archive.path.name
    try:
        validate_version_name(archive.version)
    except ValueError as e:
        raise ArchiveError(f"{name}: {e}") from None
    if archive.build.get("image_id") != archive.image_id or archive.build.get("version") != archive.version:
        raise ArchiveError(f"{name}: {fmt.LEDGER} and {fmt.DESCRIPTOR} disagree about the image or version")
    try:
        with archive.version_dir() as d:
            load_manifest(d)
            folder_sha = manifest_sha256(d)
    except (ManifestError, OSError) as e:
        raise ArchiveError(f"{name}: the archived version folder is not a valid manifest ({e})") from None
    if archive.build.get("manifest_sha256") != folder_sha:
        raise ArchiveError(f"{name}: the archived folder hashes to {folder_sha[:12]}…, the build record names "
                           f"{str(archive.build.get('manifest_sha256'))[:12]}…")
    return folder_sha


def _local_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def _compare_folder(local_dir: Path, archived: dict[str, bytes]) -> str:
    if not local_dir.exists():
        return "absent"
    if not local_dir.is_dir():
        return "differs"
    return "same" if _local_files(local_dir) == archived else "differs"


def _local_sha(local_dir: Path) -> str:
    try:
        return manifest_sha256(local_dir)[:12] + "…"
    except OSError:
        return "incomplete"


def _check_engine_space(client: Any, archive: OpenArchive, engine_free: Callable[[Any], tuple[str, int] | None]) -> None:
    found = engine_free(client)
    size = int(archive.descriptor.get("image_size") or archive.image.size)
    if found is None:
        return
    root, free = found
    need = int(size * 1.01) + SPACE_MARGIN
    if free < need:
        raise NoSpaceError(f"not enough free space for the engine in {root}: loading {archive.version} needs about "
                           f"{need >> 20} MiB, {free >> 20} MiB are free; nothing was restored")


def _load_verified(client: Any, archive: OpenArchive, existed: bool, progress: Progress) -> int:
    """docker load the image member while hashing it; undo and refuse on any mismatch. Returns bytes read."""
    import zstandard

    name, member = archive.path.name, archive.image.name
    holder: dict[str, BaseException] = {}
    load_error: EngineError | None = None
    loaded: list[str] = []
    with image_stream(archive) as (stream, reader):
        feed = _feed(stream, reader, progress, holder)
        try:
            # Uncompressed, the size is known: a Content-Length upload sends each chunk as it is
            # (chunked encoding would copy every MiB once more to frame it).
            loaded = engine_io.load(client, feed if archive.compressed else _Sized(feed, archive.image.size))
        except EngineError as e:
            load_error = e
        except _UploadAborted:
            pass  # the cause is in holder
        finally:
            feed.close()  # stops the reading thread before anyone else reads the file
        digest = _drain(reader, holder)
    bad_sum = digest is None or digest != archive.sums.entries[member]
    stream_error = holder.get("error")
    if isinstance(stream_error, (KeyboardInterrupt, SystemExit)):
        _undo(client, archive, existed, loaded)
        raise stream_error
    if bad_sum or stream_error or load_error:
        _undo(client, archive, existed, loaded)
        if bad_sum:
            raise ArchiveError(f"{name}: member {member} fails its checksum; nothing was restored")
        if isinstance(stream_error, zstandard.ZstdError):
            raise ArchiveError(f"{name}: member {member} has a damaged zstd stream ({stream_error}); "
                               f"nothing was restored")
        if stream_error is not None:
            raise stream_error
        raise load_error
    image = engine_io.get_image(client, archive.image_id)
    if image is None:
        _undo(client, archive, existed, loaded)
        raise ArchiveError(f"{name}: docker load gave {', '.join(loaded) or 'nothing'}, not the recorded image "
                           f"{archive.image_id}; nothing was restored")
    label = (image.labels or {}).get("aads.manifest-sha256")
    if label != archive.build.get("manifest_sha256"):
        _undo(client, archive, existed, loaded)
        raise ArchiveError(f"{name}: the image label aads.manifest-sha256 ({label}) does not match the archived "
                           f"folder; nothing was restored")
    return archive.image.size


def _feed(stream: Any, reader: MemberReader, progress: Progress, holder: dict[str, BaseException]) -> Iterator[bytes]:
    """The image bytes for the upload, read (and hashed) by a thread a few MiB ahead of the engine.

    Reading the disk and hashing overlap with the upload instead of taking turns with it: the
    engine is never kept waiting for the next chunk. An error is kept in `holder` and aborts the
    upload (the connection drops, the engine discards the partial load); the caller raises the
    real cause afterwards.
    """
    def chunks() -> Iterator[bytes]:
        while chunk := stream.read(CHUNK):
            yield chunk

    total = reader.member.size
    ahead = engine_io.read_ahead(chunks(), engine_io.PREFETCH, join_timeout=60)
    try:
        for chunk in ahead:
            yield chunk
            progress("load", reader.done, total)
    except GeneratorExit:  # closed early: the upload ended (the engine refused it); not an error here
        raise
    except BaseException as e:  # noqa: BLE001 - handed to the caller, which re-raises it
        holder["error"] = e
        # Raise rather than end: a short body under Content-Length would leave the engine
        # waiting for the rest.
        raise _UploadAborted from None
    finally:
        ahead.close()


class _UploadAborted(Exception):
    """The feed stopped on an error (kept in the holder); the HTTP client drops the connection."""


class _Sized:
    """An iterable body with a length, so the HTTP client sends Content-Length instead of chunks."""

    def __init__(self, chunks: Iterator[bytes], size: int):
        self._chunks, self._size = chunks, size

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def __len__(self) -> int:
        return self._size


def _drain(reader: MemberReader, holder: dict[str, BaseException]) -> str | None:
    try:
        return reader.finish()
    except ArchiveError as e:
        holder.setdefault("error", e)
        return None


def _undo(client: Any, archive: OpenArchive, existed: bool, loaded: list[str]) -> None:
    """Remove what this load added (never an image that was here before)."""
    if existed:
        return
    for ref in {archive.image_id, *[x for x in loaded if x.startswith("sha256:")]}:
        engine_io.remove_image(client, ref)


def _restore_folder(ctx: Context, local_dir: Path, archive: OpenArchive, state: str) -> str:
    if state == "same":
        return "unchanged"
    parent = local_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{local_dir.name}.restore-", dir=parent))
    try:
        for file_name, content in archive.version_files.items():
            (tmp / file_name).write_bytes(content)
        if state == "differs":
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            keep = ctx.config.state_path / "backup" / "replaced" / f"{local_dir.name}-{stamp}"
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(local_dir), str(keep))
        os.rename(tmp, local_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return "replaced" if state == "differs" else "restored"
