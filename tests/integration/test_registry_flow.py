"""build -> push -> verify -> switch -> rollback -> backup restore against registries as production
runs them: TLS from a test CA the engine trusts through /etc/docker/certs.d/<host>/ca.crt, and
either htpasswd (basic) auth or token auth (JWTs from tests/registries/token_issuer.py).

The module runs once per registry kind, on one compose stack of its own (a copy of the session
ledger, so the session's builds are reused: nothing is built again). The basic registry gets its
credentials the operator's way (`docker login`'s entry in the Docker config), the token registry
the CI way (AADS_REGISTRY_USERNAME / AADS_REGISTRY_PASSWORD). The orchestrator runs as a
separate process, as an operator runs it. One switch and one rollback per kind keep engine time
modest; the backup round trip uses a tiny imported image.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.registry import RegistryClient
from orchestrator.registry_auth import Credentials
from tests.integration.conftest_faults import (LIVE_VERSION, OTHER_VERSION, copy_ledger, make_stack,
                                               one_line_error)
from tests.integration.test_backup import Host, import_small_image, write_config
from tests.registries.server import htpasswd_registry, token_registry

pytestmark = [pytest.mark.engine, pytest.mark.slow]
pytest_plugins = ["tests.integration.conftest_faults"]

REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "release-bot", "pw-" + secrets.token_hex(6)


def credentials_env(kind: str, host: str, workdir: Path) -> dict[str, str]:
    if kind == "token":
        return {"AADS_REGISTRY_USERNAME": USER, "AADS_REGISTRY_PASSWORD": PASSWORD}
    config_dir = workdir / "docker-config"
    config_dir.mkdir(exist_ok=True)
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (config_dir / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return {"DOCKER_CONFIG": str(config_dir)}


@pytest.fixture(scope="module", params=["basic", "token"])
def registry(request, tmp_path_factory, engine):
    start = htpasswd_registry if request.param == "basic" else token_registry
    with start(tmp_path_factory.mktemp(f"registry-{request.param}"), {USER: PASSWORD}) as reg:
        if not reg.trust_in_engine():
            pytest.fail(f"cannot write /etc/docker/certs.d/{reg.host}/ca.crt (the engine's trust): run as root")
        reg.kind = request.param
        reg.env = credentials_env(request.param, reg.host, reg.workdir)
        yield reg


@pytest.fixture(scope="module")
def stack(registry, tmp_path_factory, fault_session):
    s = make_stack(tmp_path_factory.mktemp(f"flow-{registry.kind}"), name=f"reg{registry.kind}",
                   session_state_dir=fault_session.state_dir,
                   registry=f"{registry.host}/aads-flow-{secrets.token_hex(3)}", ready_timeout_s=240, watch_s=1)
    s.env.update(registry.env)
    try:
        yield s
    finally:
        s.down()


def client_for(registry, repository: str) -> RegistryClient:
    return RegistryClient(repository, credentials=Credentials(source="test", username=USER, password=PASSWORD))


def test_push_without_credentials_says_how_to_log_in(stack, registry, tmp_path):
    empty = tmp_path / "no-docker-config"
    empty.mkdir()
    r = stack.run("push", LIVE_VERSION, env={"DOCKER_CONFIG": str(empty), "AADS_REGISTRY_USERNAME": ""})
    assert r.returncode != 0
    line = one_line_error(r.stderr)
    assert "asks for credentials" in line and f"docker login {registry.host}" in line, line


def test_push_both_versions(stack, registry):
    for version in (LIVE_VERSION, OTHER_VERSION):
        record = stack.json("push", version)
        assert record["repository"] == stack.registry
        # the session's builds are the cpu variant: pushed as `<version>-cpu`
        assert client_for(registry, stack.registry).tag_digest(f"{version}-cpu") == record["digest"]
    if registry.issuer is not None:  # the engine itself fetched push tokens for this repository
        name = stack.registry.split("/", 1)[1]
        assert any(a["name"] == name and "push" in a["actions"] for c in registry.issuer.issued for a in c["access"])


def test_verify_checks_the_tag_through_auth(stack):
    report = stack.json("verify", OTHER_VERSION, "--no-start")
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["registry"]["ok"] and checks["image"]["ok"], checks


def test_switch_and_rollback(stack):
    up = stack.run("up", LIVE_VERSION, "--json")
    assert up.returncode == 0, up.stderr[-2000:]
    assert stack.edge_version() == LIVE_VERSION
    switched = stack.run("switch", OTHER_VERSION, "--json")
    assert switched.returncode == 0, switched.stderr[-2000:]
    assert stack.edge_version() == OTHER_VERSION
    back = stack.run("rollback", "--json")
    assert back.returncode == 0, back.stderr[-2000:]
    assert stack.edge_version() == LIVE_VERSION
    assert stack.live().version == LIVE_VERSION


def test_backup_restore_push_then_pull_through_auth(registry, engine, tmp_path):
    """restore --push sends the restored image up with the credentials; `verify` pulls it back."""
    repository = f"{registry.host}/aads-flow-backup-{secrets.token_hex(3)}"
    host = Host(root=tmp_path, client=engine, registry=repository)
    write_config(tmp_path, repository, (OTHER_VERSION,))
    image_id = import_small_image(engine, OTHER_VERSION, host.versions_dir / OTHER_VERSION)
    host.images.append(image_id)
    try:
        from orchestrator.ledger import Ledger
        from serving.manifest import manifest_sha256
        ledger = Ledger(host.state_dir)
        ledger.record_build(version=OTHER_VERSION, variant="cpu", image_id=image_id,
                            manifest_sha256=manifest_sha256(host.versions_dir / OTHER_VERSION), git_commit="test",
                            size_bytes=6 << 20, golden=[])
        ledger.close()
        archive = host.create(OTHER_VERSION)["archive"]
        host.remove_image(image_id)
        host.forget(OTHER_VERSION)

        r = host.run("backup", "restore", archive, "--push", "--json", env=registry.env)
        assert r.returncode == 0, r.stderr[-2000:]
        restored = json.loads(r.stdout)
        assert restored["origin"] == "push"
        assert client_for(registry, repository).tag_digest(f"{OTHER_VERSION}-cpu") == restored["registry_digest"]

        # The engine pulls it back with the same credentials (verify pulls a missing image).
        host.remove_image(image_id)
        v = host.run("verify", OTHER_VERSION, "--no-start", "--json", env=registry.env)
        checks = {c["name"]: c for c in json.loads(v.stdout)["checks"]}
        assert checks["registry"]["ok"], checks
        assert checks["image"]["ok"] and "pulled from the registry" in checks["image"]["detail"], checks
    finally:
        for i in host.images:
            host.remove_image(i)


def workflow_steps(*prefixes: str) -> list[tuple[str, str]]:
    """(name, run script) of the release workflow's steps whose names start with `prefixes`, in order."""
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "release.yml").read_text())
    steps = [s for s in workflow["jobs"]["release"]["steps"] if "run" in s]
    return [(p, next(s["run"] for s in steps if s["name"].startswith(p))) for p in prefixes]


def test_release_workflow_logs_in_pushes_and_verifies(registry, fault_session, tmp_path):
    """The workflow's own login, push and verify steps, run as CI runs them (secrets as env)."""
    state = tmp_path / "state"
    copy_ledger(fault_session.state_dir, state)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AADS_", "DOCKER_CONFIG"))}
    env.update(VERSION=LIVE_VERSION, AADS_REGISTRY=f"{registry.host}/aads-ci-{secrets.token_hex(3)}",
               AADS_STATE_DIR=str(state), RUNNER_TEMP=str(tmp_path), HF_HUB_OFFLINE="1", PYTHON=sys.executable,
               PYTHONPATH=str(REPO), DOCKER_CONFIG=str(tmp_path / "docker-config"),
               REGISTRY_USERNAME=USER, REGISTRY_PASSWORD=PASSWORD, REGISTRY_CA_CERT=registry.ca.cert.read_text())
    outputs = {}
    for name, script in workflow_steps("Log in to the registry", "Push", "Verify"):
        # The session built the cpu variant only: run the steps' cpu lines (the CUDA image's build,
        # push and verify are tests/integration/test_variant_images.py's).
        script = "\n".join(line for line in script.splitlines() if "--variant cuda" not in line)
        r = subprocess.run(["bash", "-e", "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0, f"step {name!r}: rc {r.returncode}: {r.stderr[-2000:]}"
        outputs[name] = r.stdout
    login = outputs["Log in to the registry"]
    assert f"registry {registry.host}: ok over TLS" in login and f"user {USER!r}" in login, login
    pushed = json.loads((tmp_path / "push-cpu.json").read_text())
    assert pushed["image_ref"].startswith(env["AADS_REGISTRY"] + "@sha256:")
    assert client_for(registry, env["AADS_REGISTRY"]).tag_digest(f"{LIVE_VERSION}-cpu") == pushed["digest"]
