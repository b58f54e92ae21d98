"""The trust store is loaded only when a registry shows a certificate (it costs 0.1-0.15 s a process).

A loopback registry may speak plain HTTP: it is first asked through a context that trusts no CA, which
a plain server fails before any certificate is read. A TLS server on loopback is then asked again
with the full trust, so its certificate is still verified: trusted through `ca_file` it answers,
untrusted it is refused as before.
"""

from __future__ import annotations

import ssl
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator import registry as registry_mod
from orchestrator.errors import RegistryTLSError
from orchestrator.registry import RegistryClient
from tests.registries.pki import TestCA

DIGEST = "sha256:" + "ab" * 32


class _Registry(BaseHTTPRequestHandler):
    def do_HEAD(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Docker-Content-Digest", DIGEST)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@contextmanager
def serving(tls: tuple | None = None):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def trust_loads(monkeypatch):
    """How many times the full trust store was built."""
    calls = []
    real = registry_mod.ssl_context_for

    def counting(host, **kw):
        calls.append(host)
        return real(host, **kw)
    monkeypatch.setattr(registry_mod, "ssl_context_for", counting)
    return calls


def test_a_plain_http_loopback_registry_is_answered_without_loading_the_trust_store(trust_loads):
    with serving() as host:
        client = RegistryClient(f"{host}/aads", env={})
        assert client.tag_digest("v1") == DIGEST
        assert client.scheme == "http"
    assert trust_loads == []


def test_a_tls_loopback_registry_is_verified_with_the_full_trust(tmp_path, trust_loads):
    ca = TestCA.create(tmp_path)
    with serving(tls=ca.issue("registry")) as host:
        client = RegistryClient(f"{host}/aads", env={}, ca_file=str(ca.cert))
        assert client.tag_digest("v1") == DIGEST
        assert client.scheme == "https"
    assert trust_loads == [host]


def test_an_untrusted_tls_loopback_registry_is_still_refused(tmp_path, trust_loads):
    ca = TestCA.create(tmp_path)
    with serving(tls=ca.issue("registry")) as host:
        client = RegistryClient(f"{host}/aads", env={})  # its CA is not given
        with pytest.raises(RegistryTLSError, match="is not trusted"):
            client.tag_digest("v1")
        assert client.scheme is None
    assert trust_loads == [host]


def test_a_remote_registry_loads_its_trust_at_once(trust_loads):
    RegistryClient("registry.example.com/aads", env={})
    assert trust_loads == ["registry.example.com"]
