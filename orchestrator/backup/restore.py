"""`backup restore`: an archive back into an engine and a ledger, ready to switch to.

Nothing is recorded, tagged or written to versions/ before the archive proved whole:
1. structure and every small member against SHA256SUMS; the archived folder is a valid manifest
   whose hash the build record names; conflicts with this host (a different local folder, another
   image recorded for the version) are refused unless --force;
   every field of the build record is checked (records.py): a malformed one refuses here;
2. the image member streams once into `docker load` through a gate (dockersave.ImageTarGate)
   that parses the docker save tar as it passes and holds back its end-of-archive marker until
   the whole tar checked out: exactly one image, no tags, no `repositories`, nothing the image
   does not use, config digest == the recorded image id, every layer against its diff_id, the
   member against SHA256SUMS. The engine cannot finish unpacking without the marker, so a
   refused image is never loaded (the upload is dropped); anything a load still added is removed;
3. only then: tag `<registry>:<version>`, restore the folder when absent (or replace it with
   --force, keeping the old one under the state dir), and record the build (origin
   `restore:<archive>`) with either a push record of origin `restore-local` (the local tag and
   the image id: what was loaded and verified, never the archive's registry reference) or, with
   --push, a real push to the configured registry.
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
from orchestrator.backup.archive import (OpenArchive, Progress, image_stream, inside, no_progress, open_archive,
                                         write_new_file)
from orchestrator.backup.create import SPACE_MARGIN
from orchestrator.backup.dockersave import ImageTarError, ImageTarGate
from orchestrator.backup.reader import ArchiveError, MemberReader
from orchestrator.backup.records import check_build_record, local_push_record
from orchestrator.context import Context
from orchestrator.engine import docker_client
from orchestrator.errors import EngineError, NoSpaceError, UsageError
from orchestrator.ledger import now
from orchestrator.variants import registry_tag
from aads_manifest import HASHED_FILES, ManifestError, load_manifest, manifest_sha256

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
    key = catalog.host_key(ctx.config.state_path)   # a broken key file stops us before anything is done
    archive = open_archive(path)
    version, image_id = archive.version, archive.image_id
    folder_sha = _check_records(archive)
    build_fields = check_build_record(archive)

    local_dir = inside(ctx.config.versions_path, version)
    folder_state = _compare_folder(local_dir, archive.version_files)
    if folder_state == "differs" and not force:
        raise UsageError(f"{local_dir} differs from the folder in {path.name} (here {_local_sha(local_dir)}, archived "
                         f"{folder_sha[:12]}…): refusing to restore over it; pass --force to replace the local folder "
                         f"(it is kept under {ctx.config.state_path / 'backup' / 'replaced'})")
    variant = build_fields.get("variant") or "cpu"  # checked above; each variant has its own records and tag
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

    loaded_image = engine_io.get_image(client, image_id)
    build_fields["size_bytes"] = int((loaded_image.attrs if loaded_image else {}).get("Size") or 0) or None
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
        push_fields = local_push_record(version, ctx.config.registry, image_id, RESTORE_LOCAL,
                                        tag=registry_tag(version, variant))
        build, push_rec = ctx.ledger.record_restore(build=build_fields, push=push_fields)
        result.update(origin=RESTORE_LOCAL, registry_digest=push_rec.digest, build_id=build.id,
                      push_id=push_rec.id, ledger="recorded")
    # What the archive says about its registry is kept as its claim, for the operator to compare.
    claimed = {k: str(archive.descriptor.get(k))[:200] for k in ("registry_digest", "repository")
               if archive.descriptor.get(k)}
    ctx.ledger.add_event("backup", f"restored {version} from {path.name}", version=version, archive=str(path),
                         origin=result["origin"], image_id=image_id, archive_claims=claimed)
    catalog.write_sidecar(path, catalog.facts_from_descriptor(path, archive.descriptor),
                          {"at": now(), "ok": True, "problem": None}, key)
    return result


def _check_records(archive: OpenArchive) -> str:
    """The archive's own records agree (version name, image id, folder vs recorded manifest hash)."""
    name = archive.path.name
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
    """The local folder's files that an archive holds (those the manifest hash covers)."""
    return {name: (folder / name).read_bytes() for name in HASHED_FILES if (folder / name).is_file()}


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
    """docker load the image member through the gate; undo and refuse on any problem. Returns bytes read."""
    name, member = archive.path.name, archive.image.name
    holder: dict[str, BaseException] = {}
    outcome: dict[str, Any] = {}
    load_error: EngineError | None = None
    loaded: list[str] = []
    with image_stream(archive) as (stream, reader):
        feed = _feed(stream, reader, progress, holder, fmt.image_tar_limit(archive.descriptor),
                     lambda gate, problem=None: _release_check(archive, gate, reader, outcome, problem))
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
        if "digest" not in outcome and "error" not in holder:
            # The engine ended the upload first: blame a changed member before the engine's words.
            try:
                if reader.finish() != archive.sums.entries[member]:
                    holder["error"] = ArchiveError(f"{name}: member {member} fails its checksum; nothing was "
                                                   f"restored")
            except ArchiveError as e:
                holder["error"] = e
    stream_error = holder.get("error")
    if stream_error is not None or load_error is not None:
        _undo(client, archive, existed, loaded)
        if stream_error is not None:
            raise stream_error
        raise load_error
    strays = [x for x in loaded if x != archive.image_id]
    image = engine_io.get_image(client, archive.image_id)
    if image is None or strays:
        _undo(client, archive, existed, loaded)
        raise ArchiveError(f"{name}: docker load gave {', '.join(loaded) or 'nothing'}, not just the recorded image "
                           f"{archive.image_id}; nothing was restored")
    label = (image.labels or {}).get("aads.manifest-sha256")
    if label != archive.build.get("manifest_sha256"):
        _undo(client, archive, existed, loaded)
        raise ArchiveError(f"{name}: the image label aads.manifest-sha256 ({label}) does not match the archived "
                           f"folder; nothing was restored")
    return archive.image.size


def _release_check(archive: OpenArchive, gate: ImageTarGate | None, reader: MemberReader,
                   outcome: dict[str, Any], problem: str | None = None) -> None:
    """Everything the image must pass before its last bytes go to the engine; raises ArchiveError.

    `gate` None: the stream already failed (`problem` says how); the checksum is still computed,
    so a changed member is blamed on its bytes first.
    """
    name, member = archive.path.name, archive.image.name
    facts = None
    if gate is not None:
        try:
            facts = gate.close(archive.image_id)
        except ImageTarError as e:
            problem = str(e)
    digest = reader.finish()
    outcome["digest"] = digest
    if digest != archive.sums.entries[member]:
        raise ArchiveError(f"{name}: member {member} fails its checksum; nothing was restored")
    if problem or facts is None:
        raise ArchiveError(f"{name}: member {member} is not a valid image: {problem}; nothing was restored")
    labels = facts.labels
    if labels.get("aads.manifest-sha256") != archive.build.get("manifest_sha256") or \
            labels.get("aads.version") != archive.version:
        raise ArchiveError(f"{name}: the image labels (aads.version={labels.get('aads.version')}, "
                           f"aads.manifest-sha256={labels.get('aads.manifest-sha256')}) do not match the archived "
                           f"version folder; nothing was restored")
    outcome["facts"] = facts


def _feed(stream: Any, reader: MemberReader, progress: Progress, holder: dict[str, BaseException], limit: int,
          release_check: Callable[..., None]) -> Iterator[bytes]:
    """The image bytes for the upload, read (and hashed) by a thread a few MiB ahead of the engine.

    Reading the disk and hashing overlap with the upload instead of taking turns with it: the
    engine is never kept waiting for the next chunk. Every byte passes the gate first, and what
    the gate does not call safe (the end-of-archive marker) is held until `release_check`
    passed. An error is kept in `holder` and aborts the upload (the connection drops, the engine
    discards the partial load); the caller raises the real cause afterwards.
    """
    import zstandard

    def chunks() -> Iterator[bytes]:
        gate = ImageTarGate(limit=limit, hash_large=False)   # docker load checks layers against diff_ids
        held = bytearray()
        sent = 0
        try:
            while chunk := stream.read(CHUNK):
                gate.feed(chunk)
                if not held and gate.safe == sent + len(chunk):  # the usual case: all of it is layer data
                    sent += len(chunk)
                    yield chunk
                    continue
                held += chunk
                n = gate.safe - sent
                if n > 0:
                    out = bytes(held[:n])
                    del held[:n]
                    sent += n
                    yield out
        except ImageTarError as e:
            release_check(None, problem=str(e))
        except zstandard.ZstdError as e:
            release_check(None, problem=f"its zstd stream is damaged ({e})")
        else:
            release_check(gate)
        if held:
            yield bytes(held)

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


def _undo(client: Any, archive: OpenArchive, existed: bool, loaded: list[str]) -> None:
    """Remove what this load added (never an image that was here before)."""
    if existed:
        return
    for ref in {archive.image_id, *[x for x in loaded if x.startswith("sha256:")]}:
        engine_io.remove_image(client, ref)


def _restore_folder(ctx: Context, local_dir: Path, archive: OpenArchive, state: str) -> str:
    """Write the archived folder as `local_dir` (a fresh temporary folder renamed into place)."""
    if state == "same":
        return "unchanged"
    parent = local_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{local_dir.name}.restore-", dir=parent))
    try:
        for file_name in HASHED_FILES:
            write_new_file(inside(tmp, file_name), archive.version_files[file_name])
        if state == "differs":
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            replaced = ctx.config.state_path / "backup" / "replaced"
            replaced.mkdir(parents=True, exist_ok=True)
            # os.rename, not shutil.move: a planted symlink at the name fails it instead of being followed
            os.rename(local_dir, inside(replaced, f"{local_dir.name}-{stamp}"))
        os.rename(tmp, local_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return "replaced" if state == "differs" else "restored"
