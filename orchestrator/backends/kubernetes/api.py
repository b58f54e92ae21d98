"""The few Kubernetes API calls the backend makes, through the kubernetes Python client.

Objects come back as the API's own JSON (plain dicts, camelCase keys), the shape kubectl sees.
Every failure becomes one OrchestratorError line naming the target: API unreachable, forbidden
(with the server's RBAC message), deployment not found, conflict. Transient answers (5xx, 429,
no connection) are retried with backoff a few times before they become one; `VERBS` is every
call the orchestrator makes, and `role()` the Role that grants exactly those.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from orchestrator.backends.kubernetes.errors import (KubeConflict, KubeError, KubeForbidden, KubeNotFound,
                                                    KubeUnreachable)
from orchestrator.errors import ConfigError

REQUEST_TIMEOUT = (5, 30)  # connect, read (seconds)
RETRY_DELAYS_S = (0.25, 0.5, 1.0, 2.0)  # between attempts of one call on a transient answer
T = TypeVar("T")

# Every (resource, verb) the orchestrator uses in a target's namespace. `orchestrator k8s-role`
# prints the Role granting exactly these; a test checks that switch, rollback, status, repair and history
# use no other and that each is used.
VERBS: dict[str, tuple[str, ...]] = {
    "deployments": ("get", "patch", "watch"),
    "replicasets": ("list", "patch"),
    "pods": ("list",),
}
GROUPS = {"deployments": "apps", "replicasets": "apps", "pods": ""}


def _status_message(e: ApiException) -> str:
    try:
        return json.loads(e.body or "{}").get("message") or e.reason or str(e.status)
    except (ValueError, AttributeError):
        return e.reason or str(e.status)


class KubeApi:
    """One target's cluster: a namespace and a deployment in it."""

    def __init__(self, *, target: str, kubeconfig: str | None, context: str | None, namespace: str,
                 deployment: str):
        self.target, self.namespace, self.deployment = target, namespace, deployment
        try:
            self.api_client = config.new_client_from_config(config_file=kubeconfig, context=context)
        except ConfigException as e:
            raise ConfigError(f"target {target}: cannot load kubeconfig {kubeconfig or '(default)'}"
                              f"{f' context {context}' if context else ''}: {e}") from None
        except OSError as e:
            raise ConfigError(f"target {target}: cannot read kubeconfig {kubeconfig}: {e.strerror}") from None
        self.api_client.configuration.retries = 1
        self.server = self.api_client.configuration.host
        self.apps = client.AppsV1Api(self.api_client)
        self.core = client.CoreV1Api(self.api_client)

    @contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Map client exceptions to one clear line."""
        try:
            yield
        except ApiException as e:
            msg = _status_message(e)
            if e.status in (401, 403):
                raise KubeForbidden(f"target {self.target}: the Kubernetes API refused to {doing}: {msg}") from None
            if e.status == 404:
                raise KubeNotFound(
                    f"target {self.target}: deployment {self.namespace}/{self.deployment} not found on "
                    f"{self.server} ({msg}); apply the manifests first: kubectl apply -k k8s/overlays/cpu"
                ) from None
            if e.status == 409:
                raise KubeConflict(f"target {self.target}: deployment {self.namespace}/{self.deployment} changed "
                                   f"while we worked on it ({msg}); nothing was changed, try again") from None
            err = KubeError(f"target {self.target}: the Kubernetes API failed to {doing}: {e.status} {msg}")
            err.status = e.status
            raise err from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            why = type(e).__name__
            if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason is not None:
                why = type(e.reason).__name__
            raise KubeUnreachable(f"target {self.target}: the Kubernetes API at {self.server} is unreachable "
                                  f"({why}); check the kubeconfig and context") from None

    def _json(self, resp: Any) -> dict[str, Any]:
        return json.loads(resp.data)

    def call(self, doing: str, fn: Callable[[], T]) -> T:
        """One API call, retried with backoff while the answer is transient (5xx, 429, no
        connection); other errors, and the last transient one, raise at once."""
        for delay in (*RETRY_DELAYS_S, None):
            try:
                with self.errors(doing):
                    return fn()
            except KubeError as e:
                if not e.transient or delay is None:
                    raise
                time.sleep(delay)
        raise AssertionError("unreachable")

    def read_deployment(self) -> dict[str, Any]:
        return self.call(f"read deployment {self.namespace}/{self.deployment}", lambda: self._json(
            self.apps.read_namespaced_deployment(self.deployment, self.namespace, _preload_content=False,
                                                 _request_timeout=REQUEST_TIMEOUT)))

    def replicasets(self, deployment: dict[str, Any]) -> list[dict[str, Any]]:
        """The Deployment's ReplicaSets: selected by its selector and controlled by it (as kubectl)."""
        from orchestrator.backends.kubernetes.rollout import owned_by

        selector = ",".join(f"{k}={v}" for k, v in
                            ((deployment["spec"].get("selector") or {}).get("matchLabels") or {}).items())
        items = self.call(f"list replicasets in {self.namespace}", lambda: self._json(
            self.apps.list_namespaced_replica_set(self.namespace, label_selector=selector, _preload_content=False,
                                                  _request_timeout=REQUEST_TIMEOUT))["items"])
        return [rs for rs in items if owned_by(rs, deployment)]

    def pods(self, selector: dict[str, str]) -> list[dict[str, Any]]:
        label_selector = ",".join(f"{k}={v}" for k, v in selector.items())
        return self.call(f"list pods in {self.namespace}", lambda: self._json(
            self.core.list_namespaced_pod(self.namespace, label_selector=label_selector, _preload_content=False,
                                          _request_timeout=REQUEST_TIMEOUT))["items"])

    def patch_deployment(self, body: Any, content_type: str, doing: str) -> dict[str, Any]:
        # A patch answered 5xx may or may not have been applied; sending the same patch again is
        # safe (a conditional one answers 409 if it was, and the caller reads again).
        return self.call(doing, lambda: self._json(self.apps.patch_namespaced_deployment(
            self.deployment, self.namespace, body, _content_type=content_type, _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT)))

    def patch_replicaset(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of one ReplicaSet's metadata (the failure mark); never its spec: the
        controller owns ReplicaSets, and they are never deleted (`kubectl rollout undo
        --to-revision` may be racing for one, and they are the evidence)."""
        return self.call(f"mark replicaset {self.namespace}/{name}", lambda: self._json(
            self.apps.patch_namespaced_replica_set(name, self.namespace, body,
                                                   _content_type="application/merge-patch+json",
                                                   _preload_content=False, _request_timeout=REQUEST_TIMEOUT)))

    def watch_deployment(self, resource_version: str, timeout_s: int) -> Iterator[dict[str, Any]]:
        """Deployment objects as they change after `resource_version` (one watch, up to timeout_s).
        An expired resourceVersion (410) ends the stream; the caller reads again and resumes."""
        w = watch.Watch()
        with self.errors(f"watch deployment {self.namespace}/{self.deployment}"):
            try:
                for event in w.stream(self.apps.list_namespaced_deployment, self.namespace,
                                      field_selector=f"metadata.name={self.deployment}",
                                      resource_version=resource_version, timeout_seconds=max(int(timeout_s), 1),
                                      _request_timeout=(5, timeout_s + 5)):
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        yield event["raw_object"]
            except ApiException as e:
                if e.status == 410:
                    return
                raise
            finally:
                w.stop()


def role(namespace: str, name: str = "aads-orchestrator") -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding for the orchestrator: exactly `VERBS`, in one namespace.
    Bind the Role to whichever identity the orchestrator's kubeconfig uses (the ServiceAccount's
    token in CI, or a user/group) by editing the RoleBinding's subjects."""
    meta = {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": name,
                                                             "app.kubernetes.io/part-of": "aads-ulora"}}
    groups: dict[str, list[str]] = {}
    for resource in VERBS:
        groups.setdefault(GROUPS[resource], []).append(resource)
    rules = [{"apiGroups": [group], "resources": [r], "verbs": sorted(VERBS[r])}
             for group, resources in sorted(groups.items()) for r in resources]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta),
         "automountServiceAccountToken": False},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": dict(meta), "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": dict(meta),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
    ]
