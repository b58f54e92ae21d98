"""Check a `docker save` tar as it streams past: its config digest (the image id) and every layer.

The image is content-addressed: the config's sha256 is the image id, and the config lists the
sha256 (diff_id) of every layer tar. Hashing the config and the layers while they stream by
proves the whole image matches the image id recorded for the version, without unpacking
anything. Both layouts are read: the classic one (`<id>/layer.tar`, `<hex>.json`) and the OCI
one of newer engines (`blobs/sha256/<hex>`, symlinks from the classic names).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO

SMALL_FILE = 8 << 20   # JSON files docker save writes (manifest, config) are far smaller
READ_CHUNK = 1 << 20


class ImageTarError(ValueError):
    """The docker save tar is unreadable or does not match its own config."""


@dataclass
class ImageFacts:
    config_digest: str                      # sha256:<hex> of the config = the image id
    config: dict[str, Any]
    layers: list[str]                       # member names, in manifest order
    repo_tags: list[str] = field(default_factory=list)

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.config.get("config") or {}).get("Labels") or {})

    @property
    def diff_ids(self) -> list[str]:
        return list((self.config.get("rootfs") or {}).get("diff_ids") or [])


def inspect_stream(stream: BinaryIO) -> ImageFacts:
    """Read a docker save tar from `stream` to its end, hashing every file, and check it.

    Raises:
        ImageTarError: not a tar, no (or a malformed) manifest.json, the config missing, or a
            layer whose sha256 differs from the diff_id its config lists.
    """
    hashes: dict[str, str] = {}
    small: dict[str, bytes] = {}
    links: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=READ_CHUNK) as tar:
            for info in tar:
                if info.issym() or info.islnk():
                    links[_norm(info.name)] = _resolve(info.name, info.linkname, info.issym())
                    continue
                if not info.isfile():
                    continue
                f = tar.extractfile(info)
                h = hashlib.sha256()
                keep = info.size <= SMALL_FILE
                parts: list[bytes] = []
                while chunk := f.read(READ_CHUNK):
                    h.update(chunk)
                    if keep:
                        parts.append(chunk)
                hashes[_norm(info.name)] = h.hexdigest()
                if keep:
                    small[_norm(info.name)] = b"".join(parts)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ImageTarError(f"not a readable docker save tar ({e})") from None

    def content_hash(name: str) -> str | None:
        for _ in range(8):  # follow a few symlinks at most
            if name in hashes:
                return hashes[name]
            if name not in links:
                return None
            name = links[name]
        return None

    def content(name: str) -> bytes | None:
        for _ in range(8):
            if name in small:
                return small[name]
            if name not in links:
                return None
            name = links[name]
        return None

    raw_manifest = content("manifest.json")
    if raw_manifest is None:
        raise ImageTarError("it has no manifest.json")
    try:
        manifest = json.loads(raw_manifest)
        entry = manifest[0]
        config_name = _norm(entry["Config"])
        layers = [_norm(x) for x in entry["Layers"]]
        repo_tags = list(entry.get("RepoTags") or [])
    except (ValueError, LookupError, TypeError, AttributeError):
        raise ImageTarError("its manifest.json is malformed") from None
    if len(manifest) != 1:
        raise ImageTarError(f"it holds {len(manifest)} images, a backup holds exactly one")
    config_bytes = content(config_name)
    if config_bytes is None:
        raise ImageTarError(f"its config {config_name} is missing")
    try:
        config = json.loads(config_bytes)
    except ValueError:
        raise ImageTarError(f"its config {config_name} is not JSON") from None
    facts = ImageFacts(config_digest="sha256:" + hashlib.sha256(config_bytes).hexdigest(), config=config,
                       layers=layers, repo_tags=repo_tags)
    diff_ids = facts.diff_ids
    if len(diff_ids) != len(layers):
        raise ImageTarError(f"its config lists {len(diff_ids)} layers, its manifest {len(layers)}")
    for name, diff_id in zip(layers, diff_ids):
        got = content_hash(name)
        if got is None:
            raise ImageTarError(f"layer {name} is missing")
        if f"sha256:{got}" != diff_id:
            raise ImageTarError(f"layer {name} does not match its diff_id {diff_id[:19]}… (got sha256:{got[:12]}…)")
    return facts


def _norm(name: str) -> str:
    parts: list[str] = []
    for p in name.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return "/".join(parts)


def _resolve(name: str, target: str, symbolic: bool) -> str:
    # A symlink target is relative to the link's folder; a hard link names a path from the root.
    if not symbolic or target.startswith("/"):
        return _norm(target)
    folder = name.rsplit("/", 1)[0] if "/" in name else ""
    return _norm(f"{folder}/{target}")
