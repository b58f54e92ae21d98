"""Bundles: a directory of model files plus `bundle.json` holding the SHA-256 of every file.

A bundle is written into a temporary sibling directory and renamed into place, so a crash
never leaves half a bundle behind. Reading verifies every listed hash and refuses a bundle
whose listed files are missing or changed, naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = 1


class ModelLoadError(Exception):
    """Model files that are missing, unreadable or fail their hash; the message names the path."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_tree(root: str | Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every regular file under root, keyed by its POSIX path relative to root."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in skip:
            out[rel] = sha256_file(p)
    return out


def verify_hashes(root: str | Path, expected: dict[str, str], what: str) -> None:
    """Raise ModelLoadError naming the first file that is missing or does not match."""
    root = Path(root)
    for rel, digest in sorted(expected.items()):
        path = root / rel
        if not path.is_file():
            raise ModelLoadError(f"{what}: file {path} is missing")
        try:
            actual = sha256_file(path)
        except OSError as e:
            raise ModelLoadError(f"{what}: file {path} cannot be read ({e.strerror})") from None
        if actual != digest:
            raise ModelLoadError(f"{what}: file {path} does not match its recorded sha256 (expected {digest[:12]}…, got {actual[:12]}…)")


class HashCheck:
    """`verify_hashes` in a thread; `result()` waits for it and raises its ModelLoadError.

    Hashing releases the GIL on large reads, so it runs on another core beside imports and loading.
    """

    def __init__(self, root: Path, expected: dict[str, str], what: str):
        self.error: ModelLoadError | None = None
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, args=(root, expected, what), name="hash-check", daemon=True)
        self._thread.start()

    def _run(self, root: Path, expected: dict[str, str], what: str) -> None:
        started = time.perf_counter()
        try:
            verify_hashes(root, expected, what)
        except ModelLoadError as e:
            self.error = e
        finally:
            self.seconds = time.perf_counter() - started

    def result(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise self.error


def write_bundle(directory: str | Path, meta: dict) -> dict:
    """Hash every file already in `directory` and write bundle.json = meta + files. Returns it."""
    directory = Path(directory)
    doc = {"format": BUNDLE_FORMAT, **meta, "files": hash_tree(directory, skip=(BUNDLE_FILE,))}
    (directory / BUNDLE_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


def read_json(path: Path, missing: str = "") -> object:
    """A JSON file of a model set; ModelLoadError naming it when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is missing{missing}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path} cannot be read ({e})") from None


def read_bundle(directory: str | Path, kind: str | None = None) -> dict:
    """Load bundle.json and verify every file it lists. Raises ModelLoadError naming the problem."""
    directory = Path(directory)
    path = directory / BUNDLE_FILE
    if not directory.is_dir():
        raise ModelLoadError(f"bundle directory {directory} does not exist")
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict) or not doc["files"]:
        raise ModelLoadError(f"{path} lists no files")
    if doc.get("format") != BUNDLE_FORMAT:
        raise ModelLoadError(f"{path}: unsupported bundle format {doc.get('format')!r}")
    if kind is not None and doc.get("kind") != kind:
        raise ModelLoadError(f"{path}: expected a {kind} bundle, found {doc.get('kind')!r}")
    verify_hashes(directory, doc["files"], f"bundle {directory}")
    return doc


class staged_directory:
    """Context manager: yields a fresh temp dir next to `target`; on success it replaces target."""

    def __init__(self, target: str | Path):
        self.target = Path(target)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
