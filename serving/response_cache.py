"""A response cache for diagnoses: the same upload, hint and version give the same answer.

The key is SHA-256 of the uploaded image bytes (after base64 decoding, so a JSON and a
multipart upload of one file share an entry), the crop_hint and the serving version: one
process serves one version, and the version in the key keeps an entry from ever answering for
another. Least recently used entries go first once either bound (entries, bytes) is passed.
Only successful diagnoses are stored, without their per-request fields (timings, batch size).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict

__all__ = ["ResponseCache", "cache_key"]


def cache_key(image_bytes: bytes, crop_hint: str | None, version: str) -> str:
    digest = hashlib.sha256(image_bytes).hexdigest()
    return f"{version}\0{crop_hint or ''}\0{digest}"


class ResponseCache:
    """Thread-safe LRU of result dicts, bounded in entries and in bytes (their JSON size)."""

    def __init__(self, max_entries: int, max_bytes: int):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[str, tuple[dict, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict | None:
        """The stored result (a copy the caller may change), or None; counts the hit or miss."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return dict(found[0])

    def put(self, key: str, result: dict) -> None:
        """Store `result`; one larger than the whole byte bound is not stored."""
        size = len(key) + len(json.dumps(result, separators=(",", ":")))
        if not self.enabled or size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._entries[key] = (dict(result), size)
            self.bytes += size
            while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
                _, (_, freed) = self._entries.popitem(last=False)
                self.bytes -= freed
