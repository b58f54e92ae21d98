"""orchestrator.registry against real registries as production runs them (no engine needed):
Debian's docker-registry over TLS from a test CA, with htpasswd (basic) auth, and a second one
with token auth whose JWTs come from tests/registries/token_issuer.py.

Credentials come from where operators keep them: the Docker config (`auths`, `credHelpers`), the
CI variables AADS_REGISTRY_USERNAME/PASSWORD. Trust comes from certs.d/<host>/ca.crt. Wrong
credentials and an untrusted certificate are refused with a line that says which and the fix.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.errors import RegistryError
from orchestrator.registry import RegistryClient
from tests.registries.server import htpasswd_registry, token_registry
from tests.registries.token_issuer import SERVICE
from tests.registries.upload import upload_image

USER, PASSWORD = "alice", "s3cret-for-tests"
NAME = "aads-test/registry-client"

pytestmark = pytest.mark.skipif(not (shutil.which("docker-registry") and shutil.which("htpasswd")),
                                reason="docker-registry / htpasswd missing: `make engine` installs them")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory):
    with htpasswd_registry(tmp_path_factory.mktemp("basic-registry"), {USER: PASSWORD}) as reg:
        reg.digest = upload_image(reg.host, NAME, "v1", authorization=_basic(USER, PASSWORD),
                                  cafile=str(reg.ca.cert), note="basic")
        yield reg


@pytest.fixture(scope="module")
def bearer_registry(tmp_path_factory):
    with token_registry(tmp_path_factory.mktemp("token-registry"), {USER: PASSWORD}) as reg:
        token = reg.issuer.token(USER, SERVICE, [f"repository:{NAME}:pull,push"])
        reg.digest = upload_image(reg.host, NAME, "v1", authorization=f"Bearer {token}",
                                  cafile=str(reg.ca.cert), note="token")
        yield reg


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No credentials from the machine: an empty Docker config dir, no AADS_REGISTRY_* variables."""
    for var in ("AADS_REGISTRY_USERNAME", "AADS_REGISTRY_PASSWORD", "AADS_REGISTRY_CREDENTIALS_FILE",
                "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(var, raising=False)
    config_dir = tmp_path / "docker-config"
    config_dir.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    return config_dir


@pytest.fixture
def trust(monkeypatch):
    """trust(reg): the registry's CA the operator's way, certs.d (REQUESTS_CA_BUNDLE without root),
    for this test only."""
    trusted = []

    def add(reg) -> None:
        trusted.append(reg)
        _trust(reg, monkeypatch)
    yield add
    for reg in trusted:
        reg.untrust()


def _trust(reg, monkeypatch) -> None:
    if not reg.trust_in_engine():
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(reg.ca.cert))


def docker_login(config_dir, host: str, user: str, password: str) -> None:
    """What `docker login` leaves in config.json (`auths` with base64 user:password)."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (config_dir / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_docker_config_credentials_over_tls(kind, basic_registry, bearer_registry, clean_env, trust):
    reg = basic_registry if kind == "basic" else bearer_registry
    trust(reg)
    docker_login(clean_env, reg.host, USER, PASSWORD)
    client = RegistryClient(f"{reg.host}/{NAME}")
    client.ping()
    assert client.tag_digest("v1") == reg.digest
    assert client.tag_digest("no-such-tag") is None
    assert client.tags() == ["v1"]


def test_token_flow_asks_for_the_repository_scope(bearer_registry, clean_env, trust, monkeypatch):
    trust(bearer_registry)
    monkeypatch.setenv("AADS_REGISTRY_USERNAME", USER)
    monkeypatch.setenv("AADS_REGISTRY_PASSWORD", PASSWORD)
    before = len(bearer_registry.issuer.issued)
    assert RegistryClient(f"{bearer_registry.host}/{NAME}").tag_digest("v1") == bearer_registry.digest
    claims = bearer_registry.issuer.issued[before:]
    assert any(a["name"] == NAME and "pull" in a["actions"] for c in claims for a in c["access"]), claims
    assert all(c["sub"] == USER for c in claims)


def test_credential_helper_is_asked(basic_registry, clean_env, trust, monkeypatch, tmp_path):
    """`credHelpers` in the Docker config: the real helper protocol (`docker-credential-X get`)."""
    trust(basic_registry)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-aadstest"
    asked = tmp_path / "asked"
    helper.write_text("#!/bin/sh\n"
                      f"[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" >> {asked}\n"
                      f"printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    (clean_env / "config.json").write_text(json.dumps({"credHelpers": {basic_registry.host: "aadstest"}}))
    assert RegistryClient(f"{basic_registry.host}/{NAME}").tag_digest("v1") == basic_registry.digest
    assert asked.read_text().split() == [basic_registry.host]


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_missing_credentials_say_how_to_log_in(kind, basic_registry, bearer_registry, clean_env, trust):
    reg = basic_registry if kind == "basic" else bearer_registry
    trust(reg)
    with pytest.raises(RegistryError) as e:
        RegistryClient(f"{reg.host}/{NAME}").tag_digest("v1")
    assert "asks for credentials" in str(e.value) and f"docker login {reg.host}" in str(e.value)


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_wrong_credentials_are_refused_by_name(kind, basic_registry, bearer_registry, clean_env, trust):
    reg = basic_registry if kind == "basic" else bearer_registry
    trust(reg)
    docker_login(clean_env, reg.host, USER, "not-the-password")
    with pytest.raises(RegistryError) as e:
        RegistryClient(f"{reg.host}/{NAME}").tag_digest("v1")
    message = str(e.value)
    assert "refused the credentials" in message and f"user {USER!r}" in message, message
    assert f"docker login {reg.host}" in message
    assert "not-the-password" not in message


def test_untrusted_certificate_is_refused_with_the_fix(basic_registry, clean_env):
    docker_login(clean_env, basic_registry.host, USER, PASSWORD)
    with pytest.raises(RegistryError) as e:
        RegistryClient(f"{basic_registry.host}/{NAME}").tag_digest("v1")
    message = str(e.value)
    assert "not trusted" in message and f"/etc/docker/certs.d/{basic_registry.host}/ca.crt" in message, message


def test_ca_bundle_from_requests_ca_bundle(basic_registry, clean_env, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(basic_registry.ca.cert))
    docker_login(clean_env, basic_registry.host, USER, PASSWORD)
    assert RegistryClient(f"{basic_registry.host}/{NAME}").tag_digest("v1") == basic_registry.digest


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: only picks the outgoing address
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture
def plain_http_registry():
    """A plain-HTTP /v2/ answering on this host's non-loopback address (as a remote registry would)."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    server = ThreadingHTTPServer((address, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"{address}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_plain_http_only_for_loopback_or_insecure(plain_http_registry, clean_env):
    with pytest.raises(RegistryError) as e:
        RegistryClient(f"{plain_http_registry}/x").ping()
    assert "insecure: true" in str(e.value), str(e.value)
    RegistryClient(f"{plain_http_registry}/x", insecure=True).ping()
