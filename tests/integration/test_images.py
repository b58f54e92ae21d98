"""Images on the real engine and the real local registry: build, push, verify, labels, non-root,
read-only root, a moved tag refused, and kills midway that leave the ledger whole."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from orchestrator.engine import probe_container
from orchestrator.ledger import LEDGER_FILE
from orchestrator.probe import wait_ready
from serving.manifest import load_manifest, manifest_sha256
from tests.integration.conftest import REPO, TEST_LABEL, VERSIONS

pytestmark = pytest.mark.engine


def ledger_rows(state_dir: Path, table: str) -> list[dict]:
    db = sqlite3.connect(Path(state_dir) / LEDGER_FILE)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY id")]
    finally:
        db.close()


def copy_state(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    a, b = sqlite3.connect(Path(src) / LEDGER_FILE), sqlite3.connect(dst / LEDGER_FILE)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()


def scratch_env(built, tmp_path: Path, repository: str | None = None) -> dict[str, str]:
    """A config of its own (copy of the session ledger, optional other repository)."""
    config = yaml.safe_load(Path(built.config_file).read_text())
    config["state_dir"] = str(tmp_path / "state")
    if repository:
        config["registry"] = repository
    copy_state(built.state_dir, tmp_path / "state")
    (tmp_path / "orchestrator.yaml").write_text(yaml.safe_dump(config))
    return {**built.env, "AADS_CONFIG": str(tmp_path / "orchestrator.yaml")}


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, "expected an error on stderr"
    assert lines[-1].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[-1]


# ---- build + push + verify -------------------------------------------------------------------
def test_both_versions_build_push_and_verify(built_versions, run_cli):
    for version in VERSIONS:
        rec = built_versions[version]
        assert rec["build"]["variant"] == "cpu"
        assert rec["build"]["manifest_sha256"] == manifest_sha256(REPO / "versions" / version)
        assert len(rec["build"]["golden"]) == 8
        assert rec["push"]["digest"].startswith("sha256:")
        assert rec["push"]["repository"] == built_versions.repository
        report = json.loads(run_cli("verify", version, "--json").stdout)
        assert report["ok"], report
        assert [c["name"] for c in report["checks"]] == ["registry", "image", "labels", "user", "ready", "version",
                                                           "golden"]


def test_list_and_show_report_the_records(built_versions, run_cli):
    rows = {r["version"]: r for r in json.loads(run_cli("list", "--json").stdout)}
    for version in VERSIONS:
        assert rows[version]["state"] == "pushed"
        assert rows[version]["push"]["digest"] == built_versions[version]["push"]["digest"]
    shown = json.loads(run_cli("show", "v5.5.4-dinov3", "--json").stdout)
    assert shown["manifest"]["fallback"] == "v5.5.3-performance"
    assert shown["builds"][-1]["image_id"] == built_versions["v5.5.4-dinov3"]["build"]["image_id"]


def test_labels_match_the_manifests(built_versions, engine):
    for version in VERSIONS:
        image = engine.images.get(built_versions.image_ref(version))
        labels = image.labels
        manifest = load_manifest(REPO / "versions" / version)
        assert labels["aads.version"] == version
        key, value = TEST_LABEL.split("=")
        assert labels[key] == value  # the suite's own --label reached the image
        assert labels["org.opencontainers.image.version"] == version
        assert labels["aads.manifest-sha256"] == manifest_sha256(REPO / "versions" / version)
        assert labels["aads.backbone"] == f"{manifest.backbone.family}:{manifest.backbone.model_id}"
        for key in ("revision", "created", "source"):
            assert labels[f"org.opencontainers.image.{key}"] not in ("", "unknown")
        config = image.attrs["Config"]
        assert config["User"] == "10001:10001"
        assert "/ready" in " ".join(config["Healthcheck"]["Test"])
        env = dict(e.split("=", 1) for e in config["Env"])
        assert env["HF_HUB_OFFLINE"] == "1" and env["NVIDIA_VISIBLE_DEVICES"] == "all"


def test_versions_share_all_but_their_own_layers(built_versions, engine):
    """OS + Python deps + app code are common; only manifest + models differ."""
    a, b = (engine.images.get(built_versions.image_ref(v)).attrs["RootFS"]["Layers"] for v in VERSIONS)
    common = 0
    for x, y in zip(a, b):
        if x != y:
            break
        common += 1
    assert len(a) - common <= 2 and len(b) - common <= 2, (len(a), len(b), common)


def test_runs_non_root_on_a_read_only_root(built_versions, engine):
    ref = built_versions.image_ref("v5.5.3-performance")
    with probe_container(engine, ref, name_prefix="aads-test-ro") as probe:
        wait_ready(probe.base_url, 300, abort=probe.problem)
        assert probe.container.attrs["HostConfig"]["ReadonlyRootfs"] is True
        uid = probe.container.exec_run(["id", "-u"]).output.decode().strip()
        assert uid == "10001"
        wrote = probe.container.exec_run(["python", "-c", "open('/app/x', 'w')"])
        assert wrote.exit_code != 0 and b"Read-only file system" in wrote.output
        assert requests.get(f"{probe.base_url}/v1/version", timeout=10).json()["version"] == "v5.5.3-performance"


def test_no_change_rebuild_is_a_cache_hit(built_versions, run_cli, tmp_path):
    """Two builds in a row with nothing changed give the same image id (every step cached), and
    the second reuses the golden outputs recorded for that very image instead of starting it."""
    env = scratch_env(built_versions, tmp_path)
    version = "v5.5.3-performance"
    first = json.loads(run_cli("build", version, "--variant", "cpu", "--json", env=env).stdout)
    again = run_cli("build", version, "--variant", "cpu", "--json", env=env)
    assert json.loads(again.stdout)["image_id"] == first["image_id"]
    assert "reused" in again.stderr
    assert json.loads(again.stdout)["golden"] == first["golden"]


# ---- a tag never moves -----------------------------------------------------------------------
def test_moved_tag_is_refused_by_push_and_caught_by_verify(built_versions, engine, tmp_path):
    repo = built_versions.repository + "-moved"
    env = scratch_env(built_versions, tmp_path, repository=repo)
    cli = [sys.executable, "-m", "orchestrator"]
    # v5.5.3 pushed properly to the scratch repository ...
    ok = subprocess.run([*cli, "push", "v5.5.3-performance", "--json"], env=env, capture_output=True, text=True,
                        cwd=REPO, timeout=900)
    assert ok.returncode == 0, ok.stderr
    pushes_before = ledger_rows(tmp_path / "state", "pushes")
    # ... then someone points its tag at the v5.5.4 image behind the orchestrator's back
    other = engine.images.get(built_versions["v5.5.4-dinov3"]["build"]["image_id"])
    tag = "v5.5.3-performance-cpu"  # the CPU variant's tag (the plain one is the CUDA image's)
    assert json.loads(ok.stdout)["tag"] == tag
    other.tag(repo, tag=tag)
    try:
        for line in engine.api.push(repo, tag=tag, stream=True, decode=True):
            assert "error" not in line, line
        verify = subprocess.run([*cli, "verify", "v5.5.3-performance", "--no-start"], env=env, capture_output=True,
                                text=True, cwd=REPO, timeout=300)
        assert verify.returncode == 4  # tampering, as push and switch say it (a failing check is 6)
        assert "moved" in one_error_line(verify)
        # a fresh build record for v5.5.4 pushed as v5.5.3's tag would be refused the same way
        pushed = subprocess.run([*cli, "push", "v5.5.3-performance"], env=env, capture_output=True, text=True,
                                cwd=REPO, timeout=900)
        # the ledger's push still matches the build, but the registry tag moved: refused, not re-recorded
        assert pushed.returncode == 4, pushed.stderr
        assert "refusing to move a pushed tag" in one_error_line(pushed)
        assert ledger_rows(tmp_path / "state", "pushes") == pushes_before
    finally:
        for name in (tag, f"staging-{tag}"):
            try:
                engine.api.remove_image(f"{repo}:{name}", noprune=True)
            except Exception:
                pass


# ---- kills midway leave nothing half-written -------------------------------------------------
def _kill_when(proc: subprocess.Popen, condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the command ended before the kill (exit {proc.returncode}): {proc.stderr.read()}")
        if condition():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            return
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the condition to kill never came")


def test_build_killed_midway_records_nothing(built_versions, engine, tmp_path):
    """SIGKILL once during the docker build and once while the golden outputs are being recorded
    (the ledger write would come next): the ledger is as it was both times."""
    env = scratch_env(built_versions, tmp_path)
    version = "v5.5.4-dinov3"
    # Forget this version's records in the scratch ledger, so the build must start its image again.
    db = sqlite3.connect(tmp_path / "state" / LEDGER_FILE)
    with db:
        db.execute("DELETE FROM pushes WHERE version = ?", (version,))
        db.execute("DELETE FROM builds WHERE version = ?", (version,))
    db.close()
    before = ledger_rows(tmp_path / "state", "builds")
    context = tmp_path / "build" / "context" / f"{version}-cpu"

    def building():  # the context is assembled: the docker build is running
        return context.is_dir()

    def probing():  # docker build done, golden outputs being recorded: a probe of this version runs
        return any(c.labels.get("aads.version") == version
                   for c in engine.containers.list(filters={"label": "aads.probe=1"}))

    try:
        for condition in (building, probing):
            shutil.rmtree(context, ignore_errors=True)
            proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "build", version, "--variant", "cpu"],
                                    env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            _kill_when(proc, condition, 600)
            assert ledger_rows(tmp_path / "state", "builds") == before, condition.__name__
    finally:
        for c in engine.containers.list(all=True, filters={"label": "aads.probe=1"}):
            if c.labels.get("aads.version") == version and c.name.startswith("aads-build-probe"):
                c.remove(force=True)


def test_push_killed_midway_records_nothing(built_versions, engine, tmp_path):
    """A registry of our own on a free port (empty storage, so the push uploads for a while)."""
    from orchestrator.engine import free_port

    port = free_port()
    storage = tmp_path / "registry"
    (storage / "data").mkdir(parents=True)
    (storage / "config.yml").write_text(yaml.safe_dump({
        "version": 0.1, "log": {"level": "error"},
        "storage": {"filesystem": {"rootdirectory": str(storage / "data")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }))
    registry = subprocess.Popen(["docker-registry", "serve", str(storage / "config.yml")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.2)
        env = scratch_env(built_versions, tmp_path, repository=f"127.0.0.1:{port}/aads-kill")
        before = ledger_rows(tmp_path / "state", "pushes")

        def uploading():  # some blob data arrived in the registry's storage
            return any(p.is_file() and p.stat().st_size > 1_000_000 for p in (storage / "data").rglob("*"))

        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "push", "v5.5.3-performance"], env=env,
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _kill_when(proc, uploading, 300)
        assert ledger_rows(tmp_path / "state", "pushes") == before
        # the registry never got the variant's tag either
        r = requests.get(f"http://127.0.0.1:{port}/v2/aads-kill/tags/list", timeout=5)
        if r.status_code == 404:  # no tag at all: the registry names the repository unknown
            assert r.json()["errors"][0]["code"] == "NAME_UNKNOWN", r.text
        else:
            assert r.status_code == 200, r.text
            assert "v5.5.3-performance-cpu" not in (r.json().get("tags") or [])
    finally:
        registry.terminate()
        registry.wait(10)
        for image in engine.images.list():
            for tag in image.tags:
                if tag.startswith(f"127.0.0.1:{port}/"):
                    engine.api.remove_image(tag, noprune=True)


# ---- bad input on the real engine -------------------------------------------------------------
def test_registry_unreachable_is_one_line(built_versions, tmp_path):
    from orchestrator.engine import free_port

    env = scratch_env(built_versions, tmp_path, repository=f"127.0.0.1:{free_port()}/nothing-here")
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "push", "v5.5.3-performance"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "unreachable" in one_error_line(proc)


def test_engine_unreachable_is_one_line(built_versions, tmp_path):
    env = {**scratch_env(built_versions, tmp_path), "DOCKER_HOST": f"unix://{tmp_path}/no.sock"}
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "push", "v5.5.3-performance"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    line = one_error_line(proc)
    assert "Docker engine" in line and "unreachable" in line


# ---- release: the annotated tag ---------------------------------------------------------------
def test_release_tags_a_verified_version_and_never_moves_the_tag(built_versions, tmp_path):
    """In a scratch git repository holding copies of the version folders (never this repository)."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "versions", repo / "versions")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "versions"], check=True)
    subprocess.run([*git, "commit", "-qm", "versions"], check=True)
    env = scratch_env(built_versions, tmp_path)
    config = yaml.safe_load(Path(env["AADS_CONFIG"]).read_text())
    config["versions_dir"] = str(repo / "versions")
    Path(env["AADS_CONFIG"]).write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "orchestrator", "release", "v5.5.3-performance"]

    def release(*extra):
        return subprocess.run([*cli, *extra], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)

    first = release("--json")
    assert first.returncode == 0, first.stderr
    rel = json.loads(first.stdout)
    assert rel["created"] is True
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert rel["commit"] == head
    message = subprocess.run([*git, "tag", "-l", "--format=%(contents)", "v5.5.3-performance"],
                             capture_output=True, text=True).stdout
    manifest = load_manifest(repo / "versions" / "v5.5.3-performance")
    assert " ".join(manifest.description.split()) in message
    assert manifest_sha256(repo / "versions" / "v5.5.3-performance") in message
    assert subprocess.run([*git, "cat-file", "-t", "v5.5.3-performance"], capture_output=True,
                          text=True).stdout.strip() == "tag"  # annotated
    # again on the same commit: done, nothing moved
    again = release("--json")
    assert again.returncode == 0 and json.loads(again.stdout)["created"] is False
    # uncommitted changes in the folder: refused
    (repo / "versions" / "v5.5.3-performance" / "NOTES").write_text("x")
    dirty = release()
    assert dirty.returncode == 2 and "uncommitted changes" in one_error_line(dirty)
    # a new commit: the tag exists on another commit and is never moved
    subprocess.run([*git, "add", "versions"], check=True)
    subprocess.run([*git, "commit", "-qm", "notes"], check=True)
    moved = release()
    assert moved.returncode == 2
    assert "already exists on commit" in one_error_line(moved)
    tagged = subprocess.run([*git, "rev-parse", "v5.5.3-performance^{commit}"], capture_output=True, text=True)
    assert tagged.stdout.strip() == head
