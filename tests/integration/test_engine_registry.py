"""The registry `scripts/engine.sh` sets up: basic auth from htpasswd, credentials in a 0600 file
the orchestrator reads, the owner logged in for the docker CLI/SDK, deletes refused.

The script runs for real, but on a registry of its own (AADS_REGISTRY_ADDR on a free port,
AADS_ENGINE_DIR and DOCKER_CONFIG in a temp dir), so the machine's registry on 127.0.0.1:5000
is never touched. The registry the script started is stopped by the pid it recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest
import requests

from orchestrator.errors import RegistryError
from orchestrator.registry import RegistryClient
from tests.integration.conftest_faults import free_port

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.engine]


def run_engine_sh(env: dict[str, str]) -> subprocess.CompletedProcess:
    """`make engine`'s script, as root (sudo -n where the tests run as a user with sudo, as in CI)."""
    keep = ",".join(k for k in env if k.startswith(("AADS_", "DOCKER_CONFIG")))
    argv = ["bash", str(REPO / "scripts" / "engine.sh")]
    if os.geteuid() != 0:
        argv = ["sudo", "-n", f"--preserve-env={keep},PATH", *argv]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def local_registry(engine, tmp_path_factory):
    root = tmp_path_factory.mktemp("engine-sh")
    addr = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "AADS_REGISTRY_ADDR": addr, "AADS_ENGINE_DIR": str(root / "engine"),
           "DOCKER_CONFIG": str(root / "docker-config")}
    # The compose v2 plugin lives in the Docker config dir: the private one links to the user's.
    plugin = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "cli-plugins" / "docker-compose"
    if plugin.exists():
        (root / "docker-config" / "cli-plugins").mkdir(parents=True)
        (root / "docker-config" / "cli-plugins" / "docker-compose").symlink_to(plugin)
    first = run_engine_sh(env)
    pid_file = root / "engine" / "registry.pid"
    try:
        assert first.returncode == 0, first.stderr[-2000:]
        yield {"addr": addr, "dir": root / "engine", "env": env, "first": first}
    finally:
        if pid_file.is_file():
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline")
            if cmdline.exists() and str(root) in cmdline.read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGTERM)


def credentials(reg) -> dict[str, str]:
    return json.loads((reg["dir"] / "registry" / "credentials.json").read_text())


def test_credentials_file_is_private_and_names_the_registry(local_registry):
    path = local_registry["dir"] / "registry" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = credentials(local_registry)
    assert creds["registry"] == local_registry["addr"] and creds["username"] == "aads"
    assert len(creds["password"]) >= 24
    assert "AADS_REGISTRY_CREDENTIALS_FILE" in local_registry["first"].stderr  # not the default dir: says so


def test_basic_auth_is_required(local_registry):
    base = f"http://{local_registry['addr']}/v2/"
    anonymous = requests.get(base, timeout=10)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Basic ")
    creds = credentials(local_registry)
    assert requests.get(base, auth=(creds["username"], creds["password"]), timeout=10).status_code == 200
    assert requests.get(base, auth=(creds["username"], "wrong"), timeout=10).status_code == 401


def test_deletes_are_refused(local_registry):
    creds = credentials(local_registry)
    auth = (creds["username"], creds["password"])
    base = f"http://{local_registry['addr']}/v2/aads-engine-test"
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}'
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    up = requests.post(f"{base}/blobs/uploads/", auth=auth, timeout=10)
    assert up.status_code == 202, up.text
    location = up.headers["Location"]
    sep = "&" if "?" in location else "?"
    assert requests.put(f"{location}{sep}digest={digest}", data=config, auth=auth, timeout=10).status_code == 201
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                      "size": len(config), "digest": digest}, "layers": []})
    put = requests.put(f"{base}/manifests/v1", data=manifest, auth=auth, timeout=10,
                       headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
    assert put.status_code == 201, put.text
    gone = requests.delete(f"{base}/manifests/{put.headers['Docker-Content-Digest']}", auth=auth, timeout=10)
    assert gone.status_code == 405, gone.text


def test_the_orchestrator_reads_the_credentials_file(local_registry, monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))  # no docker login to fall back on
    monkeypatch.delenv("AADS_REGISTRY_USERNAME", raising=False)
    monkeypatch.setenv("AADS_REGISTRY_CREDENTIALS_FILE", str(local_registry["dir"] / "registry" / "credentials.json"))
    RegistryClient(f"{local_registry['addr']}/aads-engine-test").ping()
    monkeypatch.delenv("AADS_REGISTRY_CREDENTIALS_FILE")
    with pytest.raises(RegistryError, match="asks for credentials"):
        RegistryClient(f"{local_registry['addr']}/aads-engine-test").ping()


def test_the_owner_is_logged_in_for_the_docker_cli(local_registry):
    config = json.loads((Path(local_registry["env"]["DOCKER_CONFIG"]) / "config.json").read_text())
    assert local_registry["addr"] in config.get("auths", {}), config


def test_a_second_run_changes_nothing(local_registry):
    before = (local_registry["dir"] / "registry" / "credentials.json").read_text()
    again = run_engine_sh(local_registry["env"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "starting docker-registry" not in again.stderr
    assert (local_registry["dir"] / "registry" / "credentials.json").read_text() == before
