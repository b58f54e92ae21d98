"""The machine's own registry (scripts/engine.sh): its basic-auth credentials for tests that talk
to it with plain HTTP calls. None where it runs without auth (an older engine.sh set-up)."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.registry_auth import DEFAULT_CREDENTIALS_FILE, ENV_CREDENTIALS_FILE, read_credentials_file


def local_registry_auth(host: str = "127.0.0.1:5000") -> tuple[str, str] | None:
    """(user, password) for `requests`' `auth=`, from the file engine.sh wrote for `host`."""
    for path in filter(None, (os.environ.get(ENV_CREDENTIALS_FILE), DEFAULT_CREDENTIALS_FILE)):
        found = read_credentials_file(Path(path), host)
        if found:
            return found.username or "", found.password or ""
    return None
