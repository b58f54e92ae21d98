"""The version commands without an engine: new-version, names, schema errors, unknown versions,
missing models, frozen versions, list/show. Every failure: one stderr line, nonzero exit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.ledger import Ledger
from serving.manifest import load_manifest, manifest_sha256

REPO = Path(__file__).resolve().parents[2]
OLD, NEW = "v5.5.3-performance", "v5.5.4-dinov3"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A config of its own: copies of both version folders, an empty state dir, no engine needed."""
    shutil.copytree(REPO / "versions", tmp_path / "versions")
    (tmp_path / "orchestrator.yaml").write_text(yaml.safe_dump({
        "registry": "127.0.0.1:1/aads-unit", "state_dir": str(tmp_path / "state"),
        "versions_dir": str(tmp_path / "versions"), "models_dir": str(tmp_path / "models"),
    }))
    for var in [v for v in list(__import__("os").environ) if v.startswith("AADS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AADS_CONFIG", str(tmp_path / "orchestrator.yaml"))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    return tmp_path


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code, err, *needles):
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ---- new-version -------------------------------------------------------------------------------
def test_new_version_copies_and_points_fallback(project, capsys):
    code, out, err = run(capsys, "new-version", "v5.5.5-quant", "--from", NEW)
    assert code == 0, err
    folder = project / "versions" / "v5.5.5-quant"
    m = load_manifest(folder)
    assert m.version == "v5.5.5-quant" and m.fallback == NEW
    assert m.backbone == load_manifest(project / "versions" / NEW).backbone
    assert (folder / "adapter_spec.json").read_bytes() == (project / "versions" / NEW / "adapter_spec.json").read_bytes()
    assert manifest_sha256(folder) != manifest_sha256(project / "versions" / NEW)
    text = (folder / "version.yaml").read_text()
    assert text.startswith("# AADS-ULoRA v5.5.5-quant")  # comments kept, header renamed


def test_new_version_adds_fallback_where_the_source_has_none(project, capsys):
    assert load_manifest(project / "versions" / OLD).fallback is None
    code, _, err = run(capsys, "new-version", "v5.5.6-prune", "--from", OLD)
    assert code == 0, err
    assert load_manifest(project / "versions" / "v5.5.6-prune").fallback == OLD


def test_new_version_refuses_to_overwrite(project, capsys):
    before = (project / "versions" / NEW / "version.yaml").read_bytes()
    code, _, err = run(capsys, "new-version", NEW, "--from", OLD)
    assert_one_error(code, err, "already exists", "refusing to overwrite")
    assert (project / "versions" / NEW / "version.yaml").read_bytes() == before


@pytest.mark.parametrize("name", ["5.5.5-x", "v5.5-x", "v5.5.5", "v5.5.5-", "v5.5.5-Fast", "v05.5.5-x", "v5.5.5-a_b",
                                  "../v5.5.5-x"])
def test_bad_names_are_refused(project, capsys, name):
    code, _, err = run(capsys, "new-version", name, "--from", OLD)
    assert code == 2
    assert_one_error(code, err, "invalid version name", "vMAJOR.MINOR.PATCH-OPTIMIZATION")
    assert sorted(p.name for p in (project / "versions").iterdir()) == [OLD, NEW]


def test_new_version_from_unknown_source(project, capsys):
    code, _, err = run(capsys, "new-version", "v5.5.5-x", "--from", "v1.0.0-nothing")
    assert_one_error(code, err, "unknown version v1.0.0-nothing")
    assert not (project / "versions" / "v5.5.5-x").exists()


def test_new_version_from_an_invalid_source_leaves_nothing(project, capsys):
    shutil.copytree(project / "versions" / OLD, project / "versions" / "v5.5.7-broken")
    path = project / "versions" / "v5.5.7-broken" / "version.yaml"
    path.write_text(path.read_text().replace("version: v5.5.3-performance", "version: v5.5.7-broken")
                    .replace("batch_size: 32", "batch_size: 0"))
    code, _, err = run(capsys, "new-version", "v5.5.8-x", "--from", "v5.5.7-broken")
    assert_one_error(code, err, "training.batch_size")
    assert not (project / "versions" / "v5.5.8-x").exists()
    assert not [p for p in (project / "versions").iterdir() if p.name.startswith(".")]


# ---- schema errors -------------------------------------------------------------------------------
def test_schema_errors_list_every_error_with_its_path(project, capsys):
    path = project / "versions" / NEW / "version.yaml"
    data = yaml.safe_load(path.read_text())
    data["backbone"]["family"] = "dinov9"
    data["training"]["epochs"] = 0
    data["dynamic_blocks"]["threshold"] = 2
    data["surprise"] = True
    path.write_text(yaml.safe_dump(data))
    spec = project / "versions" / NEW / "adapter_spec.json"
    s = json.loads(spec.read_text())
    s["lora"]["rank"] = 0
    spec.write_text(json.dumps(s))
    code, _, err = run(capsys, "show", NEW)
    line = assert_one_error(code, err, "invalid manifest")
    for p in ("backbone.family", "training.epochs", "dynamic_blocks.threshold", "surprise", "adapter_spec.lora.rank"):
        assert p in line, (p, line)
    # list still lists it, flagged
    code, out, _ = run(capsys, "list", "--json")
    rows = {r["version"]: r for r in json.loads(out)}
    assert code == 0 and rows[NEW]["valid"] is False and "training.epochs" in rows[NEW]["error"]


def test_unreadable_yaml_is_one_line(project, capsys):
    (project / "versions" / NEW / "version.yaml").write_text("version: [oops\n")
    code, _, err = run(capsys, "show", NEW)
    assert_one_error(code, err, "cannot be read as YAML")


# ---- unknown versions and bad input for every command --------------------------------------------
@pytest.mark.parametrize("command", ["build", "push", "show", "verify", "release"])
def test_unknown_version(project, capsys, command):
    code, _, err = run(capsys, command, "v9.9.9-nothing")
    assert code == 2
    assert_one_error(code, err, "unknown version v9.9.9-nothing")


@pytest.mark.parametrize("command", ["build", "push", "show", "verify", "release"])
def test_malformed_version(project, capsys, command):
    code, _, err = run(capsys, command, "latest")
    assert_one_error(code, err, "invalid version name 'latest'")


def test_missing_models_dir_names_dir_and_command(project, capsys):
    code, _, err = run(capsys, "build", NEW, "--variant", "cpu")
    line = assert_one_error(code, err, str(project / "models" / NEW), "python -m serving.demo_models")
    assert "--out" in line
    assert Ledger(project / "state").builds() == []


def test_models_of_another_version_are_refused(project, capsys):
    other = project / "models" / OLD
    other.mkdir(parents=True)
    (other / "model_set.json").write_text(json.dumps({"version": OLD}))
    code, _, err = run(capsys, "build", NEW, "--variant", "cpu", "--models", str(other))
    assert_one_error(code, err, f"model set of {OLD}, not {NEW}")


@pytest.mark.parametrize("label, needle", [
    ("novalue", "expected KEY=VALUE"),
    ("=x", "expected KEY=VALUE"),
    ("a key=x", "expected KEY=VALUE"),
    ("aads.version=v0", "set by the build itself"),
    ("org.opencontainers.image.revision=x", "set by the build itself"),
])
def test_bad_extra_labels_are_refused_before_any_work(project, capsys, label, needle):
    code, _, err = run(capsys, "build", NEW, "--variant", "cpu", "--label", label)
    assert code == 2
    assert_one_error(code, err, needle)
    assert Ledger(project / "state").builds() == []


def test_extra_labels_parse():
    from orchestrator.build import extra_labels

    assert extra_labels(["ci.pipeline=1234", "note=a=b", "empty="]) == {"ci.pipeline": "1234", "note": "a=b", "empty": ""}


def test_a_pushed_version_is_frozen(project, capsys):
    led = Ledger(project / "state")
    b = led.record_build(version=NEW, variant="cpu", image_id="sha256:" + "1" * 64,
                         manifest_sha256=manifest_sha256(project / "versions" / NEW), git_commit="x",
                         size_bytes=1, golden=[])
    led.record_push(version=NEW, build_id=b.id, repository="127.0.0.1:1/aads-unit", tag=NEW,
                    digest="sha256:" + "2" * 64)
    path = project / "versions" / NEW / "version.yaml"
    path.write_text(path.read_text().replace("epochs: 15", "epochs: 16"))
    code, _, err = run(capsys, "build", NEW, "--variant", "cpu")
    assert_one_error(code, err, "frozen", "orchestrator new-version")
    assert len(led.builds()) == 1
    code, out, _ = run(capsys, "list", "--json")
    assert {r["version"]: r for r in json.loads(out)}[NEW]["manifest_changed_since_push"] is True


def test_push_without_a_build(project, capsys):
    code, _, err = run(capsys, "push", NEW)
    assert_one_error(code, err, "no build", f"orchestrator build {NEW}")


def test_engine_unreachable(project, capsys):
    models = project / "models" / NEW
    models.mkdir(parents=True)
    (models / "model_set.json").write_text(json.dumps({"version": NEW}))
    wheel = project / "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"")
    code, _, err = run(capsys, "build", NEW, "--variant", "cpu", "--torch-wheel", str(wheel))
    assert_one_error(code, err, "Docker engine", "unreachable", "make engine")
    assert Ledger(project / "state").builds() == []


# ---- list / show -------------------------------------------------------------------------------
def test_list_states_and_failed_digests(project, capsys):
    led = Ledger(project / "state")
    b = led.record_build(version=OLD, variant="cpu", image_id="sha256:" + "1" * 64,
                         manifest_sha256=manifest_sha256(project / "versions" / OLD), git_commit="x", size_bytes=1,
                         golden=[])
    p = led.record_push(version=OLD, build_id=b.id, repository="r:1/x", tag=OLD, digest="sha256:" + "2" * 64)
    led.record_build(version=NEW, variant="cpu", image_id="sha256:" + "3" * 64,
                     manifest_sha256=manifest_sha256(project / "versions" / NEW), git_commit="x", size_bytes=1,
                     golden=[])
    led.set_live("local", version=OLD, digest=p.digest, image_ref=p.image_ref, slot="blue")
    led.mark_failed_digest(digest=p.digest, version=OLD, target="edge", reason="5xx after flip")
    code, out, _ = run(capsys, "list", "--json")
    rows = {r["version"]: r for r in json.loads(out)}
    assert rows[OLD]["state"] == "live" and rows[OLD]["live_on"] == ["local"]
    assert rows[OLD]["failed_digests"] == {p.digest: ["edge: 5xx after flip"]}
    assert rows[NEW]["state"] == "built"
    code, out, _ = run(capsys, "list")
    assert code == 0 and "failed" in out and "live on local" in out
    code, out, _ = run(capsys, "show", OLD, "--json")
    shown = json.loads(out)
    assert shown["manifest"]["training"] == {"learning_rate": 5e-4, "batch_size": 32, "epochs": 15,
                                             "holdout_fraction": 0.2, "seed": 0}
    assert shown["pushes"][0]["digest"] == p.digest and shown["live"][0]["target"] == "local"
    code, out, _ = run(capsys, "show", NEW)
    assert code == 0 and "dinov3:facebook/dinov3-vitb16-pretrain-lvd1689m" in out and "dinov2" in out


def test_help_explains(capsys):
    for cmd in ("build", "push", "list", "show", "verify", "release", "new-version"):
        assert main([cmd, "--help"]) == 0
        out = capsys.readouterr().out
        assert "Usage:" in out and len(out.splitlines()) > 4
