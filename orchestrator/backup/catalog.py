"""What `backup list` shows, kept cheap by a sidecar next to each archive.

The sidecar `.<archive name>.json` holds the archive's facts and the outcome of its last full
verify, with the file's size, mtime and inode at that moment: "verified" is shown only while
the file is unchanged since. An archive without a sidecar (copied from another host) is listed
from its descriptor (a header scan, no hashing) as not verified here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from orchestrator.backup import format as fmt
from orchestrator.backup.archive import read_descriptor
from orchestrator.backup.reader import file_identity
from orchestrator.errors import OrchestratorError, UsageError


def sidecar_path(archive: Path) -> Path:
    return archive.with_name(f".{archive.name}.json")


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


def write_sidecar(archive: Path, facts: dict[str, Any], verified: dict[str, Any] | None) -> None:
    """Record facts and the last verify outcome ({"at", "ok", "problem"}) beside the archive.

    A read-only directory (a write-protected disk) only means listings stay "not verified".
    """
    doc = {**facts, "file": file_identity(archive), "verified": verified}
    path = sidecar_path(archive)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def read_sidecar(archive: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(sidecar_path(archive).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def verified_state(archive: Path, sidecar: dict[str, Any] | None) -> str:
    """"yes", "failed", "changed" (verified once, modified since) or "no"."""
    if not sidecar or not sidecar.get("verified"):
        return "no"
    if sidecar.get("file") != file_identity(archive):
        return "changed"
    return "yes" if sidecar["verified"].get("ok") else "failed"


def list_archives(directory: str | Path) -> list[dict[str, Any]]:
    """One row per backup archive in `directory` (newest first); files that are not ours are skipped.

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
        sidecar = read_sidecar(path)
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
