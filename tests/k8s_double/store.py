"""Objects, resourceVersions and the watch event log of the double's API server.

One lock guards everything. Every write gets the next resourceVersion (one counter for the whole
store, as etcd's revision is) and appends an event that watchers read. `generation` grows only
when `spec` changes (as for Deployments and ReplicaSets); status and metadata writes leave it.
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator

# resource -> (apiVersion, kind, namespaced)
RESOURCES: dict[str, tuple[str, str, bool]] = {
    "namespaces": ("v1", "Namespace", False),
    "pods": ("v1", "Pod", True),
    "deployments": ("apps/v1", "Deployment", True),
    "replicasets": ("apps/v1", "ReplicaSet", True),
}
GROUP = {"namespaces": "", "pods": "", "deployments": "apps", "replicasets": "apps"}


def timestamp(t: float | None = None) -> str:
    """RFC 3339 with second precision, as metav1.Time serializes."""
    when = dt.datetime.fromtimestamp(t, dt.timezone.utc) if t is not None else dt.datetime.now(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()


class ApiError(Exception):
    """An API answer other than success: becomes a metav1.Status body with this code."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict[str, Any]:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


def qualified(resource: str) -> str:
    return f"{resource}.{GROUP[resource]}" if GROUP[resource] else resource


def not_found(resource: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{qualified(resource)} "{name}" not found',
                    {"name": name, "group": GROUP[resource], "kind": resource})


def conflict(resource: str, name: str) -> ApiError:
    return ApiError(409, "Conflict",
                    f'Operation cannot be fulfilled on {qualified(resource)} "{name}": the object has been '
                    f"modified; please apply your changes to the latest version and try again",
                    {"name": name, "group": GROUP[resource], "kind": resource})


def invalid(resource: str, name: str, message: str) -> ApiError:
    kind = RESOURCES[resource][1]
    return ApiError(422, "Invalid", f'{kind}.{GROUP[resource] or "core"} "{name}" is invalid: {message}',
                    {"name": name, "group": GROUP[resource], "kind": kind})


@dataclass
class Event:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    resource: str
    obj: dict[str, Any]


class Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.rv = 1000
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[Event] = []
        self.closed = False

    # ---- reads -------------------------------------------------------------------------------
    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self.objects.get((resource, namespace, name))
            if obj is None:
                raise not_found(resource, name)
            return copy.deepcopy(obj)

    def list(self, resource: str, namespace: str | None = None,
             match: Callable[[dict[str, Any]], bool] = lambda o: True) -> list[dict[str, Any]]:
        with self.lock:
            found = [copy.deepcopy(o) for (r, ns, _), o in sorted(self.objects.items())
                     if r == resource and (namespace is None or ns == namespace) and match(o)]
            return found

    # ---- writes ------------------------------------------------------------------------------
    def _emit(self, type_: str, resource: str, obj: dict[str, Any]) -> None:
        self.events.append(Event(self.rv, type_, resource, copy.deepcopy(obj)))
        del self.events[:-20000]  # older resourceVersions answer 410 Gone, as after etcd compaction
        self.changed.notify_all()

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def create(self, resource: str, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        with self.lock:
            api_version, kind, namespaced = RESOURCES[resource]
            meta = obj.setdefault("metadata", {})
            ns = meta.get("namespace", "") if namespaced else ""
            if namespaced and not ns:
                raise ApiError(400, "BadRequest", "the namespace of the provided object is empty")
            if namespaced and ("namespaces", "", ns) not in self.objects:
                raise not_found("namespaces", ns)
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            name = meta.get("name")
            if not name:
                raise invalid(resource, "", "metadata.name: Required value: name or generateName is required")
            if (resource, ns, name) in self.objects:
                raise ApiError(409, "AlreadyExists", f'{qualified(resource)} "{name}" already exists',
                               {"name": name, "group": GROUP[resource], "kind": resource})
            obj["apiVersion"], obj["kind"] = api_version, kind
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=timestamp())
            if resource in ("deployments", "replicasets"):
                meta["generation"] = 1
            meta.pop("resourceVersion", None)
            if dry_run:
                return copy.deepcopy(obj)
            meta["resourceVersion"] = self._next_rv()
            self.objects[(resource, ns, name)] = copy.deepcopy(obj)
            self._emit("ADDED", resource, obj)
            return copy.deepcopy(obj)

    def update(self, resource: str, obj: dict[str, Any], *, check_rv: bool = True, status_only: bool = False,
               dry_run: bool = False) -> dict[str, Any]:
        """Replace an object. With check_rv a stale metadata.resourceVersion answers 409 Conflict."""
        with self.lock:
            meta = obj.get("metadata") or {}
            ns = meta.get("namespace", "") if RESOURCES[resource][2] else ""
            name = meta.get("name", "")
            key = (resource, ns, name)
            old = self.objects.get(key)
            if old is None:
                raise not_found(resource, name)
            if check_rv and meta.get("resourceVersion") and meta["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise conflict(resource, name)
            new = copy.deepcopy(obj)
            if status_only:  # the /status subresource changes status only
                new = {**copy.deepcopy(old), "status": new.get("status", {})}
            elif "status" in old and resource != "pods":  # the main resource ignores status changes
                new["status"] = copy.deepcopy(old["status"])
            # Fields the server owns.
            for k in ("uid", "creationTimestamp", "generation", "namespace", "name"):
                if k in old["metadata"]:
                    new["metadata"][k] = old["metadata"][k]
            new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
            if "generation" in old["metadata"] and old.get("spec") != new.get("spec"):
                new["metadata"]["generation"] = old["metadata"]["generation"] + 1
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            if new == old or dry_run:
                return new  # a no-op write keeps the resourceVersion and emits nothing
            new["metadata"]["resourceVersion"] = self._next_rv()
            self.objects[key] = new
            self._emit("MODIFIED", resource, new)
            return copy.deepcopy(new)

    def delete(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self.objects.pop((resource, namespace, name), None)
            if obj is None:
                raise not_found(resource, name)
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._emit("DELETED", resource, obj)
            return obj

    # ---- watch -------------------------------------------------------------------------------
    def events_after(self, rv: int, resource: str, deadline: float, stop: Callable[[], bool]) -> Iterator[Event]:
        """Events of `resource` with resourceVersion > rv, waiting for new ones until `deadline`."""
        import time

        with self.lock:
            if self.events and rv < self.events[0].rv - 1 and rv < self.rv:
                raise ApiError(410, "Expired", f"too old resource version: {rv} ({self.events[0].rv})")
        while True:
            with self.lock:
                batch = [e for e in self.events if e.rv > rv and e.resource == resource]
                if not batch:
                    left = deadline - time.monotonic()
                    if left <= 0 or self.closed or stop():
                        return
                    self.changed.wait(min(left, 0.5))
                    continue
            for e in batch:
                rv = e.rv
                yield e

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.changed.notify_all()
