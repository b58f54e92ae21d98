"""The API-keys format both planes share: the service reads it (AADS_API_KEYS, AADS_API_KEYS_FILE),
the orchestrator writes and reads a compose target's key file in it."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field


class ApiKeysError(ValueError):
    """Keys text that cannot be used; the message starts with where it came from."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str  # what logs and metrics show; never the key itself
    secret: str = field(repr=False)


def parse_api_keys(text: str, source: str) -> tuple[ApiKey, ...]:
    """Keys separated by commas or newlines, each `key` or `id:key`; `#` starts a comment line.

    Without an id, the id is `key-` + the first 8 hex digits of the key's SHA-256, so logs can tell
    keys apart without ever showing one.

    Raises:
        ApiKeysError: a bad id, a key under 8 characters, or an id given twice.
    """
    keys: list[ApiKey] = []
    seen: set[str] = set()
    for raw_line in text.splitlines():
        if raw_line.strip().startswith("#"):
            continue
        for entry in raw_line.split(","):
            entry = entry.strip()
            if not entry:
                continue
            key_id, sep, secret = entry.partition(":")
            if not sep:
                key_id, secret = "key-" + hashlib.sha256(entry.encode()).hexdigest()[:8], entry
            key_id, secret = key_id.strip(), secret.strip()
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", key_id):
                raise ApiKeysError(f"{source}: key id {key_id!r} must be 1-64 letters, digits, '_', '.', '-'")
            if len(secret) < 8:
                raise ApiKeysError(f"{source}: the key with id {key_id!r} is shorter than 8 characters")
            if key_id in seen:
                raise ApiKeysError(f"{source}: key id {key_id!r} appears twice")
            seen.add(key_id)
            keys.append(ApiKey(key_id, secret))
    return tuple(keys)
