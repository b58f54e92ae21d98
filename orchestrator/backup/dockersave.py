"""Check a `docker save` tar as it streams past, strictly: the image member of an archive is untrusted.

The image is content-addressed: the config's sha256 is the image id, and the config lists the
sha256 (diff_id) of every layer tar. Hashing the config and the layers while they stream by
proves the whole image matches the image id recorded for the version, without unpacking
anything. Both layouts are read: the classic one (`<id>/layer.tar`, `<hex>.json`) and the OCI
one of newer engines (`blobs/sha256/<hex>`, `index.json`, symlinks from the classic names).

`docker load` acts on more than the image: it applies `RepoTags` from manifest.json (or a
`repositories` file), loads every image listed, and on a containerd store names images from
index.json annotations. So the gate accepts only what `docker save <image id>` writes: exactly
one image, no tags, no `repositories`, no file the image does not reference. It parses the tar
itself (a strict ustar subset, no GNU long names, bounded PAX records) so that it reads the same
names the engine's Go tar reader reads, and so no header can make it buffer without limit.

`ImageTarGate.safe` is how many bytes can go on to `docker load` before the checks are done:
every byte before the tar's end-of-archive marker. The engine unpacks the whole tar before it
reads manifest.json, and cannot finish unpacking without the marker: holding the marker back
until `close()` passed means a refused image never gets loaded.

Over 400 lines on purpose: the tar parser and the image checks are one state machine over one
stream; split apart, a reader would have to hold both files to see which bytes are checked when.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO

SMALL_FILE = 8 << 20        # JSON files docker save writes (manifest, config) are far smaller
SMALL_TOTAL = 64 << 20      # all the small files kept in memory together
PAX_LIMIT = 64 << 10        # one PAX extended header
MAX_ENTRIES = 10_000        # tar entries in one image (a layer is 3-4 entries)
READ_CHUNK = 1 << 20
BLOCK = 512

_HEX = r"[0-9a-f]{64}"
FILE_RE = re.compile(rf"manifest\.json|index\.json|oci-layout|{_HEX}\.json|{_HEX}/(?:VERSION|json|layer\.tar)"
                     rf"|blobs/sha256/{_HEX}")
DIR_RE = re.compile(rf"{_HEX}|blobs|blobs/sha256")
PAX_KEYS = {"path", "linkpath", "size", "mtime", "atime", "ctime", "uid", "gid", "uname", "gname"}
NAME_ANNOTATIONS = ("org.opencontainers.image.ref.name", "io.containerd.image.name")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")


class ImageTarError(ValueError):
    """The docker save tar is unreadable, does not match its own config, or holds more than one
    untagged image."""


@dataclass
class ImageFacts:
    config_digest: str                      # sha256:<hex> of the config = the image id
    config: dict[str, Any]
    layers: list[str]                       # member names, in manifest order
    repo_tags: list[str] = field(default_factory=list)
    tar_bytes: int = 0                      # length of the docker save tar

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.config.get("config") or {}).get("Labels") or {})

    @property
    def diff_ids(self) -> list[str]:
        return list((self.config.get("rootfs") or {}).get("diff_ids") or [])


class ImageTarGate:
    """Feed a docker save tar in chunks (`feed`), then `close()` for its checked facts.

    Raises ImageTarError from `feed` as soon as the stream shows a problem (a foreign entry, a
    bad header, more bytes than `limit`) and from `close` for what needs the whole tar.
    """

    def __init__(self, *, limit: int | None = None, hash_large: bool = True):
        self.limit = limit
        # False: files over SMALL_FILE (the layers) are not hashed here. For docker load, which
        # checks every layer against its diff_id itself: one sha256 pass less while restoring.
        self.hash_large = hash_large
        self.consumed = 0          # bytes fed
        self.safe = 0              # bytes before the end-of-archive marker (see module docstring)
        self._buf = bytearray()    # an incomplete header or PAX block
        self._state = "header"     # header | pax | data | end | trailer
        self._left = 0             # data (+ padding) bytes left of the current entry
        self._data_left = 0        # data bytes left of the current entry (no padding)
        self._pax: dict[str, str] | None = None
        self._pax_size = 0
        self._hash: Any = None
        self._keep: list[bytes] | None = None
        self._name = ""
        self._entries = 0
        self._pos = 0              # bytes the parser has taken in
        self._kept_bytes = 0
        self.files: set[str] = set()
        self.hashes: dict[str, str] = {}
        self.small: dict[str, bytes] = {}
        self.links: dict[str, str] = {}
        self.dirs: set[str] = set()

    # -- streaming ----------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self.consumed += len(data)
        if self.limit is not None and self.consumed > self.limit:
            raise ImageTarError(f"it inflates to more than {self.limit} bytes, what its archive allows")
        view = memoryview(data)
        while view:
            if self._state == "data":
                view = self._data(view)
            elif self._state == "trailer":
                if bytes(view).strip(b"\0"):
                    raise ImageTarError("it has bytes after its end-of-archive marker")
                self._pos += len(view)
                return
            else:
                want = _padded(self._pax_size) if self._state == "pax" else BLOCK
                take = view[:want - len(self._buf)]
                self._buf += take
                self._pos += len(take)
                view = view[len(take):]
                if len(self._buf) == want:
                    block, self._buf = bytes(self._buf), bytearray()
                    self._block(block)

    def _data(self, view: memoryview) -> memoryview:
        n = min(len(view), self._left)
        data_n = min(n, self._data_left)
        if data_n:
            part = view[:data_n]
            if self._hash is not None:
                self._hash.update(part)
            if self._keep is not None:
                self._keep.append(bytes(part))
            self._data_left -= data_n
        self._left -= n
        self._pos += n
        self.safe = self._pos
        if self._left == 0:
            self._finish_entry()
        return view[n:]

    def _block(self, block: bytes) -> None:
        if self._state == "pax":
            self._pax = _parse_pax(block[:self._pax_size])
            self._state = "header"
            self.safe = self._pos
            return
        if self._state == "end":
            if block.strip(b"\0"):
                raise ImageTarError("damaged end-of-archive marker (one zero block, then data)")
            self._state = "trailer"
            return
        if not block.strip(b"\0"):
            if self._pax is not None:
                raise ImageTarError("an extended header is not followed by an entry")
            self._state = "end"   # the first block of the marker: nothing from here on is safe
            return
        self._header(block)
        if self._state != "end":
            self.safe = self._pos

    def _header(self, block: bytes) -> None:
        self._entries += 1
        if self._entries > MAX_ENTRIES:
            raise ImageTarError(f"it has more than {MAX_ENTRIES} entries")
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except (tarfile.HeaderError, UnicodeDecodeError) as e:
            raise ImageTarError(f"damaged tar header ({e})") from None
        if block[257:265] != b"ustar\x0000":
            raise ImageTarError(f"entry {info.name!r} has no POSIX ustar header (GNU and v7 headers are refused)")
        if block[345:500].strip(b"\0"):
            raise ImageTarError(f"entry {info.name!r} uses the ustar name prefix field")
        kind = block[156:157]
        if kind == b"x":
            if self._pax is not None:
                raise ImageTarError("two extended headers in a row")
            if not 0 <= info.size <= PAX_LIMIT:
                raise ImageTarError(f"an extended header of {info.size} bytes (at most {PAX_LIMIT})")
            self._pax_size = info.size
            self._state = "pax" if info.size else "header"
            self._pax = {} if not info.size else None
            return
        pax, self._pax = self._pax or {}, None
        name = pax.get("path", info.name).rstrip("/") if kind == b"5" else pax.get("path", info.name)
        size = int(pax["size"]) if "size" in pax else info.size
        if kind not in (b"0", b"5", b"2"):
            raise ImageTarError(f"entry {name!r} is of tar type {kind!r}: only files, folders and symlinks")
        if size < 0:
            raise ImageTarError(f"entry {name!r} has a negative size")
        if name in self.files or name in self.links or name in self.dirs:
            raise ImageTarError(f"entry {name!r} occurs twice")
        if kind == b"5":
            if not DIR_RE.fullmatch(name) or size:
                raise ImageTarError(f"unexpected folder {name!r} (not one docker save writes)")
            self.dirs.add(name)
            return
        if name == "repositories":
            raise ImageTarError("it has a repositories file: docker load would tag images from it")
        if not FILE_RE.fullmatch(name):
            raise ImageTarError(f"unexpected file {name!r} (not one docker save writes)")
        if kind == b"2":
            target = _resolve_link(name, pax.get("linkpath", info.linkname))
            if size or target is None or not FILE_RE.fullmatch(target):
                raise ImageTarError(f"symlink {name!r} points outside the image's files")
            self.links[name] = target
            return
        self._name = name
        self.files.add(name)
        self._hash = hashlib.sha256() if self.hash_large or size <= SMALL_FILE else None
        self._keep = None
        if size <= SMALL_FILE and (name.endswith(".json") or name.startswith("blobs/") or name == "oci-layout"):
            self._kept_bytes += size
            if self._kept_bytes > SMALL_TOTAL:
                raise ImageTarError(f"its small files add up to more than {SMALL_TOTAL} bytes")
            self._keep = []
        self._data_left = size
        self._left = _padded(size)
        if self._left:
            self._state = "data"
        else:
            self._finish_entry()

    def _finish_entry(self) -> None:
        if self._hash is not None:
            self.hashes[self._name] = self._hash.hexdigest()
        if self._keep is not None:
            self.small[self._name] = b"".join(self._keep)
        self._hash, self._keep = None, None
        self._state = "header"

    # -- the whole tar ------------------------------------------------------------------------
    def close(self, expected_id: str | None = None) -> ImageFacts:
        """Check the complete tar; returns its facts.

        Raises:
            ImageTarError: it ended early, has no (or a malformed) manifest.json, holds more than
                one image, carries tags, names an image in index.json, a layer or blob that does
                not match its digest, a file the image does not use, or (with `expected_id`)
                another config than the expected image id.
        """
        if self._state != "trailer":
            raise ImageTarError("it ends before its end-of-archive marker (truncated)")
        raw_manifest = self._content("manifest.json")
        if raw_manifest is None:
            raise ImageTarError("it has no manifest.json")
        try:
            manifest = json.loads(raw_manifest)
        except ValueError:
            raise ImageTarError("its manifest.json is malformed") from None
        if not isinstance(manifest, list) or not manifest:
            raise ImageTarError("its manifest.json is malformed")
        if len(manifest) != 1:
            raise ImageTarError(f"it holds {len(manifest)} images, a backup holds exactly one")
        entry = manifest[0]
        if (not isinstance(entry, dict) or not isinstance(entry.get("Config"), str)
                or not isinstance(entry.get("Layers"), list) or not all(isinstance(x, str) for x in entry["Layers"])
                or set(entry) - {"Config", "RepoTags", "Layers", "LayerSources"}):
            raise ImageTarError("its manifest.json is malformed")
        if entry.get("RepoTags"):
            raise ImageTarError(f"it carries tags (RepoTags {entry['RepoTags']!r}): docker load would apply "
                                f"them; backup create saves by image id, with none")
        if entry.get("LayerSources"):
            raise ImageTarError("it lists foreign layer sources (LayerSources)")
        config_name = _norm_ref(entry["Config"])
        layers = [_norm_ref(x) for x in entry["Layers"]]
        config_bytes = self._content(config_name)
        if config_bytes is None:
            raise ImageTarError(f"its config {config_name} is missing")
        try:
            config = json.loads(config_bytes)
            if not isinstance(config, dict):
                raise ValueError
        except ValueError:
            raise ImageTarError(f"its config {config_name} is not JSON") from None
        facts = ImageFacts(config_digest="sha256:" + hashlib.sha256(config_bytes).hexdigest(), config=config,
                           layers=layers, repo_tags=[], tar_bytes=self.consumed)
        if expected_id is not None and facts.config_digest != expected_id:
            raise ImageTarError(f"its config digest {facts.config_digest} is not the recorded image id {expected_id}")
        diff_ids = facts.diff_ids
        if len(diff_ids) != len(layers):
            raise ImageTarError(f"its config lists {len(diff_ids)} layers, its manifest {len(layers)}")
        for name, diff_id in zip(layers, diff_ids):
            if self._target(name) not in self.files:
                raise ImageTarError(f"layer {name} is missing")
            got = self._hash_of(name)
            if got is None:   # not hashed here (hash_large False): the engine checks it
                continue
            if f"sha256:{got}" != diff_id:
                raise ImageTarError(f"layer {name} does not match its diff_id {str(diff_id)[:19]}… "
                                    f"(got sha256:{got[:12]}…)")
        used = {config_name, *layers, "manifest.json", "oci-layout"}
        used |= self._check_index(facts)
        self._check_blobs()
        used_files = {self._target(n) for n in used} | used
        for name in layers:  # the classic layout keeps a VERSION and a json beside each layer.tar
            folder = self._target(name).rsplit("/", 1)[0]
            used_files |= {f"{folder}/VERSION", f"{folder}/json"}
            folder = name.rsplit("/", 1)[0]
            used_files |= {f"{folder}/VERSION", f"{folder}/json"}
        # Unreferenced OCI blobs stay allowed: each matches its own digest and no loader makes an
        # image from a blob nothing points at (newer engines may write more blobs than we read).
        extra = sorted(n for n in [*self.files, *self.links]
                       if n not in used_files and not (n.startswith("blobs/") and n in self.hashes))
        if extra:
            raise ImageTarError(f"it holds {extra[0]}, which the image does not use")
        return facts

    def _check_index(self, facts: ImageFacts) -> set[str]:
        raw = self._content("index.json")
        if raw is None:
            return set()
        try:
            index = json.loads(raw)
            entries = index["manifests"]
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                raise TypeError
        except (ValueError, LookupError, TypeError):
            raise ImageTarError("its index.json is malformed") from None
        for e in entries:
            names = [k for k in (e.get("annotations") or {}) if k in NAME_ANNOTATIONS]
            if names:
                raise ImageTarError(f"its index.json names an image ({names[0]}): loading would tag it")
        if len(entries) != 1:
            raise ImageTarError(f"its index.json lists {len(entries)} images, a backup holds exactly one")
        entry = entries[0]
        digest = str(entry.get("digest") or "")
        if entry.get("mediaType") not in MANIFEST_TYPES or not re.fullmatch(rf"sha256:{_HEX}", digest):
            raise ImageTarError("its index.json does not point at one image manifest")
        blob = f"blobs/sha256/{digest[7:]}"
        raw_manifest = self._content(blob)
        try:
            oci_manifest = json.loads(raw_manifest or b"")
            config_digest = oci_manifest["config"]["digest"]
        except (ValueError, LookupError, TypeError):
            raise ImageTarError(f"its index.json points at a missing or malformed manifest {blob}") from None
        if config_digest != facts.config_digest:
            raise ImageTarError("its index.json points at another image than its manifest.json")
        return {"index.json", blob}

    def _check_blobs(self) -> None:
        for name, digest in self.hashes.items():
            if name.startswith("blobs/sha256/") and name[len("blobs/sha256/"):] != digest:
                raise ImageTarError(f"blob {name} does not match its own digest")

    def _target(self, name: str) -> str:
        for _ in range(8):  # follow a few symlinks at most
            if name not in self.links:
                return name
            name = self.links[name]
        return name

    def _hash_of(self, name: str) -> str | None:
        return self.hashes.get(self._target(name))

    def _content(self, name: str) -> bytes | None:
        return self.small.get(self._target(name))


def inspect_stream(stream: BinaryIO, *, limit: int | None = None, expected_id: str | None = None) -> ImageFacts:
    """Read a docker save tar from `stream` to its end through an ImageTarGate; its facts.

    Raises:
        ImageTarError: see ImageTarGate.
    """
    gate = ImageTarGate(limit=limit)
    try:
        while chunk := stream.read(READ_CHUNK):
            gate.feed(chunk)
    except (OSError, EOFError) as e:
        raise ImageTarError(f"not a readable docker save tar ({e})") from None
    return gate.close(expected_id)


def _padded(size: int) -> int:
    return size + (-size % BLOCK)


def _parse_pax(data: bytes) -> dict[str, str]:
    """PAX records ("<len> <key>=<value>\\n"), strictly: only the keys a docker save may carry."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        m = re.match(rb"([1-9][0-9]{0,5}) ", data[pos:pos + 8])
        if not m:
            raise ImageTarError("a malformed extended header")
        length = int(m.group(1))
        record = data[pos + m.end():pos + length]
        if pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise ImageTarError("a malformed extended header")
        key, _, value = record[:-1].partition(b"=")
        try:
            k, v = key.decode("utf-8"), value.decode("utf-8")
        except UnicodeDecodeError:
            raise ImageTarError("an extended header that is not UTF-8") from None
        if k not in PAX_KEYS:
            raise ImageTarError(f"an extended header record {k[:40]!r} (not one docker save writes)")
        if k == "size" and not re.fullmatch(r"[0-9]{1,15}", v):
            raise ImageTarError("an extended header with a bad size")
        records[k] = v
        pos += length
    return records


def _norm_ref(name: str) -> str:
    """A path named in manifest.json, without "./" (docker writes none; refused names fail later)."""
    return name[2:] if name.startswith("./") else name


def _resolve_link(name: str, target: str) -> str | None:
    """The member a symlink points at, or None when it leaves the tar's root."""
    if target.startswith("/"):
        return None
    parts = name.split("/")[:-1]
    for p in target.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(p)
    return "/".join(parts)
