"""The Kubernetes backend: one Deployment's RollingUpdate, with the cluster's own revision history.

- backend.py: the verbs (up, switch, rollback, status, repair, history);
- api.py: the few Kubernetes API calls, each failure one clear line (and `role()`, the RBAC);
- rollout.py: pure functions over API objects, the verdicts and patches kubectl computes;
- the rest (switch, cluster, wait, views, repair, errors): see docs/kubernetes.md, "The code".

docs/kubernetes.md explains the backend to operators.
"""

from orchestrator.backends.kubernetes.backend import KubernetesBackend
from orchestrator.backends.kubernetes.errors import RolloutBusy, RolloutUnknown

__all__ = ["KubernetesBackend", "RolloutBusy", "RolloutUnknown"]
