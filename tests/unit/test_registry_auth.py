"""orchestrator.registry_auth / registry_tls / the challenge parser: where credentials and trust
come from, without a registry (the real registries are in tests/integration/test_registry_client.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from orchestrator import config as config_mod
from orchestrator.errors import RegistryError
from orchestrator.registry import parse_challenge
from orchestrator import registry_auth
from orchestrator.registry_auth import CredentialSources, Credentials, read_credentials_file
from orchestrator.registry_tls import is_loopback, ssl_context_for

HOST = "registry.example.com"


def write_file(path: Path, data: dict, mode: int = 0o600) -> Path:
    path.write_text(json.dumps(data))
    path.chmod(mode)
    return path


def test_env_pair_is_for_the_configured_registry_only(tmp_path):
    env = {"AADS_REGISTRY_USERNAME": "ci", "AADS_REGISTRY_PASSWORD": "pw", "DOCKER_CONFIG": str(tmp_path)}
    sources = CredentialSources(primary_host=HOST, env=env)
    found = sources.find(HOST)
    assert (found.username, found.password) == ("ci", "pw") and "AADS_REGISTRY_USERNAME" in found.source
    assert sources.find("elsewhere.example.com") is None  # never sent to another host


def test_env_pair_without_config_goes_to_the_aads_registry_host(tmp_path, monkeypatch):
    # engine.sh's own file for 127.0.0.1:5000 (present on a machine that ran `make engine`) is out of play here
    monkeypatch.setattr(registry_auth, "DEFAULT_CREDENTIALS_FILE", tmp_path / "absent.json")
    env = {"AADS_REGISTRY_USERNAME": "ci", "AADS_REGISTRY_PASSWORD": "pw", "DOCKER_CONFIG": str(tmp_path),
           "AADS_REGISTRY": f"{HOST}/aads-ulora"}
    assert CredentialSources.for_host(HOST, env).find(HOST).username == "ci"
    assert CredentialSources.for_host("127.0.0.1:5000", env).find("127.0.0.1:5000") is None
    del env["AADS_REGISTRY"]
    assert CredentialSources.for_host("127.0.0.1:5000", env).find("127.0.0.1:5000").username == "ci"


def test_credentials_file_must_be_private(tmp_path):
    path = write_file(tmp_path / "creds.json", {"registry": HOST, "username": "u", "password": "p"}, 0o644)
    with pytest.raises(RegistryError, match=r"readable by others \(mode 0644\).*chmod 600"):
        read_credentials_file(path, HOST)
    path.chmod(0o600)
    assert read_credentials_file(path, HOST).username == "u"
    assert read_credentials_file(path, "other:5000") is None


def test_malformed_credentials_file_is_one_clear_error(tmp_path):
    path = write_file(tmp_path / "creds.json", {"registry": HOST, "username": "u"})
    with pytest.raises(RegistryError, match="must hold"):
        read_credentials_file(path, HOST)


def test_docker_config_auths_and_identity_token(tmp_path):
    auth = base64.b64encode(b"alice:pw").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {
        HOST: {"auth": auth}, "tokens.example.com": {"identitytoken": "refresh-me"}}}))
    sources = CredentialSources(env={"DOCKER_CONFIG": str(tmp_path)})
    found = sources.find(HOST)
    assert (found.username, found.password) == ("alice", "pw") and found.source.endswith("(auths)")
    assert found.auth_config() == {"username": "alice", "password": "pw"}
    token = sources.find("tokens.example.com")
    assert token.identity_token == "refresh-me" and token.auth_config() == {"identitytoken": "refresh-me"}
    assert sources.find("unknown.example.com") is None


def test_failing_credential_helper_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"credHelpers": {HOST: "aads-missing-helper"}}))
    with pytest.raises(RegistryError, match="aads-missing-helper"), pytest.warns(UserWarning, match="not installed"):
        CredentialSources(env={"DOCKER_CONFIG": str(tmp_path), "PATH": str(tmp_path)}).find(HOST)


def test_config_registries_settings_and_credentials_file(tmp_path):
    write_file(tmp_path / "creds.json", {"registry": HOST, "username": "u", "password": "p"})
    (tmp_path / "orchestrator.yaml").write_text(
        f"registry: {HOST}/aads\nregistries:\n  {HOST}:\n    credentials_file: creds.json\n    insecure: true\n")
    cfg = config_mod.load(tmp_path / "orchestrator.yaml", env={})
    assert cfg.registry_settings(HOST).insecure and not cfg.registry_settings("x:1").insecure
    found = CredentialSources.from_config(cfg, env={"DOCKER_CONFIG": str(tmp_path)}).find(HOST)
    assert found.source == str(tmp_path / "creds.json")


def test_unknown_registry_setting_is_refused(tmp_path):
    (tmp_path / "orchestrator.yaml").write_text(f"registries:\n  {HOST}:\n    insecure_tls: true\n")
    with pytest.raises(Exception, match="insecure_tls"):
        config_mod.load(tmp_path / "orchestrator.yaml", env={})


def test_who_never_shows_the_secret():
    assert "pw" not in Credentials(source="s", username="u", password="pw").who()
    assert "pw" not in repr(Credentials(source="s", username="u", password="pw"))


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1:5000", True), ("127.9.9.9", True), ("localhost:5000", True), ("[::1]:5000", True), ("::1", True),
    ("10.0.0.1:5000", False), ("registry.example.com", False), ("registry.example.com:443", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_parse_challenge():
    c = parse_challenge('Bearer realm="https://auth.example.com/token",service="registry",'
                        'scope="repository:aads-ulora:pull,push"')
    assert c.scheme == "bearer" and c.params == {"realm": "https://auth.example.com/token", "service": "registry",
                                                 "scope": "repository:aads-ulora:pull,push"}
    assert parse_challenge('Basic realm="aads"').scheme == "basic"
    assert parse_challenge("") is None


def test_certs_d_ca_is_loaded_and_a_bad_one_is_named(tmp_path):
    certs_d = tmp_path / "certs.d"
    (certs_d / HOST).mkdir(parents=True)
    (certs_d / HOST / "ca.crt").write_text("not a certificate")
    with pytest.raises(RegistryError, match=rf"CA file .*{HOST}/ca.crt"):
        ssl_context_for(HOST, env={}, certs_d_dirs=(certs_d,))
    assert ssl_context_for("other.example.com", env={}, certs_d_dirs=(certs_d,)).sources == ("system store",)
