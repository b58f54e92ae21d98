"""`orchestrator new-version vX.Y.Z-NAME --from vA.B.C-OLD`: start a version from an existing one.

Copies the folder, rewrites `version:` and `created:`, points `fallback:` at the source version
(the one operators return to), validates the result with the manifest schema, then moves it
into place in one rename. Comments and the rest of the YAML stay as written by people.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import tempfile
from pathlib import Path

from orchestrator.context import Context
from orchestrator.errors import UsageError
from orchestrator.variants import refuse_suffixed_name
from aads_manifest import MANIFEST_FILE, load_manifest, validate_version_name


def _set_key(text: str, key: str, value: str) -> str:
    """Replace a top-level `key: ...` line (or add it after `version:`)."""
    line = f"{key}: {value}"
    pattern = re.compile(rf"^{key}:.*$", re.M)
    if pattern.search(text):
        return pattern.sub(line, text, count=1)
    return re.sub(r"^(version:.*)$", rf"\1\n{line}", text, count=1, flags=re.M)


def new_version(ctx: Context, name: str, source: str) -> Path:
    for v in (name, source):
        try:
            validate_version_name(v)
        except ValueError as e:
            raise UsageError(str(e)) from None
    refuse_suffixed_name(name)
    versions = ctx.config.versions_path
    src, dst = versions / source, versions / name
    if not src.is_dir():
        raise UsageError(f"unknown version {source}: no folder {src}")
    if dst.exists():
        raise UsageError(f"version {name} already exists at {dst}: refusing to overwrite it")
    load_manifest(src)  # the source must be valid to start from
    work = Path(tempfile.mkdtemp(prefix=f".new-{name}.", dir=versions))
    try:
        staged = work / name
        shutil.copytree(src, staged, ignore=shutil.ignore_patterns(".*", "__pycache__"))
        text = (staged / MANIFEST_FILE).read_text()
        text = text.replace(f"AADS-ULoRA {source}", f"AADS-ULoRA {name}")
        text = _set_key(text, "version", name)
        text = _set_key(text, "created", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        text = _set_key(text, "fallback", source)
        (staged / MANIFEST_FILE).write_text(text)
        load_manifest(staged)  # raises ManifestError listing every problem
        staged.rename(dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dst
