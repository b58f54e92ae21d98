"""The API keys of a compose target: one file, 0600, made at the first `up`, read at every slot start.

`<state dir>/compose/<target>/api-keys` holds `id:key` lines (the service's AADS_API_KEYS format,
`#` comments). The orchestrator creates it with one random key (`orchestrator:...`) and uses that
key itself for its smoke tests and probes through the edge; an operator adds a line per client
(`mobile-app:<key>`) and the next slot start picks them up. The file is created with O_EXCL and
mode 0600, never through a link, and refused when others may read it.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from orchestrator.errors import UsageError
from aads_manifest.api_keys import ApiKey, ApiKeysError, parse_api_keys

KEYS_FILE = "api-keys"
OWN_KEY_ID = "orchestrator"
HEADER = (
    "# API keys of this compose target, one `id:key` a line (the id is what the audit log shows).\n"
    "# Clients send `X-API-Key: <key>` or `Authorization: Bearer <key>`. Slots read this file when they\n"
    "# start (orchestrator up/switch). Keep it 0600: anyone who reads it can call the service.\n"
)


def ensure_keys_file(path: Path) -> bool:
    """Create `path` with one fresh key, mode 0600, unless it exists; True when it was created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(HEADER + f"{OWN_KEY_ID}:{secrets.token_urlsafe(32)}\n")
    return True


def read_keys(path: Path) -> tuple[ApiKey, ...]:
    """The keys in `path`; a clear UsageError when it is missing, a link, readable by others or malformed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise UsageError(f"API key file {path} is missing (the first `orchestrator up` makes it)") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"API key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise UsageError(f"API key file {path} may be read by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                         f"chmod 600 {path}")
    try:
        keys = parse_api_keys(path.read_text(), str(path))
    except ApiKeysError as e:
        raise UsageError(str(e)) from None
    if not keys:
        raise UsageError(f"API key file {path} holds no key")
    return keys


def env_value(keys: tuple[ApiKey, ...]) -> str:
    """The keys as one AADS_API_KEYS value (`id:key,id:key`)."""
    return ",".join(f"{k.key_id}:{k.secret}" for k in keys)


def own_key(keys: tuple[ApiKey, ...]) -> str:
    """The key the orchestrator itself sends: its own, else the first one."""
    for k in keys:
        if k.key_id == OWN_KEY_ID:
            return k.secret
    return keys[0].secret
