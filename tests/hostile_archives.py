"""Craft backup archives as an attacker would: every checksum right, the content hostile.

SHA256SUMS proves an archive is the one written, not who wrote it: anyone can write a
self-consistent archive. These helpers write such archives (through the real ArchiveWriter, so
headers, padding and SHA256SUMS are all valid) with a chosen version name, member names, ledger
records, and a `docker save` tar with chosen tags, extra images or extra files. Raw tar headers
(negative sizes, oversized members) are written by hand where the writer would refuse them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import random
import tarfile
from pathlib import Path
from typing import Any

from orchestrator.backup import format as fmt
from orchestrator.backup.writer import ArchiveWriter
from serving.manifest import manifest_sha256

REPO = Path(__file__).resolve().parents[1]
VERSION = "v5.5.4-dinov3"
VERSION_DIR = REPO / "versions" / VERSION


def tar_bytes(files: dict[str, bytes], *, fmt_: int = tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt_) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_parts(labels: dict[str, str], *, seed: int = 7, layer_sizes: tuple[int, ...] = (70_000, 30_001),
                layer_blob: bytes | None = None) -> tuple[dict[str, bytes], str, dict[str, Any]]:
    """The files of one image in classic `docker save` layout, without manifest.json:
    (files, image id, manifest entry)."""
    rng = random.Random(seed)
    layers = [layer_blob] if layer_blob is not None else [
        tar_bytes({f"data/file{i}.bin": rng.randbytes(size)}) for i, size in enumerate(layer_sizes)]
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": labels},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    files: dict[str, bytes] = {}
    names = []
    for i, layer in enumerate(layers):
        d = hashlib.sha256(f"{seed}-layer{i}".encode()).hexdigest()
        files[f"{d}/VERSION"] = b"1.0"
        files[f"{d}/layer.tar"] = layer
        names.append(f"{d}/layer.tar")
    files[f"{image_id[7:]}.json"] = config
    return files, image_id, {"Config": f"{image_id[7:]}.json", "RepoTags": None, "Layers": names}


def good_labels(version: str = VERSION) -> dict[str, str]:
    return {"aads.manifest-sha256": manifest_sha256(VERSION_DIR), "aads.version": version}


def docker_save(labels: dict[str, str] | None = None, *, repo_tags: list[str] | None = None,
                extra_images: int = 0, extra_files: dict[str, bytes] | None = None,
                layer_blob: bytes | None = None) -> tuple[bytes, str]:
    """(docker save tar, image id of the first image); knobs for what an attacker adds."""
    files, image_id, entry = image_parts(labels or good_labels(), layer_blob=layer_blob)
    entry["RepoTags"] = repo_tags
    entries = [entry]
    for k in range(extra_images):
        more, _, more_entry = image_parts({"evil": str(k)}, seed=100 + k, layer_sizes=(5000,))
        files.update(more)
        entries.append(more_entry)
    files["manifest.json"] = json.dumps(entries).encode()
    files.update(extra_files or {})
    return tar_bytes(files), image_id


def build_record(image_id: str, version: str = VERSION, **changes: Any) -> dict[str, Any]:
    record = {"id": 3, "version": version, "variant": "cpu", "image_id": image_id,
              "manifest_sha256": manifest_sha256(VERSION_DIR), "git_commit": "abc1234",
              "built_at": "2026-11-24T19:00:00+00:00", "build_seconds": 1.0, "size_bytes": 1000,
              "golden": [{"image": "a.png", "decision": "diagnosis"}], "origin": "build"}
    record.update(changes)
    return {k: v for k, v in record.items() if v is not _DROP}


_DROP = object()


def drop() -> Any:
    """A marker for build_record(**{field: drop()}): leave that field out."""
    return _DROP


def version_files() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(VERSION_DIR.iterdir()) if p.is_file()}


def write_hostile(out_dir: Path, *, version: str = VERSION, image: bytes | None = None, image_id: str | None = None,
                  descriptor: dict[str, Any] | None = None, build: dict[str, Any] | None = None,
                  pushes: list[dict[str, Any]] | None = None, files: dict[str, bytes] | None = None,
                  compress: bool = False, name: str | None = None, member_version: str | None = None) -> Path:
    """A self-consistent archive (valid headers and SHA256SUMS) with the given content."""
    if image is None:
        image, made_id = docker_save()
        image_id = image_id or made_id
    assert image_id is not None
    doc = {"format": fmt.FORMAT, "format_version": fmt.FORMAT_VERSION, "version": version, "image_id": image_id,
           "registry_digest": None, "repository": None, "image_size": len(image),
           "created_at": "2026-11-24T20:00:00+00:00", "note": "crafted",
           "image_member": fmt.IMAGE_ZSTD if compress else fmt.IMAGE}
    doc.update(descriptor or {})
    ledger = {"build": build if build is not None else build_record(image_id, version), "pushes": pushes or []}
    if name is None and version != VERSION:  # a name that does not give the version away first
        name = "crafted.tar"
    name = name or fmt.archive_name(VERSION, image_id, dt.datetime(2026, 11, 24, 20, tzinfo=dt.timezone.utc),
                                    compressed=compress)
    path = out_dir / name
    with ArchiveWriter(path) as w:
        w.add_bytes(fmt.DESCRIPTOR, _json(doc))
        w.add_bytes(fmt.LEDGER, _json(ledger))
        for file_name, content in sorted((files if files is not None else version_files()).items()):
            w.add_bytes(f"{fmt.VERSIONS_PREFIX}{member_version or version}/{file_name}", content)
        w.add_bytes(fmt.ADAPTERS, _json({"files": {}}))
        w.add_stream(doc["image_member"], [image], compress_threads=0 if compress else None)
        w.commit()
    return path


def _json(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def raw_header(name: str, size_field: bytes, typeflag: bytes = b"0") -> bytes:
    """A ustar header with a size field given as raw 12 bytes (e.g. base-256 negative)."""
    block = bytearray(fmt.BLOCK)
    block[0:len(name)] = name.encode()
    block[100:108] = b"0000644\0"
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = size_field
    block[136:148] = b"00000000000\0"
    block[156:157] = typeflag
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    chk = sum(block)
    block[148:156] = f"{chk:06o}\0 ".encode()
    return bytes(block)


def negative_size() -> bytes:
    """A base-256 size field holding -512."""
    return b"\xff" * 10 + b"\xfe\x00"


def octal_size(n: int) -> bytes:
    return f"{n:011o}\0".encode()
