"""aads_manifest (the version manifest schema): valid manifests load; every error is listed with its field path."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from aads_manifest import (ManifestError, load_manifest, manifest_sha256, validate_version_name, version_key)

VERSIONS = Path(__file__).resolve().parents[2] / "versions"


def copy_version(tmp_path: Path, name: str = "v5.5.4-dinov3", new_name: str | None = None) -> Path:
    dst = tmp_path / (new_name or name)
    shutil.copytree(VERSIONS / name, dst)
    return dst


def edit_yaml(folder: Path, fn) -> None:
    data = yaml.safe_load((folder / "version.yaml").read_text())
    fn(data)
    (folder / "version.yaml").write_text(yaml.safe_dump(data))


@pytest.mark.parametrize("name,family,patch", [("v5.5.3-performance", "dinov2", 14), ("v5.5.4-dinov3", "dinov3", 16)])
def test_shipped_manifests_load(name, family, patch):
    m = load_manifest(VERSIONS / name)
    assert m.version == name and m.backbone.family == family and m.backbone.patch_size == patch
    assert set(m.crops) == {"tomato", "pepper", "corn"}
    assert m.adapter_spec.lora.target_modules == ["q_proj", "v_proj"]
    assert (m.training.learning_rate, m.training.batch_size, m.training.epochs) == (5e-4, 32, 15)


def test_dynamic_blocks_only_in_dinov3():
    assert load_manifest(VERSIONS / "v5.5.4-dinov3").dynamic_blocks.enabled
    assert not load_manifest(VERSIONS / "v5.5.3-performance").dynamic_blocks.enabled
    assert load_manifest(VERSIONS / "v5.5.4-dinov3").fallback == "v5.5.3-performance"


def test_every_error_listed_with_its_path(tmp_path):
    folder = copy_version(tmp_path)

    def breakit(d):
        d["backbone"]["patch_size"] = 14          # wrong for dinov3
        d["training"]["epochs"] = 0               # ge=1
        d["dynamic_blocks"]["threshold"] = 2      # le=1
        d["unexpected"] = True                    # extra=forbid
    edit_yaml(folder, breakit)
    with pytest.raises(ManifestError) as e:
        load_manifest(folder)
    text = "\n".join(e.value.errors)
    assert len(e.value.errors) >= 4
    for path in ("backbone", "training.epochs", "dynamic_blocks.threshold", "unexpected"):
        assert any(err.startswith(path) for err in e.value.errors), (path, text)
    assert "patch_size 14 does not match family dinov3" in text


def test_adapter_spec_errors_prefixed(tmp_path):
    folder = copy_version(tmp_path)
    spec = json.loads((folder / "adapter_spec.json").read_text())
    spec["crops"]["Tomato Plant"] = ["healthy", "x"]
    spec["lora"]["target_modules"] = ["q_proj", "fc1"]
    (folder / "adapter_spec.json").write_text(json.dumps(spec))
    with pytest.raises(ManifestError) as e:
        load_manifest(folder)
    assert any(err.startswith("adapter_spec.crops") and "lower_snake_case" in err for err in e.value.errors)
    assert any(err.startswith("adapter_spec.lora.target_modules") and "fc1" in err for err in e.value.errors)


def test_missing_and_unreadable_files(tmp_path):
    folder = tmp_path / "v1.0.0-x"
    folder.mkdir()
    with pytest.raises(ManifestError) as e:
        load_manifest(folder)
    assert len(e.value.errors) == 2 and all("file not found" in err for err in e.value.errors)
    (folder / "version.yaml").write_text("version: [unclosed")
    (folder / "adapter_spec.json").write_text("{not json")
    with pytest.raises(ManifestError) as e:
        load_manifest(folder)
    assert any("YAML" in err for err in e.value.errors) and any("JSON" in err for err in e.value.errors)


def test_folder_name_must_match_version(tmp_path):
    folder = copy_version(tmp_path, new_name="v5.5.5-dinov3")
    with pytest.raises(ManifestError, match="does not match its folder name"):
        load_manifest(folder)


def test_adapter_spec_must_not_be_inline(tmp_path):
    folder = copy_version(tmp_path)
    edit_yaml(folder, lambda d: d.update(adapter_spec={}))
    with pytest.raises(ManifestError, match="belongs in adapter_spec.json"):
        load_manifest(folder)


def test_fallback_must_differ(tmp_path):
    folder = copy_version(tmp_path)
    edit_yaml(folder, lambda d: d.update(fallback="v5.5.4-dinov3"))
    with pytest.raises(ManifestError, match="fallback must name another version"):
        load_manifest(folder)


@pytest.mark.parametrize("name", ["v5.5.4-dinov3", "v0.1.0-a", "v10.20.30-fast-path"])
def test_valid_version_names(name):
    assert validate_version_name(name) == name


@pytest.mark.parametrize("name", ["5.5.4-dinov3", "v5.5-dinov3", "v5.5.4", "v05.5.4-x", "v5.5.4-DINO", "v5.5.4-x_y", ""])
def test_invalid_version_names(name):
    with pytest.raises(ValueError, match="vMAJOR.MINOR.PATCH-OPTIMIZATION"):
        validate_version_name(name)


def test_version_key_orders_numerically():
    names = ["v5.10.0-a", "v5.5.4-dinov3", "v5.5.3-performance", "v5.9.9-z"]
    assert sorted(names, key=version_key) == ["v5.5.3-performance", "v5.5.4-dinov3", "v5.9.9-z", "v5.10.0-a"]


def test_manifest_hash_covers_both_files(tmp_path):
    folder = copy_version(tmp_path)
    h0 = manifest_sha256(folder)
    assert h0 == manifest_sha256(VERSIONS / "v5.5.4-dinov3") and len(h0) == 64
    spec = folder / "adapter_spec.json"
    spec.write_text(spec.read_text() + " ")
    h1 = manifest_sha256(folder)
    assert h1 != h0
    (folder / "version.yaml").write_text((folder / "version.yaml").read_text() + "\n# note\n")
    assert manifest_sha256(folder) not in (h0, h1)
