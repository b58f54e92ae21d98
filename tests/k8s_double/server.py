"""The double's HTTP API server: discovery, get/list/watch, create/update/patch/delete for
namespaces, pods, deployments and replicasets, on 127.0.0.1 without TLS or authentication.

It answers what the kubernetes Python client and kubectl (`rollout status|history|undo`, `get`)
ask: legacy discovery (kubectl falls back to it when the aggregated form is not offered),
metav1.Status errors with the real reasons (NotFound, Forbidden, Conflict, Invalid, Expired),
watch streams (one JSON event per line, chunked) resumable from a resourceVersion. Tests may make
it answer 5xx or 409 for chosen verbs (`fail`), and serve only what a Role grants (`grant`).

Longer than 400 lines on purpose: the request handler and `KubeDouble`, the object tests drive,
stay together because the handler consults its fault, RBAC and validation rules on every request.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.k8s_double import patches
from tests.k8s_double.controller import Cluster
from tests.k8s_double.selectors import SelectorError, field_selector, label_selector, match_labels
from tests.k8s_double.store import RESOURCES, ApiError, Store, conflict, invalid, qualified

SERVER_VERSION = {
    "major": "1", "minor": "32", "gitVersion": "v1.32.0-aads-double", "gitCommit": "0" * 40,
    "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23",
    "compiler": "gc", "platform": "linux/amd64",
}

# name, singular, kind, verbs, shortNames, subresources
_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
CORE = [
    ("namespaces", "namespace", "Namespace", False, ["create", "delete", "get", "list", "patch", "update", "watch"], ["ns"]),
    ("pods", "pod", "Pod", True, _VERBS, ["po"]),
]
APPS = [
    ("deployments", "deployment", "Deployment", True, _VERBS, ["deploy"]),
    ("replicasets", "replicaset", "ReplicaSet", True, _VERBS, ["rs"]),
]


def resource_list(group_version: str, entries) -> dict[str, Any]:
    out = []
    for name, singular, kind, namespaced, verbs, short in entries:
        out.append({"name": name, "singularName": singular, "namespaced": namespaced, "kind": kind,
                    "verbs": verbs, "shortNames": short, "categories": ["all"] if name != "namespaces" else []})
        out.append({"name": f"{name}/status", "singularName": "", "namespaced": namespaced, "kind": kind,
                    "verbs": ["get", "patch", "update"]})
        if name in ("deployments", "replicasets"):
            out.append({"name": f"{name}/scale", "singularName": "", "namespaced": True, "group": "autoscaling",
                        "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": out}


DISCOVERY = {
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}]},
    "/api/v1": resource_list("v1", CORE),
    "/apis/apps/v1": resource_list("apps/v1", APPS),
    "/version": SERVER_VERSION,
}

_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>apps)/v1)"
    r"(?:/namespaces/(?P<ns>[^/]+)(?=/))?"
    r"/(?P<resource>[a-z]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>status|scale))?$"
)

PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet; requests are kept in .requests
        pass

    # ---- plumbing ----------------------------------------------------------------------------
    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise ApiError(400, "BadRequest", "the request body is not valid JSON") from None

    def _handle(self, method: str) -> None:
        double = self.server.double
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        double.requests.append({"method": method, "path": url.path, "query": query,
                                "content_type": self.headers.get("Content-Type", ""),
                                "accept": self.headers.get("Accept", "")})
        try:
            body = self._body()  # read even for DELETE (DeleteOptions), so keep-alive stays in step
            if method == "GET" and url.path.rstrip("/") in DISCOVERY:
                return self._send(200, DISCOVERY[url.path.rstrip("/")])
            if method == "GET" and url.path in ("/healthz", "/livez", "/readyz"):
                data = b"ok"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(data)
                return None
            m = _PATH.match(url.path)
            if not m or m["resource"] not in RESOURCES or bool(m["group"]) != (RESOURCES[m["resource"]][0] == "apps/v1"):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if m["resource"] == "namespaces" and m["ns"] is None and m["name"] and not m["sub"]:
                ns = m["name"]  # /api/v1/namespaces/{name}
            else:
                ns = m["ns"]
            double.check_access(method, m["resource"], ns, m["name"], query)
            double.check_faults(method, m["resource"], m["name"], query)
            return self._resource(method, m["resource"], m["ns"], m["name"], m["sub"], query, body)
        except ApiError as e:
            return self._send(e.code, e.status())
        except SelectorError as e:
            return self._send(400, ApiError(400, "BadRequest", str(e)).status())
        except patches.PatchError as e:
            return self._send(422, ApiError(422, "Invalid", str(e)).status())
        except (BrokenPipeError, ConnectionResetError):
            return None

    do_GET = lambda self: self._handle("GET")  # noqa: E731
    do_POST = lambda self: self._handle("POST")  # noqa: E731
    do_PUT = lambda self: self._handle("PUT")  # noqa: E731
    do_PATCH = lambda self: self._handle("PATCH")  # noqa: E731
    do_DELETE = lambda self: self._handle("DELETE")  # noqa: E731

    # ---- resources ---------------------------------------------------------------------------
    def _resource(self, method: str, resource: str, ns: str | None, name: str | None, sub: str | None,
                  query: dict[str, str], body: Any) -> None:
        store = self.server.double.store
        api_version, kind, namespaced = RESOURCES[resource]
        if not namespaced:
            ns = ""
        dry_run = query.get("dryRun") == "All"
        if sub == "scale":
            raise ApiError(405, "MethodNotAllowed", "the scale subresource is not served by the double")
        if name is None:
            if method == "GET":
                match_l = label_selector(query.get("labelSelector"))
                match_f = field_selector(query.get("fieldSelector"))
                match = lambda o: match_l(o) and match_f(o)  # noqa: E731
                if query.get("watch") in ("true", "1"):
                    return self._watch(resource, ns, match, query)
                with store.lock:
                    items = store.list(resource, ns or None, match)
                    rv = str(store.rv)
                return self._send(200, {"kind": f"{kind}List", "apiVersion": api_version,
                                        "metadata": {"resourceVersion": rv}, "items": items})
            if method == "POST":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "expected an object")
                if namespaced:
                    body.setdefault("metadata", {}).setdefault("namespace", ns)
                    if body["metadata"]["namespace"] != ns:
                        raise ApiError(400, "BadRequest", "the namespace of the provided object does not "
                                                          "match the namespace sent on the request")
                self.server.double.validate(resource, body, None)
                self.server.double.default(resource, body)
                return self._send(201, store.create(resource, body, dry_run=dry_run))
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a collection here")
        if method == "GET":
            return self._send(200, store.get(resource, ns, name))
        if method == "DELETE":
            return self._send(200, store.delete(resource, ns, name))
        with store.lock:  # read-modify-write as one step, like the server's GuaranteedUpdate
            current = store.get(resource, ns, name)
            if method == "PUT":
                new = body
                if not isinstance(new, dict) or (new.get("metadata") or {}).get("name") != name:
                    raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
                check_rv = True
            else:
                kind_of_patch = PATCH_TYPES.get(self.headers.get("Content-Type", "").split(";")[0].strip())
                if kind_of_patch is None:
                    raise ApiError(415, "UnsupportedMediaType",
                                   f"the body of the request was in an unknown format - accepted media types "
                                   f"include: {', '.join(PATCH_TYPES)}")
                new = self._apply_patch(kind_of_patch, current, body)
                # A resourceVersion in the patch is a precondition (optimistic concurrency).
                check_rv = True
            new.setdefault("metadata", {})
            new["metadata"]["namespace"] = current["metadata"].get("namespace")
            if new["metadata"].get("name") != name:
                raise ApiError(400, "BadRequest", "metadata.name cannot be changed")
            self.server.double.validate(resource, new, current)
            self.server.double.default(resource, new)
            result = store.update(resource, new, check_rv=check_rv, status_only=sub == "status", dry_run=dry_run)
        return self._send(200, result)

    @staticmethod
    def _apply_patch(kind: str, current: dict[str, Any], body: Any) -> dict[str, Any]:
        if kind == "json":
            return patches.json_patch(current, body)
        if not isinstance(body, dict):
            raise patches.PatchError("a merge patch must be a JSON object")
        if kind == "merge":
            return patches.merge_patch(current, body)
        return patches.strategic_merge(current, body)

    def _watch(self, resource: str, ns: str, match, query: dict[str, str]) -> None:
        store = self.server.double.store
        timeout = float(query.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        rv_param = query.get("resourceVersion", "")
        with store.lock:
            if rv_param in ("", "0"):  # "any" / "most recent": the current state as ADDED first
                initial = [{"type": "ADDED", "object": o} for o in store.list(resource, ns or None, match)]
                start = store.rv
            else:
                initial, start = [], int(rv_param)
            events = store.events_after(start, resource, deadline, self.server.stopping.is_set)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        try:
            for e in initial:
                chunk(json.dumps(e).encode() + b"\n")
            try:
                for e in events:
                    meta = e.obj.get("metadata") or {}
                    if ns and meta.get("namespace") != ns:
                        continue
                    if not match(e.obj):
                        continue
                    chunk(json.dumps({"type": e.type, "object": e.obj}).encode() + b"\n")
            except ApiError as err:  # resourceVersion too old: an ERROR event, as the server sends
                chunk(json.dumps({"type": "ERROR", "object": err.status()}).encode() + b"\n")
            chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


def verb_of(method: str, name: str | None, query: dict[str, str]) -> str:
    """The RBAC verb of a request, as the API server's RequestInfo names it."""
    return {"GET": "get" if name else ("watch" if query.get("watch") in ("true", "1") else "list"),
            "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]


@dataclass
class Fault:
    code: int
    verbs: set[str]
    resource: str
    left: int
    served: int = 0
    armed: bool = True
    after: str | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    double: "KubeDouble"
    stopping: threading.Event


class KubeDouble:
    """A Kubernetes API server double on 127.0.0.1 with its controllers; a context manager."""

    def __init__(self, *, ready_after_s: float = 0.3, tick_s: float = 0.05, port: int = 0):
        self.store = Store()
        self.cluster = Cluster(self.store, ready_after_s=ready_after_s, tick_s=tick_s)
        self.requests: list[dict[str, Any]] = []
        # namespace -> verbs refused with 403 ("*" = all)
        self.forbidden: dict[str, set[str]] = {}
        # RBAC as a Role grants it: {(resource, verb)}; None = everything allowed.
        self.granted: set[tuple[str, str]] | None = None
        # Errors the server answers instead of serving a request (5xx, 409), in order.
        self.faults: list[Fault] = []
        self._http = _Server(("127.0.0.1", port), Handler)
        self._http.double = self
        self._http.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "KubeDouble":
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="k8s-double-http", daemon=True)
        self._thread.start()
        self.cluster.start()
        return self

    def stop(self) -> None:
        self._http.stopping.set()
        self.store.close()
        self.cluster.stop()
        self._http.shutdown()
        self._http.server_close()

    def __enter__(self) -> "KubeDouble":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- test controls -----------------------------------------------------------------------
    def mark_bad(self, image: str, how: str = "unready") -> None:
        """Pods running `image` never become Ready: "unready", "crash" (CrashLoopBackOff), "pull"."""
        assert how in ("unready", "crash", "pull")
        self.cluster.bad_images[image] = how

    def fail(self, code: int, *, verbs: set[str], resource: str = "deployments", times: int = 1,
             after: str | None = None) -> "Fault":
        """Answer the next `times` requests of these verbs on `resource` with `code` (e.g. 503 as an
        overloaded API server or a restarting load balancer, 409 as a concurrent writer), as the
        real server answers: a metav1.Status body. With `after` (a verb), only once a request with
        that verb on `resource` has been served (e.g. "patch": the API goes away mid-rollout)."""
        fault = Fault(code, set(verbs), resource, times, armed=after is None, after=after)
        self.faults.append(fault)
        return fault

    def grant(self, rules: dict[str, set[str]]) -> None:
        """Serve only what these rules allow ({resource: verbs}, as a Role's rules); 403 otherwise."""
        self.granted = {(r, v) for r, verbs in rules.items() for v in verbs}

    def forbid(self, namespace: str, verbs: set[str] | None = None) -> None:
        """Answer 403 Forbidden for these verbs (default: all) in `namespace`."""
        self.forbidden[namespace] = set(verbs or {"*"})

    def create_namespace(self, name: str) -> dict[str, Any]:
        return self.store.create("namespaces", {"metadata": {"name": name}, "spec": {}, "status": {"phase": "Active"}})

    def create(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.validate(resource, obj, None)
        self.default(resource, obj)
        return self.store.create(resource, obj)

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        return self.store.get(resource, namespace, name)

    def list(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.store.list(resource, namespace)

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "condition") -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")

    def write_kubeconfig(self, path: str | Path, *, namespace: str = "aads", context: str = "double") -> Path:
        path = Path(path)
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "double-user", "user": {"token": "double-token"}}],
            "contexts": [{"name": context, "context": {"cluster": "double", "user": "double-user",
                                                       "namespace": namespace}}],
        }, indent=2))
        return path

    # ---- admission ---------------------------------------------------------------------------
    def check_faults(self, method: str, resource: str, name: str | None, query: dict[str, str]) -> None:
        verb = verb_of(method, name, query)
        for fault in self.faults:
            if not fault.armed:
                fault.armed = verb == fault.after and resource == fault.resource
                continue
            if fault.left > 0 and verb in fault.verbs and resource == fault.resource:
                fault.left -= 1
                fault.served += 1
                if fault.code == 409:
                    raise conflict(resource, name or "")
                raise ApiError(fault.code, {500: "InternalError", 503: "ServiceUnavailable",
                                            504: "Timeout"}.get(fault.code, "InternalError"),
                               f"the server is currently unable to handle the request ({fault.code}, injected)")

    def check_access(self, method: str, resource: str, ns: str | None, name: str | None,
                     query: dict[str, str]) -> None:
        verb = verb_of(method, name, query)
        refused = self.forbidden.get(ns or "")
        if self.granted is not None and (resource, verb) not in self.granted and resource != "namespaces":
            refused = {verb}
        if not refused:
            return
        if "*" not in refused and verb not in refused:
            return
        group = "apps" if RESOURCES[resource][0] == "apps/v1" else ""
        what = f'{qualified(resource)} "{name}"' if name else qualified(resource)
        raise ApiError(403, "Forbidden",
                       f'{what} is forbidden: User "double-user" cannot {verb} resource "{resource}" in API group '
                       f'"{group}" in the namespace "{ns}"',
                       {"name": name or "", "group": group, "kind": resource})

    @staticmethod
    def validate(resource: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """The checks of apps/validation that a rollout can trip over."""
        if resource not in ("deployments", "replicasets"):
            return
        name = (obj.get("metadata") or {}).get("name", "")
        spec = obj.get("spec") or {}
        selector = spec.get("selector")
        if not selector:
            raise invalid(resource, name, "spec.selector: Required value")
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not match_labels(selector)({"metadata": {"labels": labels}}):
            raise invalid(resource, name, "spec.template.metadata.labels: Invalid value: "
                                          f"{json.dumps(labels)}: `selector` does not match template `labels`")
        if old is not None and old["spec"].get("selector") != selector:
            raise invalid(resource, name, "spec.selector: Invalid value: field is immutable")
        containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
        if not containers:
            raise invalid(resource, name, "spec.template.spec.containers: Required value")
        for i, c in enumerate(containers):
            if not c.get("image"):
                raise invalid(resource, name, f"spec.template.spec.containers[{i}].image: Required value")
        if spec.get("replicas", 1) < 0:
            raise invalid(resource, name, "spec.replicas: Invalid value: must be greater than or equal to 0")

    @staticmethod
    def default(resource: str, obj: dict[str, Any]) -> None:
        """apps/v1 defaulting for the fields the controller reads."""
        if resource != "deployments":
            return
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            strategy["type"] = "RollingUpdate"
            ru = strategy.setdefault("rollingUpdate", {})
            ru.setdefault("maxUnavailable", "25%")
            ru.setdefault("maxSurge", "25%")
