"""Every failure the CLI reports is an OrchestratorError: one line on stderr and its exit code.

The tree, with each class's exit code (a subclass is a more precise kind of its parent and shares
its code, as serving/errors.py's HTTP errors share a status):

    OrchestratorError        1  anything else: engine (EdgeError), registry (auth, TLS), ledger,
                                probe, build, git, Kubernetes API (KubeError, RolloutUnknown)
    ├── UsageError           2  bad input: unknown version, malformed name, bad flag value
    │   └── ForeignArchiveError  the file is not a backup archive
    ├── ConfigError          2  orchestrator.yaml or an AADS_* variable is wrong
    │   └── KubeNotFound         the target's Deployment or namespace does not exist
    ├── BusyError            3  another switch or rollout holds the target
    │   ├── LockBusyError        the target's lock (another orchestrator)
    │   └── RolloutBusy          a Kubernetes rollout in progress, paused, or changed under us
    ├── TamperError          4  a registry tag or archive no longer matches the ledger
    │   ├── TagMovedError        push: the tag names another image
    │   ├── VerifyTampered       verify: the tag moved
    │   └── ArchiveError         backup: damaged, truncated or changed archive
    ├── SwitchFailed         5  a switch stopped; the live version kept serving or was restored
    │   ├── GpuRoomError, SmokeFailed, ConfirmFailed, WatchFailed
    ├── VerifyFailed         6  verify (or release) found a check failing
    └── NoSpaceError         7  not enough disk space; nothing was written

`EXIT_CODES` below is the one table: `orchestrator --help` prints it and the README's table is
checked against it by tests/unit/test_cli_contract.py. Code decides by error type, never by the
message's text.
"""

from __future__ import annotations

from typing import Any


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


class EngineError(OrchestratorError):
    """The Docker engine is unreachable or refused an operation."""


class EdgeError(EngineError):
    """The edge is not running, or its runtime API refused a command."""


class PrometheusError(EngineError):
    """Prometheus cannot be reached, or refused a query."""


class PushError(EngineError):
    """The pushgateway cannot be reached or refused the figures."""


class EdgeWeightError(EngineError):
    """The edge refused a weight command or cannot be reached."""


class CandidateExited(EngineError):
    """Starting a slot failed because its container exited or keeps restarting: the image's own fault,
    so a switch marks its digest failed (decided by this type, not by compose's message text)."""


class ProbeError(OrchestratorError):
    """The service did not become ready, or answered something unusable."""


class BuildFailed(OrchestratorError):
    """docker build stopped with an error (the message holds the failing step's last line)."""


class GitError(OrchestratorError):
    """git refused, or the repository is not in a state a release can be cut from."""


class KubeError(OrchestratorError):
    """The Kubernetes API answered with an error or could not be reached."""

    status: int | None = None

    @property
    def transient(self) -> bool:
        """Worth another try: the server was overloaded or restarting, or not reachable."""
        return self.status is not None and (self.status >= 500 or self.status == 429)


class KubeUnreachable(KubeError):
    """The API server did not answer (worth another try)."""

    @property
    def transient(self) -> bool:
        return True


class KubeForbidden(KubeError):
    """RBAC (or authentication) refused a call."""


class KubeConflict(KubeError):
    """The Deployment changed between our read and our write."""


class KubeNotFound(ConfigError):
    """The configured deployment (or namespace) does not exist."""


class RegistryError(OrchestratorError):
    """The registry is unreachable, refused, or a tag does not match its recorded digest."""


class RegistryAuthError(RegistryError):
    """The registry wants credentials, or refused the ones given."""


class RegistryTLSError(RegistryError):
    """The registry's certificate is not trusted, or it does not speak TLS where it must."""


class ForeignArchiveError(UsageError):
    """The file is not an AADS-ULoRA backup archive at all."""


class BusyError(OrchestratorError):
    """Another switch or rollout holds the target; nothing was changed."""

    exit_code = 3


class LockBusyError(BusyError):
    """Another switch holds the target's lock."""


class RolloutBusy(BusyError):
    """Another rollout of the Deployment has not finished."""


class TamperError(RegistryError):
    """A registry tag or archive no longer matches what the ledger recorded."""

    exit_code = 4


class TagMovedError(TamperError):
    """The version's tag already names another image in the registry."""


class ArchiveError(TamperError):
    """The archive is damaged, truncated or changed; the message names the member or byte offset."""


class VerifyTampered(TamperError):
    """verify: the variant's registry tag no longer resolves to the digest the ledger recorded."""


class SwitchFailed(OrchestratorError):
    """A switch stopped; the live version kept serving (or was restored). The message says why."""

    exit_code = 5


class GpuRoomError(SwitchFailed):
    """The GPU cannot hold the candidate's model next to the live one."""


class SmokeFailed(SwitchFailed):
    """The candidate's golden outputs differ from its build's record."""


class ConfirmFailed(SwitchFailed):
    """The public edge does not serve the candidate after the flip."""


class CanaryFailed(SwitchFailed):
    """A canary step's analysis failed; `verdict.metric` names the figure (orchestrator/canary/analysis.py)."""

    def __init__(self, share: int, verdict: Any):
        super().__init__(f"canary step {share}%: analysis failed on {verdict.metric}: {verdict.reason}")
        self.share, self.verdict = share, verdict


class WatchFailed(SwitchFailed):
    """The candidate answered errors in the watch window."""


class VerifyFailed(OrchestratorError):
    """At least one verify check failed; the message names them."""

    exit_code = 6


class NoSpaceError(OrchestratorError):
    """Not enough free disk space for the work asked (e.g. a backup archive); nothing was written."""

    exit_code = 7


class RolloutUnknown(OrchestratorError):
    """The API stopped answering during a rollout: its outcome is unknown and nothing was undone."""


# Exit codes that are not an OrchestratorError's: click's usage errors and a bad manifest share
# UsageError's 2; an interrupt is 130 like a shell's; a bug (any other exception) is 70 (EX_SOFTWARE).
INTERRUPTED = 130
INTERNAL = 70

# code -> (meaning, the classes that exit with it). One row per code; a test keeps it equal to the
# classes' exit_code attributes and to the README.
EXIT_CODES: tuple[tuple[int, str, tuple[type[OrchestratorError], ...]], ...] = (
    (0, "done (or nothing to do)", ()),
    (1, "failed: engine, registry, ledger, git or Kubernetes API error (the message says which)",
     (OrchestratorError,)),
    (2, "bad input: unknown version or target, malformed name, bad flag or config, invalid manifest",
     (UsageError, ConfigError)),
    (3, "busy: another switch holds the target's lock, or a rollout is in progress", (BusyError,)),
    (4, "possible tampering: a registry tag or archive no longer matches the ledger", (TamperError,)),
    (5, "the switch failed or was reverted; the live version kept serving", (SwitchFailed,)),
    (6, "verify found a failing check", (VerifyFailed,)),
    (7, "not enough disk space; nothing was written", (NoSpaceError,)),
    (INTERNAL, "internal error (a bug); AADS_DEBUG=1 shows the traceback", ()),
    (INTERRUPTED, "interrupted (Ctrl-C)", ()),
)


def exit_code_rows() -> list[tuple[int, str]]:
    """(code, meaning) per row of the table, for --help and the README."""
    return [(code, meaning) for code, meaning, _ in EXIT_CODES]


def exit_code_epilog() -> str:
    """The table as `orchestrator --help` prints it (click keeps \\b paragraphs as written)."""
    lines = ["\b", "Exit codes:"]
    lines += [f"  {code:>3}  {meaning}" for code, meaning in exit_code_rows()]
    return "\n".join(lines)


def exit_code_markdown() -> str:
    """The table as the README holds it."""
    lines = ["| exit | meaning |", "| --- | --- |"]
    lines += [f"| {code} | {meaning} |" for code, meaning in exit_code_rows()]
    return "\n".join(lines)
