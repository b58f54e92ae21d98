"""A registry double for the tag check before a switch: HEAD/GET /v2/<name>/manifests/<tag>
answers the digest a test set (Docker-Content-Digest), 404 for an unknown tag; with `basic_auth`
set, 401 (a Basic challenge) to a request without those credentials.

Only the one question `orchestrator.registry.RegistryClient.tag_digest` asks; the real registry
is used once, in the engine-marked tamper test.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class RegistryDouble:
    def __init__(self) -> None:
        self.tags: dict[tuple[str, str], str] = {}  # (name, tag) -> digest
        self.basic_auth: str | None = None  # "Basic <base64 user:password>" every request must carry, or 401
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _answer(self, body: bool) -> None:
                if double.basic_auth and self.headers.get("Authorization") != double.basic_auth:
                    return self._send(401, {"errors": [{"code": "UNAUTHORIZED"}]},
                                      {"WWW-Authenticate": 'Basic realm="registry double"'}, body)
                parts = self.path.split("/")
                if self.path.rstrip("/") == "/v2":
                    return self._send(200, {}, {}, body)
                # /v2/<name...>/manifests/<tag>
                if len(parts) >= 5 and parts[-2] == "manifests":
                    name, tag = "/".join(parts[2:-2]), parts[-1]
                    digest = double.tags.get((name, tag))
                    if digest:
                        return self._send(200, {"schemaVersion": 2}, {"Docker-Content-Digest": digest}, body)
                    return self._send(404, {"errors": [{"code": "MANIFEST_UNKNOWN"}]}, {}, body)
                return self._send(404, {"errors": [{"code": "NAME_UNKNOWN"}]}, {}, body)

            def _send(self, code: int, obj: dict, headers: dict[str, str], body: bool) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._answer(False)

            def do_GET(self):
                self._answer(True)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def host(self) -> str:
        return "%s:%d" % self._http.server_address[:2]

    def start(self) -> "RegistryDouble":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
