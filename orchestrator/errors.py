"""Every failure the CLI reports is an OrchestratorError: one line on stderr and a nonzero exit."""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base class. `str(err)` is the one line the operator reads."""

    exit_code = 1


class UsageError(OrchestratorError):
    """Bad input from the operator: unknown version, malformed name, bad flag value."""

    exit_code = 2


class ConfigError(OrchestratorError):
    """orchestrator.yaml or an AADS_* variable is wrong."""

    exit_code = 2


class LedgerError(OrchestratorError):
    """The ledger cannot be opened or holds something unexpected."""


class LockBusyError(OrchestratorError):
    """Another switch holds the target's lock."""

    exit_code = 3


class EngineError(OrchestratorError):
    """The Docker engine is unreachable or refused an operation."""


class RegistryError(OrchestratorError):
    """The registry is unreachable, refused, or a tag does not match its recorded digest."""


class TamperError(RegistryError):
    """A registry tag or archive no longer matches what the ledger recorded."""

    exit_code = 4


class NoSpaceError(OrchestratorError):
    """Not enough free disk space for the work asked (e.g. a backup archive); nothing was written."""

    exit_code = 6


class SwitchFailed(OrchestratorError):
    """A switch stopped; the live version kept serving (or was restored). The message says why."""

    exit_code = 5
