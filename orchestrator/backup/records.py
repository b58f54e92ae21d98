"""The ledger records a restore writes, taken from an untrusted archive field by field.

`ledger.json` is the archive's word, not a fact. A restored build records what was loaded and
verified — the version (matched in full), the image id (the config digest checked while
loading), the manifest hash (of the archived folder) — plus the build's own facts, each checked
for type and shape: a missing or malformed field refuses the restore with its name, before
anything reaches the engine. Unknown fields are dropped. The push record of a local restore is
built here from the loaded image, never from the archive's `pushes` (a registry reference
there would make the next switch deploy an image the archive never held).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

from orchestrator.backup import format as fmt
from orchestrator.backup.archive import OpenArchive
from orchestrator.backup.reader import ArchiveError

VARIANTS = ("cpu", "cuda")
GOLDEN_ROWS = 256
GOLDEN_TEXT = 512
_COMMIT_RE = re.compile(r"[A-Za-z0-9._+-]{1,64}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_KEY_RE = re.compile(r"[a-z_][a-z0-9_]{0,63}")


def check_build_record(archive: OpenArchive) -> dict[str, Any]:
    """The build fields to record for `archive`, every one checked.

    Raises:
        ArchiveError: naming the first field of ledger.json's build record that is missing or
            malformed, or that disagrees with the descriptor.
    """
    build = archive.build

    def bad(name: str, why: str) -> ArchiveError:
        return ArchiveError(f"{archive.path.name}: {fmt.LEDGER}: build record field {name} {why}; nothing was "
                            f"restored")

    def need(name: str) -> Any:
        if name not in build or build[name] is None:
            raise bad(name, "is missing")
        return build[name]

    if need("version") != archive.version:
        raise bad("version", f"is {str(build['version'])[:80]!r}, the archive holds {archive.version}")
    if need("image_id") != archive.image_id:
        raise bad("image_id", f"is {str(build['image_id'])[:80]!r}, the descriptor records {archive.image_id}")
    variant = need("variant")
    if variant not in VARIANTS:
        raise bad("variant", f"is {str(variant)[:40]!r}, not one of {', '.join(VARIANTS)}")
    manifest = need("manifest_sha256")
    if not isinstance(manifest, str) or not _HEX64_RE.fullmatch(manifest):
        raise bad("manifest_sha256", "is not 64 hex digits")
    built_at = need("built_at")
    if not isinstance(built_at, str) or len(built_at) > 40 or _parse_time(built_at) is None:
        raise bad("built_at", f"is {str(built_at)[:40]!r}, not an ISO 8601 time")
    commit = build.get("git_commit")
    if commit is not None and (not isinstance(commit, str) or not _COMMIT_RE.fullmatch(commit)):
        raise bad("git_commit", f"is {str(commit)[:40]!r}, not a commit id")
    seconds = build.get("build_seconds")
    if seconds is not None and (not _is_number(seconds) or not 0 <= seconds < 1e7):
        raise bad("build_seconds", f"is {str(seconds)[:40]!r}, not a number of seconds")
    size = build.get("size_bytes")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= fmt.MAX_IMAGE_BYTES):
        raise bad("size_bytes", f"is {str(size)[:40]!r}, not a size in bytes")
    golden = need("golden")
    problem = _golden_problem(golden)
    if problem:
        raise bad("golden", problem)
    return {"version": archive.version, "variant": variant, "image_id": archive.image_id,
            "manifest_sha256": manifest, "git_commit": commit, "built_at": built_at, "build_seconds": seconds,
            "size_bytes": size, "golden": golden}


def local_push_record(version: str, repository: str, image_id: str, origin: str, *,
                      tag: str | None = None) -> dict[str, Any]:
    """The push record of an image restored without a registry: the local tag and the image id."""
    return {"version": version, "repository": repository, "tag": tag or version, "digest": image_id,
            "origin": origin}


def _parse_time(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _golden_problem(golden: Any) -> str | None:
    """Why `golden` is not a list of golden output rows, or None."""
    if not isinstance(golden, list) or len(golden) > GOLDEN_ROWS:
        return f"is not a list of at most {GOLDEN_ROWS} rows"
    for i, row in enumerate(golden):
        if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not row["image"]:
            return f"row {i} has no image name"
        for key, value in row.items():
            if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
                return f"row {i} has a malformed key {str(key)[:40]!r}"
            if value is None or isinstance(value, bool) or (_is_number(value)):
                continue
            if not isinstance(value, str) or len(value) > GOLDEN_TEXT:
                return f"row {i} field {key} is not a short string, number, boolean or null"
    return None
