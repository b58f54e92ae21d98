"""`resolve`: from a version to the image a switch deploys, refusing a registry tag that moved or is gone.

The registry is tests/k8s_double/registry.py (answers the tag -> digest question over real HTTP);
the ledger is a real one in a temporary state dir.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from orchestrator.context import Context
from orchestrator.errors import RegistryError, TamperError, UsageError
from orchestrator.resolve import resolve
from tests.k8s_double.registry import RegistryDouble

ROOT = Path(__file__).resolve().parents[2]
VERSION = "v5.5.4-dinov3"
NAME = "aads-ulora"


def digest(text: str) -> str:
    return "sha256:" + (text.encode().hex() * 8)[:64]


@pytest.fixture
def registry():
    double = RegistryDouble().start()
    yield double
    double.stop()


@pytest.fixture
def ctx(tmp_path, registry):
    repo = f"{registry.host}/{NAME}"
    (tmp_path / "orchestrator.yaml").write_text(yaml.safe_dump({
        "registry": repo, "state_dir": "state", "versions_dir": str(ROOT / "versions")}))
    context = Context(config_path=str(tmp_path / "orchestrator.yaml"))
    yield context
    context.ledger.close()


def push(ctx: Context, registry: RegistryDouble, version: str = VERSION, origin_tag: str | None = None):
    repo = f"{registry.host}/{NAME}"
    build = ctx.ledger.record_build(version=version, variant="cpu", image_id=digest("image " + version),
                                    manifest_sha256="0" * 64, git_commit=None, size_bytes=None, golden=[])
    tag = origin_tag or version
    ctx.ledger.record_push(version=version, build_id=build.id, repository=repo, tag=tag, digest=digest(version))
    registry.tags[(NAME, tag)] = digest(version)
    return repo


def test_the_pushed_digest_resolves_when_the_tag_still_points_at_it(ctx, registry):
    repo = push(ctx, registry)
    dep = resolve(ctx, VERSION)
    assert dep.version == VERSION and dep.digest == digest(VERSION)
    assert dep.image_ref == f"{repo}@{digest(VERSION)}"
    assert dep.build.image_id == digest("image " + VERSION)
    assert dep.push == ctx.ledger.latest_push(VERSION) and dep.build == ctx.ledger.build(dep.push.build_id)


def test_a_moved_tag_is_refused_as_tampering(ctx, registry):
    push(ctx, registry)
    registry.tags[(NAME, VERSION)] = digest("someone else's image")
    with pytest.raises(TamperError) as refused:
        resolve(ctx, VERSION)
    message = str(refused.value)
    assert "moved to " + digest("someone else's image") in message and digest(VERSION) in message
    assert "refusing to deploy" in message


def test_a_deleted_tag_is_refused(ctx, registry):
    push(ctx, registry)
    del registry.tags[(NAME, VERSION)]
    with pytest.raises(TamperError, match=rf"{NAME}:{VERSION} is gone \(recorded {digest(VERSION)}\)"):
        resolve(ctx, VERSION)


def test_the_registry_is_not_asked_when_the_check_is_off(ctx, registry):
    push(ctx, registry)
    registry.tags[(NAME, VERSION)] = digest("moved")
    assert resolve(ctx, VERSION, check_registry=False).digest == digest(VERSION)


def test_an_unreachable_registry_is_a_registry_error_not_a_pass(ctx, registry):
    push(ctx, registry)
    registry.stop()
    with pytest.raises(RegistryError, match="unreachable"):
        resolve(ctx, VERSION)


def test_the_newest_push_is_the_one_checked(ctx, registry):
    push(ctx, registry)
    build = ctx.ledger.latest_build(VERSION)
    ctx.ledger.record_push(version=VERSION, build_id=build.id, repository=f"{registry.host}/{NAME}", tag=VERSION,
                           digest=digest("second push"))
    with pytest.raises(TamperError, match="moved to"):
        resolve(ctx, VERSION)  # the tag still names the first push: the ledger's newest differs
    registry.tags[(NAME, VERSION)] = digest("second push")
    assert resolve(ctx, VERSION).digest == digest("second push")


@pytest.mark.parametrize("version, message", [
    ("v9.9.9-nothing", "unknown version v9.9.9-nothing: no folder"),
    ("not-a-version", "not-a-version"),
])
def test_unknown_or_malformed_versions_are_usage_errors(ctx, version, message):
    with pytest.raises(UsageError, match=message):
        resolve(ctx, version)


def test_built_but_not_pushed_and_not_built_say_what_to_run(ctx):
    with pytest.raises(UsageError, match=rf"is not built: run `orchestrator build {VERSION}`"):
        resolve(ctx, VERSION)
    ctx.ledger.record_build(version=VERSION, variant="cpu", image_id=digest("image"), manifest_sha256="0" * 64,
                            git_commit=None, size_bytes=None, golden=[])
    with pytest.raises(UsageError, match=rf"built but not pushed: run `orchestrator push {VERSION}`"):
        resolve(ctx, VERSION)


def test_a_push_recorded_by_a_local_restore_is_not_checked_against_the_registry(ctx, registry):
    """An air-gapped host restored the image from a backup: no registry holds the tag, nothing to compare."""
    build = ctx.ledger.record_build(version=VERSION, variant="cpu", image_id=digest("image"), manifest_sha256="0" * 64,
                                    git_commit=None, size_bytes=None, golden=[])
    ctx.ledger.record_push(version=VERSION, build_id=build.id, repository=f"{registry.host}/{NAME}", tag=VERSION,
                           digest=digest(VERSION), origin="restore-local")
    assert (NAME, VERSION) not in registry.tags
    assert resolve(ctx, VERSION).digest == digest(VERSION)
    ctx.ledger.record_push(version=VERSION, build_id=build.id, repository=f"{registry.host}/{NAME}", tag=VERSION,
                           digest=digest(VERSION), origin="push")
    with pytest.raises(TamperError, match="is gone"):  # a normal push is checked
        resolve(ctx, VERSION)


def record(ctx: Context, registry: RegistryDouble, variant: str, pushed: bool = True) -> str:
    """A build (and push, under its own tag) of VERSION's `variant`; the pushed digest."""
    build = ctx.ledger.record_build(version=VERSION, variant=variant, image_id=digest(f"image {variant}"),
                                    manifest_sha256="0" * 64, git_commit=None, size_bytes=None, golden=[])
    if pushed:
        tag = f"{VERSION}-{variant}"
        ctx.ledger.record_push(version=VERSION, build_id=build.id, repository=f"{registry.host}/{NAME}", tag=tag,
                               digest=digest(variant))
        registry.tags[(NAME, tag)] = digest(variant)
    return digest(variant)


def test_each_variant_resolves_to_its_own_push(ctx, registry):
    cpu, cuda = record(ctx, registry, "cpu"), record(ctx, registry, "cuda")
    for variant, pushed in (("cpu", cpu), ("cuda", cuda)):
        dep = resolve(ctx, VERSION, variant=variant)
        assert (dep.variant, dep.digest, dep.push.variant, dep.build.variant) == (variant, pushed, variant, variant)
    assert resolve(ctx, VERSION).variant == "cuda"  # no variant named: the latest push of any


def test_a_missing_variant_says_which_and_what_to_run(ctx, registry):
    record(ctx, registry, "cpu")
    with pytest.raises(UsageError) as refused:
        resolve(ctx, VERSION, variant="cuda")  # the cpu variant is pushed, not this one
    assert str(refused.value) == (f"the cuda variant of {VERSION} is not built: run `orchestrator build {VERSION} "
                                  f"--variant cuda` then `orchestrator push {VERSION} --variant cuda`")
    record(ctx, registry, "cuda", pushed=False)
    with pytest.raises(UsageError) as refused:
        resolve(ctx, VERSION, variant="cuda")
    assert str(refused.value) == (f"the cuda variant of {VERSION} is built but not pushed: "
                                  f"run `orchestrator push {VERSION} --variant cuda`")


def test_no_variant_named_and_nothing_built_names_the_version(ctx):
    with pytest.raises(UsageError) as refused:
        resolve(ctx, VERSION)
    assert str(refused.value) == (f"version {VERSION} is not built: run `orchestrator build {VERSION}` "
                                  f"then `orchestrator push {VERSION}`")


def test_the_tag_check_uses_the_configured_registry_credentials(tmp_path, registry, monkeypatch):
    # The registry asks for credentials; only orchestrator.yaml's `registries.<host>.credentials_file` has them.
    for name in ("AADS_REGISTRY_USERNAME", "AADS_REGISTRY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    creds = tmp_path / "registry-credentials.json"
    creds.write_text(json.dumps({"registry": registry.host, "username": "deployer", "password": "s3cret"}))
    creds.chmod(0o600)
    registry.basic_auth = "Basic " + base64.b64encode(b"deployer:s3cret").decode()
    (tmp_path / "orchestrator.yaml").write_text(yaml.safe_dump({
        "registry": f"{registry.host}/{NAME}", "state_dir": "state", "versions_dir": str(ROOT / "versions"),
        "registries": {registry.host: {"credentials_file": creds.name}}}))
    context = Context(config_path=str(tmp_path / "orchestrator.yaml"))
    try:
        push(context, registry)
        assert resolve(context, VERSION).digest == digest(VERSION)
        registry.tags[(NAME, VERSION)] = digest("moved")
        with pytest.raises(TamperError, match="moved to"):  # asked with the credentials, answered
            resolve(context, VERSION)
    finally:
        context.ledger.close()
