"""The Kubernetes backend's errors, in the orchestrator's tree of exit codes (orchestrator/errors.py):
an API error exits 1, a missing Deployment or namespace 2 (a ConfigError), a rollout in the way 3.

Kept in one module so that the tree can take them in with one import line here.
"""

from __future__ import annotations

from orchestrator.errors import ConfigError, OrchestratorError


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


class KubeNotFound(ConfigError):
    """The configured deployment (or namespace) does not exist."""


class KubeConflict(KubeError):
    """The Deployment changed between our read and our write."""


class RolloutBusy(OrchestratorError):
    """Another rollout of the Deployment has not finished (in progress, paused, or changed under us)."""

    exit_code = 3


class RolloutUnknown(OrchestratorError):
    """The API stopped answering during a rollout: its outcome is unknown and nothing was undone."""
