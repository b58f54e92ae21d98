"""The Kubernetes backend: one Deployment's RollingUpdate, with the cluster's own revision history.

- backend.py: the verbs (up, switch, rollback) and the shared tail (wait, then finish or undo);
- api.py: the few Kubernetes API calls, each failure one clear line (and `role()`, the RBAC);
- rollout.py: pure functions over API objects, the verdicts and patches kubectl computes.

docs/kubernetes.md explains the backend to operators.
"""

from orchestrator.backends.kubernetes.backend import KubernetesBackend, RolloutBusy, RolloutUnknown

__all__ = ["KubernetesBackend", "RolloutBusy", "RolloutUnknown"]
