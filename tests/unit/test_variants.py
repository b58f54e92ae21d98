"""Variant-aware tags and targets without an engine: the plain tag is the CUDA image, `-cpu` the CPU
one; each target picks its variant (compose: auto by the GPU check; Kubernetes: its overlay); the
ledger, resolve and `list` keep the variants apart."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestrator import config
from orchestrator.backends.compose import ComposeBackend
from orchestrator.cli import main
from orchestrator.context import Context
from orchestrator.errors import UsageError
from orchestrator.ledger import Ledger
from orchestrator.resolve import resolve
from orchestrator.variants import compose_variant, deployment_variant, registry_tag, staging_tag
from serving.manifest import manifest_sha256
from tests.unit.test_versions_cli import project  # noqa: F401  (the same scratch project)

REPO = Path(__file__).resolve().parents[2]
V = "v5.5.4-dinov3"
KUBECTL = shutil.which("kubectl")


def record(led: Ledger, project: Path, variant: str, n: str):
    b = led.record_build(version=V, variant=variant, image_id="sha256:" + n * 64,
                         manifest_sha256=manifest_sha256(project / "versions" / V), git_commit="x", size_bytes=1,
                         golden=[])
    return b, led.record_push(version=V, build_id=b.id, repository="127.0.0.1:1/aads-unit",
                              tag=registry_tag(V, variant), digest="sha256:" + (chr(ord(n) + 1)) * 64)


def test_the_plain_tag_is_the_cuda_image():
    assert registry_tag(V, "cuda") == V
    assert registry_tag(V, "cpu") == f"{V}-cpu"
    assert staging_tag(V, "cuda") == f"staging-{V}" and staging_tag(V, "cpu") == f"staging-{V}-cpu"
    with pytest.raises(UsageError, match="unknown variant"):
        registry_tag(V, "rocm")


def test_compose_variant_auto_follows_the_gpu_check():
    assert compose_variant("auto", gpu_seen=False)[0] == "cpu"
    assert compose_variant("auto", gpu_seen=True)[0] == "cuda"
    assert compose_variant("cpu", gpu_seen=True)[0] == "cpu"
    assert compose_variant("cuda", gpu_seen=False)[0] == "cuda"
    assert "no GPU" in compose_variant("auto", gpu_seen=False)[1]


def test_the_compose_target_reads_variant_and_refuses_others(tmp_path):
    f = tmp_path / "orchestrator.yaml"
    f.write_text("targets:\n  local: {kind: compose, variant: cpu}\n  bad: {kind: compose, variant: gpu}\n")
    cfg = config.load(f, env={})
    assert cfg.target("local")[1].variant == "cpu"
    assert config.load(tmp_path / "orchestrator.yaml", env={"AADS_TARGET_LOCAL_VARIANT": "cuda"}).target("local")[1] \
        .variant == "cuda"
    with pytest.raises(config.ConfigError, match="variant"):
        cfg.target("bad")


def test_compose_backend_auto_is_cpu_without_a_gpu(project, monkeypatch):
    ctx = Context()
    name, spec = ctx.config.target("local")
    assert spec.variant == "auto"
    backend = ComposeBackend(ctx, name, spec)
    monkeypatch.setattr("orchestrator.backends.compose.gpu_room.gpu_memory", lambda: None)
    assert backend.variant == "cpu"
    monkeypatch.setattr("orchestrator.backends.compose.gpu_room.gpu_memory", lambda: (80_000, 81_000))
    assert ComposeBackend(ctx, name, spec).variant == "cuda"


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay,variant", [("gpu", "cuda"), ("cpu", "cpu")])
def test_a_kubernetes_target_takes_the_variant_of_its_overlay(overlay, variant):
    out = subprocess.run([KUBECTL, "kustomize", str(REPO / "k8s" / "overlays" / overlay)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    deployment = next(d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Deployment")
    assert deployment_variant("auto", deployment, "serving")[0] == variant
    assert deployment_variant("cpu", deployment, "serving")[0] == "cpu"


def test_push_records_and_resolve_keep_variants_apart(project):
    led = Ledger(project / "state")
    _, cpu = record(led, project, "cpu", "1")
    ctx = Context()
    assert cpu.variant == "cpu" and cpu.tag == f"{V}-cpu"
    assert resolve(ctx, V, variant="cpu", check_registry=False).digest == cpu.digest
    with pytest.raises(UsageError, match=f"cuda variant of {V} is not built.*--variant cuda"):
        resolve(ctx, V, variant="cuda", check_registry=False)
    _, cuda = record(led, project, "cuda", "3")
    d = resolve(ctx, V, variant="cuda", check_registry=False)
    assert (d.variant, d.digest, d.push.tag) == ("cuda", cuda.digest, V)
    assert resolve(ctx, V, variant="cpu", check_registry=False).digest == cpu.digest


def test_list_shows_each_variant(project, capsys):
    led = Ledger(project / "state")
    _, cpu = record(led, project, "cpu", "1")
    assert main(["list", "--json"]) == 0
    rows = {r["version"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[V]["variants"]["cpu"]["state"] == "pushed"
    assert rows[V]["variants"]["cpu"]["tag"] == f"{V}-cpu"
    assert rows[V]["variants"]["cpu"]["push"]["digest"] == cpu.digest
    assert rows[V]["variants"]["cuda"] == {"tag": V, "state": None, "build": None, "push": None}
    led.record_build(version=V, variant="cuda", image_id="sha256:" + "7" * 64,
                     manifest_sha256=manifest_sha256(project / "versions" / V), git_commit="x", size_bytes=1,
                     golden=[])
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[0], next(line for line in out.splitlines() if line.startswith(V))
    assert header.split()[-2:] == ["CUDA", "CPU"]
    assert "built 777777777777" in row and f"pushed {cpu.digest[:19]}" in row


def test_a_version_named_like_a_variant_tag_is_refused(project, capsys):
    code = main(["new-version", f"{V}-cpu", "--from", V])
    err = capsys.readouterr().err
    assert code == 2 and "tag suffix of the cpu variant" in err
    assert not (project / "versions" / f"{V}-cpu").exists()


def test_push_of_a_missing_variant_names_the_build_to_run(project, capsys):
    led = Ledger(project / "state")
    record(led, project, "cpu", "1")
    code = main(["push", V, "--variant", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and f"orchestrator build {V} --variant cuda" in err


def test_list_flags_a_cpu_image_under_the_plain_tag(project, capsys):
    """A ledger from before variant tags: its CPU push took the CUDA image's tag."""
    led = Ledger(project / "state")
    b = led.record_build(version=V, variant="cpu", image_id="sha256:" + "1" * 64,
                         manifest_sha256=manifest_sha256(project / "versions" / V), git_commit="x", size_bytes=1,
                         golden=[])
    led.record_push(version=V, build_id=b.id, repository="127.0.0.1:1/aads-unit", tag=V, digest="sha256:" + "2" * 64)
    assert main(["list", "--json"]) == 0
    rows = {r["version"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[V]["misplaced_tags"] == [f"{V} holds the cpu image sha256:{'2' * 12}"]
    assert main(["list"]) == 0
    assert "delete that tag in the registry" in capsys.readouterr().out


def test_a_compose_switch_resolves_the_variant_it_deploys_and_says_so(project, monkeypatch, capsys):
    monkeypatch.setenv("AADS_TARGET_LOCAL_IMAGE_SOURCE", "local")  # no registry to ask in a unit test
    monkeypatch.setattr("orchestrator.backends.compose.gpu_room.gpu_memory", lambda: None)
    led = Ledger(project / "state")
    _, cpu = record(led, project, "cpu", "1")
    _, cuda = record(led, project, "cuda", "3")  # pushed later: "latest push" alone would pick it
    ctx = Context()
    backend = ComposeBackend(ctx, *ctx.config.target("local"))
    cand = backend.resolve(V)
    assert (cand.deployable.variant, cand.digest) == ("cpu", cpu.digest)
    assert "target local deploys the cpu variant (variant: auto, no GPU visible)" in capsys.readouterr().err
    monkeypatch.setenv("AADS_TARGET_LOCAL_VARIANT", "cuda")
    ctx = Context()
    assert ComposeBackend(ctx, *ctx.config.target("local")).resolve(V).digest == cuda.digest
