"""What `backup list` shows, kept cheap by a sidecar next to each archive.

The sidecar `.<archive name>.json` holds the archive's facts and the outcome of its last full
verify, with the file's size, mtime and inode at that moment: "verified" is shown only while
the file is unchanged since. An archive without a sidecar (copied from another host) is listed
from its descriptor (a header scan, no hashing) as not verified here.

Whoever hands over an archive can hand over a sidecar too, so a sidecar counts only when it
carries an HMAC made with this host's key (`<state_dir>/backup/host.key`, 32 random bytes,
mode 0600): any other sidecar is ignored, its facts included. Sidecars are written through a
fresh mkstemp file renamed into place, so a symlink planted in the archive's directory is
never written through.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.backup import format as fmt
from orchestrator.backup.archive import read_descriptor
from orchestrator.backup.reader import file_identity
from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.fsutil import atomic_write

SIDECAR_LIMIT = 64 << 10
KEY_BYTES = 32
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def sidecar_path(archive: Path) -> Path:
    return archive.with_name(f".{archive.name}.json")


def host_key_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / "backup" / "host.key"


def host_key(state_dir: str | Path, *, create: bool = True) -> bytes | None:
    """This host's key for sidecar HMACs; made on first use (0600) unless `create` is False (then None).

    Raises:
        OrchestratorError: the key file is a symlink, not ours to read, readable by others, or damaged.
    """
    path = host_key_path(state_dir)
    if not path.exists() and not path.is_symlink():
        if not create:
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".host.key.")   # 0600, O_EXCL
        except OSError as e:
            raise OrchestratorError(f"cannot create the backup host key {path}: {e.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)   # never replaces a key another process made meanwhile
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError as e:
        raise OrchestratorError(f"cannot read the backup host key {path}: {e.strerror} (it must be a plain file, "
                                f"not a symlink)") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        key = f.read(4096)
    if mode & 0o077:
        raise OrchestratorError(f"the backup host key {path} is open to other users (mode {mode & 0o777:o}): "
                                f"`chmod 600 {path}`")
    if len(key) < KEY_BYTES:
        raise OrchestratorError(f"the backup host key {path} is damaged (shorter than {KEY_BYTES} bytes): "
                                f"remove it (sidecars then read as not verified until verified again)")
    return key


def _mac(doc: dict[str, Any], key: bytes) -> str:
    body = json.dumps({k: v for k, v in doc.items() if k != "hmac"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def facts_from_descriptor(archive: Path, descriptor: dict[str, Any]) -> dict[str, Any]:
    return {
        "archive": archive.name,
        "version": descriptor.get("version"),
        "image_id": descriptor.get("image_id"),
        "registry_digest": descriptor.get("registry_digest"),
        "created_at": descriptor.get("created_at"),
        "created_by": descriptor.get("created_by"),
        "note": descriptor.get("note"),
        "compressed": descriptor.get("image_member") == fmt.IMAGE_ZSTD,
    }


def write_sidecar(archive: Path, facts: dict[str, Any], verified: dict[str, Any] | None,
                  key: bytes | None) -> None:
    """Record facts and the last verify outcome ({"at", "ok", "problem"}) beside the archive, signed.

    Without a key nothing is written. A read-only directory (a write-protected disk) only means
    listings stay "not verified".
    """
    if key is None:
        return
    doc: dict[str, Any] = {**facts, "file": file_identity(archive), "verified": verified}
    doc["hmac"] = _mac(doc, key)
    try:
        # atomic_write replaces a planted symlink itself, never its target
        atomic_write(sidecar_path(archive), json.dumps(doc, indent=2, sort_keys=True) + "\n", mode=0o600)
    except OSError:
        pass


def read_sidecar(archive: Path, key: bytes | None) -> dict[str, Any] | None:
    """The sidecar when this host wrote it (its HMAC checks out with `key`); else None."""
    if key is None:
        return None
    try:
        fd = os.open(sidecar_path(archive), os.O_RDONLY | _NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            doc = json.loads(f.read(SIDECAR_LIMIT + 1)[:SIDECAR_LIMIT])
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("hmac"), str):
        return None
    if not hmac.compare_digest(doc["hmac"], _mac(doc, key)):
        return None
    return doc


def verified_state(archive: Path, sidecar: dict[str, Any] | None) -> str:
    """"yes", "failed", "changed" (verified once, modified since) or "no"."""
    if not sidecar or not sidecar.get("verified"):
        return "no"
    if sidecar.get("file") != file_identity(archive):
        return "changed"
    return "yes" if sidecar["verified"].get("ok") else "failed"


def list_archives(directory: str | Path, host_key: bytes | None = None) -> list[dict[str, Any]]:
    """One row per backup archive in `directory` (newest first); files that are not ours are skipped.

    Only sidecars signed with `host_key` are trusted; without one every archive reads "no".

    Raises:
        UsageError: the directory does not exist.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"no directory {directory}")
    rows = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(fmt.ARCHIVE_SUFFIX) or not path.is_file():
            continue
        size = path.stat().st_size
        sidecar = read_sidecar(path, host_key)
        if (sidecar and sidecar.get("version") and sidecar.get("archive") == path.name
                and sidecar.get("file", {}).get("size") == size):
            facts = {k: sidecar.get(k) for k in ("archive", "version", "image_id", "registry_digest", "created_at",
                                                  "created_by", "note", "compressed")}
        else:
            try:
                _, descriptor = read_descriptor(path)
            except UsageError:   # a tar that is not a backup archive
                continue
            except OrchestratorError as e:
                rows.append({"archive": path.name, "path": str(path), "size": size, "verified": "damaged",
                             "problem": str(e)})
                continue
            facts = facts_from_descriptor(path, descriptor)
        state = verified_state(path, sidecar)
        row = {**facts, "path": str(path), "size": size, "verified": state}
        if sidecar and sidecar.get("verified"):
            row["verified_at"] = sidecar["verified"].get("at")
            if not sidecar["verified"].get("ok"):
                row["problem"] = sidecar["verified"].get("problem")
        rows.append(row)
    rows.sort(key=lambda r: r.get("created_at") or "", reverse=True)
    return rows
