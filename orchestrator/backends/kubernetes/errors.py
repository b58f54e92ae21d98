"""The Kubernetes backend's errors, in the orchestrator's tree of exit codes (orchestrator/errors.py):
an API error exits 1, a missing Deployment or namespace 2 (a ConfigError), a rollout in the way 3.

The classes are defined in orchestrator/errors.py; this module keeps the backend's import path.
"""

from __future__ import annotations

from orchestrator.errors import (  # noqa: F401  (the tree and its exit codes live in errors.py)
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeNotFound,
    KubeUnreachable,
    RolloutBusy,
    RolloutUnknown,
)
