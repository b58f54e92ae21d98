"""Runs inside a faulty candidate image (see faulty_images.py): the real service behind a small fault.

Stdlib only, started by the image's own python. AADS_FAULT picks the fault:

  crash           exit 3 at once, before anything listens;
  never-ready     /health says 200, /ready says 503 forever (the real service is not started);
  wrong-golden    the real service behind a proxy that changes every diagnosis (smoke test fails);
  5xx-after-flip  the real service behind a proxy: /health, /ready and every request from the host
                  (the smoke test comes through the published port, i.e. from the network gateway)
                  pass; /v1/* requests from anyone else (the edge) get 500 after the first
                  AADS_FAULT_PASS_FIRST of them;
  slow            the real service behind a proxy that holds back every /v1/* request from anyone
                  but the host (i.e. from the edge) for AADS_FAULT_DELAY_S seconds between its head
                  and its body. The service starts its clock at the head (serving/audit.py), so its
                  own latency histogram, the one the canary analysis reads, and every client through
                  the edge see each answer that much later; /health, /ready, /metrics and the smoke
                  test from the host are as fast as the real image.

In the proxy modes the service listens on AADS_FAULT_INNER_PORT and /v1/version names the faulty
version (AADS_FAULT_VERSION), so the orchestrator's confirm step sees the version it deployed.
SIGTERM is passed on to the service, so `docker stop` is as quick as for the real image.
"""

import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE = os.environ.get("AADS_FAULT", "")
VERSION = os.environ.get("AADS_FAULT_VERSION", "")
MANIFEST_SHA256 = os.environ.get("AADS_FAULT_MANIFEST_SHA256", "")
INNER_PORT = int(os.environ.get("AADS_FAULT_INNER_PORT", "8001"))
PASS_FIRST = int(os.environ.get("AADS_FAULT_PASS_FIRST", "0"))
DELAY_S = float(os.environ.get("AADS_FAULT_DELAY_S", "0"))
PORT = 8000
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "accept-encoding",
              "proxy-connection", "te", "trailer", "upgrade", "host"}


def log(message):
    print(f"fault-wrapper[{MODE}]: {message}", file=sys.stderr, flush=True)


def default_gateway():
    """The container's default gateway: where connections through a published port come from."""
    try:
        with open("/proc/net/route") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] == "00000000":
                    return socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
    except OSError:
        pass
    return None


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    gateway = default_gateway()
    lock = threading.Lock()
    edge_requests = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.handle_any()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

    def reply(self, status, body, headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-encoding":
                self.send_header(k, v)
        if not any(k.lower() == "content-type" for k, _ in headers):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        path = self.path.split("?", 1)[0]
        if MODE == "never-ready":
            if path == "/health":
                return self.reply(200, {"status": "alive"})
            return self.reply(503, {"error": {"code": "not_ready", "message": "fault: never ready"}})
        via_edge = self.client_address[0] not in ("127.0.0.1", self.gateway)
        if MODE == "5xx-after-flip" and path.startswith("/v1/") and via_edge:
            with Proxy.lock:
                n = Proxy.edge_requests
                Proxy.edge_requests += 1
            if n >= PASS_FIRST:
                return self.reply(500, {"error": {"code": "fault", "message": "fault: 5xx after the flip"}})
        delay = DELAY_S if MODE == "slow" and path.startswith("/v1/") and via_edge else 0.0
        try:
            status, headers, data = self.forward(body, delay)
        except OSError as e:
            return self.reply(503, {"error": {"code": "starting", "message": f"inner service: {e}"}})
        if status == 200 and path == "/v1/version":
            data = self.rewrite(data, self.name_fault_version)
        if status == 200 and MODE == "wrong-golden" and path.startswith("/v1/diagnose"):
            data = self.rewrite(data, self.wrong_diagnosis)
        self.reply(status, data, headers)

    def forward(self, body, delay=0.0):
        conn = http.client.HTTPConnection("127.0.0.1", INNER_PORT, timeout=300)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if delay > 0:
                # The head now, the body `delay` later: the service is already timing the request.
                conn.putrequest(self.command, self.path, skip_accept_encoding=True)
                for k, v in headers.items():
                    conn.putheader(k, v)
                conn.putheader("Content-Length", str(len(body or b"")))
                conn.endheaders()
                time.sleep(delay)
                if body:
                    conn.send(body)
            else:
                conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    @staticmethod
    def rewrite(data, change):
        try:
            doc = json.loads(data)
        except ValueError:
            return data
        change(doc)
        return json.dumps(doc).encode()

    @staticmethod
    def name_fault_version(doc):
        doc["version"] = VERSION
        if MANIFEST_SHA256:
            doc["manifest_sha256"] = MANIFEST_SHA256

    @staticmethod
    def wrong_diagnosis(doc):
        for result in ([doc.get("result")] if isinstance(doc.get("result"), dict) else [doc]):
            result["decision"] = "fault-decision"
            result["disease"] = "fault-disease"


def inner_command(argv):
    """The image's own command, told to listen on the inner port."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--port" and i + 1 < len(argv):
            argv[i + 1] = str(INNER_PORT)
        elif arg.startswith("--port="):
            argv[i] = f"--port={INNER_PORT}"
    return argv


def main():
    if MODE == "crash":
        log("crashing at start, as built")
        return 3
    child = None
    if MODE in ("wrong-golden", "5xx-after-flip", "slow"):
        child = subprocess.Popen(inner_command(sys.argv[1:]), env={**os.environ, "AADS_PORT": str(INNER_PORT)})
    elif MODE != "never-ready":
        log(f"unknown AADS_FAULT {MODE!r}")
        return 2
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Proxy)
    server.daemon_threads = True
    stopping = threading.Event()

    def on_term(signum, frame):
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log(f"listening on :{PORT} (version {VERSION}, gateway {Proxy.gateway})")
    if child is None:
        stopping.wait()
        return 0
    code = child.wait()
    log(f"service exited with {code}")
    return 0 if stopping.is_set() else (code or 1)


if __name__ == "__main__":
    sys.exit(main())
