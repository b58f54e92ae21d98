"""The CUDA image is the version: both variants built, tagged, pushed and checked on the real engine.

The session pushes the CPU variant (`conftest.built_versions`); this module builds the CUDA
variant of one version once (torch's CUDA build from the package index: its layers stay cached on
the engine, a cold build takes minutes, see docs/benchmarks.md) and checks what can be checked
without a GPU: labels, `torch.version.cuda` inside, a read-only root as the non-root user, ready
on CPU (the CUDA build of torch falls back to it), and the CPU variant's decisions on the golden
set. Then both variants go to a registry repository of their own under their own tags, as the
release workflow pushes them, and each verifies.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
import requests
import yaml

from orchestrator import golden
from orchestrator.engine import probe_container
from orchestrator.probe import wait_ready
from orchestrator.registry import RegistryClient
from tests.integration.conftest import TEST_LABEL
from tests.integration.test_images import copy_state

pytestmark = pytest.mark.engine

VERSION = "v5.5.3-performance"


def test_the_cpu_push_takes_the_cpu_tag_never_the_plain_one(built_versions):
    registry = RegistryClient(built_versions.repository)
    for version in built_versions:
        push = built_versions[version]["push"]
        assert (push["variant"], push["tag"]) == ("cpu", f"{version}-cpu")
        assert registry.tag_digest(f"{version}-cpu") == push["digest"]
        # the plain tag is the CUDA image's: a CPU push never takes it
        assert registry.tag_digest(version) != push["digest"]


# One local tag keeps the suite's CUDA image (and so its 5 GB layers) cached between runs.
CACHE_TAG = ("aads-test-cuda-cache", "latest")


@pytest.fixture(scope="module")
def cuda(built_versions, run_cli, tmp_path_factory, engine):
    """The CUDA variant of VERSION, built once, in a state dir and registry repository of its own."""
    root = tmp_path_factory.mktemp("cuda")
    config = yaml.safe_load(Path(built_versions.config_file).read_text())
    config["state_dir"] = str(root / "state")
    config["registry"] = f"{built_versions.repository}-rel{secrets.token_hex(2)}"
    copy_state(built_versions.state_dir, root / "state")
    (root / "orchestrator.yaml").write_text(yaml.safe_dump(config))
    env = {**built_versions.env, "AADS_CONFIG": str(root / "orchestrator.yaml")}
    build = json.loads(run_cli("build", VERSION, "--variant", "cuda", "--label", TEST_LABEL, "--json",
                               env=env).stdout)
    yield {"env": env, "build": build, "repository": config["registry"]}
    engine.images.get(build["image_id"]).tag(*CACHE_TAG)
    for image in engine.images.list():
        for tag in image.tags:
            if tag.startswith(config["registry"] + ":"):
                engine.api.remove_image(tag, noprune=False)


def test_the_cuda_image_carries_its_labels_and_cuda_torch(cuda, engine):
    image = engine.images.get(cuda["build"]["image_id"])
    labels = image.labels
    assert cuda["build"]["variant"] == "cuda"
    assert labels["aads.variant"] == "cuda" and labels["aads.version"] == VERSION
    assert image.attrs["Config"]["User"] == "10001:10001"
    out = engine.containers.run(image.id, ["python", "-c", "import torch; print(torch.version.cuda or '')"],
                                remove=True, read_only=True, tmpfs={"/tmp": "rw,size=64m"})
    assert out.decode().strip(), "torch inside the CUDA image has no CUDA version: it is a CPU build"


def test_the_cuda_image_runs_read_only_non_root_and_ready_on_cpu(cuda, engine):
    with probe_container(engine, cuda["build"]["image_id"], name_prefix="aads-test-cuda") as probe:
        wait_ready(probe.base_url, 300, abort=probe.problem)
        assert probe.container.attrs["HostConfig"]["ReadonlyRootfs"] is True
        assert probe.container.exec_run(["id", "-u"]).output.decode().strip() == "10001"
        facts = requests.get(f"{probe.base_url}/v1/version", timeout=10).json()
        assert facts["version"] == VERSION


def test_the_cuda_image_decides_as_the_cpu_image(cuda, built_versions):
    cpu_golden = built_versions[VERSION]["build"]["golden"]
    assert len(cuda["build"]["golden"]) == len(cpu_golden) == len(golden.golden_images())
    assert golden.compare(cpu_golden, cuda["build"]["golden"]) == []


def test_both_variants_push_under_their_own_tags_and_verify(cuda, run_cli):
    """The release workflow's steps: push CUDA (the plain tag) and CPU (`-cpu`), verify each."""
    env = cuda["env"]
    pushed = {v: json.loads(run_cli("push", VERSION, "--variant", v, "--json", env=env).stdout) for v in ("cuda", "cpu")}
    registry = RegistryClient(cuda["repository"])
    assert pushed["cuda"]["tag"] == VERSION and pushed["cpu"]["tag"] == f"{VERSION}-cpu"
    assert registry.tag_digest(VERSION) == pushed["cuda"]["digest"]
    assert registry.tag_digest(f"{VERSION}-cpu") == pushed["cpu"]["digest"]
    assert pushed["cuda"]["digest"] != pushed["cpu"]["digest"]
    rows = {r["version"]: r for r in json.loads(run_cli("list", "--json", env=env).stdout)}
    assert {v: rows[VERSION]["variants"][v]["state"] for v in ("cuda", "cpu")} == {"cuda": "pushed", "cpu": "pushed"}
    for variant in ("cuda", "cpu"):
        report = json.loads(run_cli("verify", VERSION, "--variant", variant, "--no-start", "--json", env=env).stdout)
        assert report["ok"] and report["variant"] == variant, report
    # verify without --variant checks the version's image: the CUDA one (started and smoke-tested above)
    report = json.loads(run_cli("verify", VERSION, "--no-start", "--json", env=env).stdout)
    assert report["ok"] and report["variant"] == "cuda" and report["digest"] == pushed["cuda"]["digest"], report
