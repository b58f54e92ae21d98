"""What every deployment backend offers the deploy commands.

Backends share one switch flow (docs/operations.md, docs/kubernetes.md): resolve + verify -> start candidate -> wait ready ->
smoke -> shift traffic -> watch -> finish, or revert at any failing step. Each method returns a
JSON-serializable dict that the command prints as a table or, with --json, as is; failures raise
an OrchestratorError subclass (SwitchFailed when the live version kept serving).
"""

from __future__ import annotations

from typing import Any, Protocol


class Backend(Protocol):
    target: str

    def up(self, version: str | None) -> dict[str, Any]:
        """Start the stack with a first live version (default: the newest pushed one)."""

    def switch(self, version: str, *, keep_previous: bool = False, wait_lock_s: float = 0.0) -> dict[str, Any]:
        """Make `version` live; a no-op (outcome 'noop') when it already is."""

    def rollback(self, to_version: str | None = None, *, wait_lock_s: float = 0.0) -> dict[str, Any]:
        """Return to the previous live version (or `to_version`)."""

    def status(self) -> dict[str, Any]:
        """Live version, digest, slot/revision, health, since when, drift."""

    def history(self, limit: int | None = None) -> dict[str, Any]:
        """{"entries": [...], "success_rate": float | None} over the shown range."""
