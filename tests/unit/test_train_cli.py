"""python -m serving.train and python -m serving.demo_models: real runs on tiny data, clear errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving import synthetic
from serving.bundles import read_bundle
from serving.demo_models import build_model_set

ROOT = Path(__file__).resolve().parents[2]
V3 = ROOT / "versions" / "v5.5.4-dinov3"
PEPPER = ["healthy", "bell_pepper_bacterial_spot"]


def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def pepper_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synthetic.generate(root, {"pepper": PEPPER}, per_class=6, size=72)
    return root / "pepper"


def test_train_writes_a_verified_bundle(tiny_model_set, pepper_data, tmp_path):
    ms = tiny_model_set("dinov3")
    out = tmp_path / "pepper"
    r = run("serving.train", "--version-dir", V3, "--data", pepper_data, "--crop", "pepper",
            "--backbone", ms.path / "backbone", "--out", out, "--epochs", "1", "--json")
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout)
    assert metrics["crop"] == "pepper" and metrics["heldout_size"] == 2 and metrics["train_size"] == 10
    doc = read_bundle(out, kind="adapter")
    assert doc["classes"] == PEPPER and doc["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert doc["training"]["learning_rate"] == 5e-4 and doc["training"]["batch_size"] == 32
    assert doc["training"]["epochs"] == 1
    assert {"adapter_config.json", "adapter_model.safetensors", "head.safetensors", "ood.safetensors"} == set(doc["files"])
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]


@pytest.mark.parametrize("case,match", [
    ("no-data", "dataset directory .* does not exist"),
    ("wrong-classes", "missing class folders \\['bell_pepper_bacterial_spot'\\]"),
    ("no-backbone", "expected config.json and model.safetensors in"),
    ("bad-crop", "crop 'banana' is not in the adapter spec"),
    ("bad-version", "version.yaml: file not found"),
])
def test_train_bad_input_one_line_error(tiny_model_set, pepper_data, tmp_path, case, match):
    ms = tiny_model_set("dinov3")
    data, backbone, crop, version = pepper_data, ms.path / "backbone", "pepper", V3
    if case == "no-data":
        data = tmp_path / "nothing"
    elif case == "wrong-classes":
        data = tmp_path / "d"
        shutil.copytree(pepper_data / "healthy", data / "healthy")
    elif case == "no-backbone":
        backbone = tmp_path / "nobackbone"
    elif case == "bad-crop":
        crop = "banana"
    elif case == "bad-version":
        version = tmp_path
    out = tmp_path / "out"
    r = run("serving.train", "--version-dir", version, "--data", data, "--crop", crop, "--backbone", backbone,
            "--out", out)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    import re
    assert re.search(match, lines[0]), lines[0]
    assert "Traceback" not in r.stderr and not out.exists()


def test_help_explains():
    r = run("serving.train", "--help")
    assert r.returncode == 0 and "ImageFolder" in r.stdout and "--backbone" in r.stdout
    r = run("serving.demo_models", "--help")
    assert r.returncode == 0 and "randomly initialized" in r.stdout


def test_demo_models_reuses_a_matching_set(tmp_path):
    out = tmp_path / "set"
    messages = []
    build_model_set(ROOT / "versions" / "v5.5.3-performance", out, tiny=True, log=messages.append)
    first = json.loads((out / "model_set.json").read_text())
    assert first["random_init"] and first["synthetic"] and first["tiny"]
    assert {"backbone/model.safetensors", "router/bundle.json", "adapters/corn/adapter_model.safetensors"} <= set(first["files"])
    messages.clear()
    build_model_set(ROOT / "versions" / "v5.5.3-performance", out, tiny=True, log=messages.append)
    assert any("reused" in m for m in messages)
    assert json.loads((out / "model_set.json").read_text())["created"] == first["created"]
    # a changed file breaks the match: the set is rebuilt, not trusted
    (out / "router" / "probe.safetensors").write_bytes(b"x")
    messages.clear()
    build_model_set(ROOT / "versions" / "v5.5.3-performance", out, tiny=True, log=messages.append)
    assert not any("reused" in m for m in messages)
    assert read_bundle(out / "router", kind="router")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_demo_models_cli_bad_version(tmp_path):
    r = run("serving.demo_models", "--version-dir", tmp_path / "v9.9.9-none", "--out", tmp_path / "o", "--tiny")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
