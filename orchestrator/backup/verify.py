"""`backup verify`: every byte of an archive, without an engine.

Order: the structure (truncation, headers, end marker), SHA256SUMS against its own check line,
each small member against SHA256SUMS, then the image member streamed once — its checksum and
the docker save tar against its own config (layers vs diff_ids) — and finally the image config
digest against the recorded image id and the manifest label against the archived folder.
The first failure is reported by member name. The outcome is cached in the sidecar for `list`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.backup import catalog
from orchestrator.backup.archive import Progress, check_consistency, check_image, no_progress, open_archive
from orchestrator.backup.reader import ArchiveError
from orchestrator.ledger import now


def verify_archive(path: str | Path, progress: Progress = no_progress, host_key: bytes | None = None) -> dict[str, Any]:
    """Check the archive at `path` completely; returns a report, or raises naming the first problem.

    With `host_key` the outcome is kept in a sidecar signed with it (for `backup list`).

    Raises:
        UsageError / ForeignArchiveError: no such file, or not a backup archive.
        ArchiveError: truncated, damaged or changed (the member or byte offset is named).
    """
    path = Path(path)
    try:
        archive = open_archive(path)
        facts = check_image(archive, progress)
        checked = check_consistency(archive, facts)
    except ArchiveError as e:
        _remember(path, host_key, ok=False, problem=str(e))
        raise
    _remember(path, host_key, ok=True, problem=None, descriptor=archive.descriptor)
    return {
        "archive": str(path),
        "ok": True,
        "version": archive.version,
        "image_id": archive.image_id,
        "registry_digest": archive.descriptor.get("registry_digest"),
        "compressed": archive.compressed,
        "created_at": archive.descriptor.get("created_at"),
        "note": archive.descriptor.get("note"),
        "manifest_sha256": checked["manifest_sha256"],
        "layers": checked["layers"],
        "members": [{"name": m.name, "size": m.size, "sha256": archive.sums.entries.get(m.name)}
                    for m in archive.members if m.name in archive.sums.entries],
        "size": path.stat().st_size,
    }


def _remember(path: Path, key: bytes | None, ok: bool, problem: str | None,
              descriptor: dict[str, Any] | None = None) -> None:
    if key is None or not path.is_file():
        return
    old = catalog.read_sidecar(path, key) or {}
    facts = catalog.facts_from_descriptor(path, descriptor) if descriptor else \
        {k: v for k, v in old.items() if k not in ("file", "verified", "hmac")} or {"archive": path.name}
    catalog.write_sidecar(path, facts, {"at": now(), "ok": ok, "problem": problem}, key)
