"""What every deployment backend offers the deploy commands: every option a command passes is here.

Backends share one switch flow (orchestrator/switchflow.py: resolve + verify -> start candidate ->
wait ready -> smoke -> shift traffic -> confirm -> watch -> finish, or revert at any failing
step). Each method returns a JSON-serializable dict that the command prints as a table or, with
--json, as is; failures raise an OrchestratorError subclass (SwitchFailed when the live version
kept serving). An option a backend cannot honour is refused by the backend with a UsageError, so
the commands never probe a backend's signature.
"""

from __future__ import annotations

from typing import Any, Protocol


class Backend(Protocol):
    target: str

    def up(self, version: str | None) -> dict[str, Any]:
        """Start the stack with a first live version (default: the newest pushed one)."""

    def switch(self, version: str, *, keep_previous: bool = False, wait_lock_s: float = 0.0) -> dict[str, Any]:
        """Make `version` live; a no-op (outcome 'noop') when it already is.

        keep_previous: leave the slot switched away from running (compose), for an instant way back.
        wait_lock_s: how long to wait for another switch on the target to finish (0: refuse at once).
        """

    def rollback(self, to_version: str | None = None, *, keep_previous: bool = False,
                 wait_lock_s: float = 0.0) -> dict[str, Any]:
        """Return to the previous live version (or `to_version`); options as for switch."""

    def status(self) -> dict[str, Any]:
        """Live version, digest, slot/revision, health, since when, drift, and the switches left
        unfinished by a killed orchestrator. Read-only: it changes nothing anywhere."""

    def repair(self, *, wait_lock_s: float = 0.0) -> dict[str, Any]:
        """Finish or undo the switches a killed orchestrator left unfinished and make the host match
        the ledger; the status() shape plus "repairs": [what was done, one line each]."""

    def history(self, limit: int | None = None) -> dict[str, Any]:
        """{"entries": [...], "success_rate": float | None} over the shown range."""
