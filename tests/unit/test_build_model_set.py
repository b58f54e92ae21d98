"""python -m serving.build_model_set: a set from an official-shape (random-weight) Hub checkpoint and
an ImageFolder per crop, served through the API; sharded checkpoints, streaming, resume, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving import synthetic
from serving.build_model_set import BuildOptions, build
from serving.checkpoints import write_random_checkpoint
from serving.manifest import load_manifest
from serving.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[2]
CASES = {  # family: (version, a model id the manifest allows, shard size)
    "dinov3": ("v5.5.4-dinov3", "facebook/dinov3-vits16-pretrain-lvd1689m", "20MB"),
    "dinov2": ("v5.5.3-performance", "facebook/dinov2-small", None),
}
FAST = ["--epochs", "1", "--resize-size", "72", "--calibration-images", "30", "--workers", "2"]
SIZE = {"dinov3": 64, "dinov2": 56}  # small inputs keep the official 12-block ViT-S fast on a CPU


def run(*args):
    return subprocess.run([sys.executable, "-m", "serving.build_model_set", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Per family: an official-shape ViT-S checkpoint with random weights (DINOv3 sharded) + data."""
    root = tmp_path_factory.mktemp("inputs")
    out = {}
    for family, (version, model_id, shard) in CASES.items():
        ckpt = write_random_checkpoint(model_id, root / family / "ckpt", max_shard_size=shard)
        data = synthetic.generate(root / family / "data", load_manifest(ROOT / "versions" / version).crops,
                                  per_class=5, size=80)
        out[family] = (version, model_id, ckpt, data)
    return out


@pytest.fixture(scope="module")
def shallow(inputs, tmp_path_factory):
    """The same checkpoints cut to 2 blocks: for the tests of the build's mechanics (resume, streaming)."""
    root = tmp_path_factory.mktemp("shallow")
    return {family: (version, model_id,
                     write_random_checkpoint(model_id, root / family, max_shard_size=CASES[family][2],
                                             overrides={"num_hidden_layers": 2}), data)
            for family, (version, model_id, _ckpt, data) in inputs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CASES))
def test_builds_a_set_that_serves_with_random_init_false(inputs, tmp_path, family):
    from tests.api.conftest import b64, png_bytes, serve

    version, model_id, ckpt, data = inputs[family]
    out = tmp_path / "set"
    r = run("--version-dir", ROOT / "versions" / version, "--backbone", ckpt, "--data", data, "--out", out,
            "--model-id", model_id, "--json", "--image-size", SIZE[family], *FAST)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    manifest = load_manifest(ROOT / "versions" / version)
    assert doc["random_init"] is False and doc["model_id"] == model_id
    assert doc["classes"] == manifest.crops
    assert doc["backbone_config"]["hidden_size"] == 384 and doc["backbone_config"]["num_hidden_layers"] == 12
    files = json.loads((out / "model_set.json").read_text())["files"]
    if CASES[family][2]:  # sharded: the index and every shard are part of the set and hashed
        assert "backbone/model.safetensors.index.json" in files
        assert sum(f.startswith("backbone/model-") for f in files) > 1
    assert "backbone/preprocessor_config.json" in files
    golden = json.loads((out / "golden" / "golden.json").read_text())
    assert len(golden) == 2 * len(manifest.crops) and all((out / "golden" / g["image"]).is_file() for g in golden)
    assert not list(tmp_path.glob(".*partial*"))  # the work dir became the set
    if manifest.dynamic_blocks.enabled:
        assert doc["dynamic_depth"]["enabled"] and doc["dynamic_depth"]["calibration_size"] > 0

    class Set:  # what tests/api/conftest.serve needs
        path, version_dir = out, ROOT / "versions" / version

    with serve(Set, max_wait_ms=5) as svc:
        version_doc = svc.client.get("/v1/version").json()
        assert version_doc["random_init"] is False
        leaf = synthetic.leaf_image(next(iter(manifest.crops)), "healthy", 1, seed=9, size=80)
        answer = svc.client.post("/v1/diagnose", json={"image": b64(png_bytes(leaf))})
        assert answer.status_code == 200, answer.text
        assert answer.json()["backbone"]["model_id"] == model_id  # the variant served, not the default
    # golden decisions are what the set gives its golden images
    pipe = Pipeline.load(out, manifest)
    from PIL import Image

    got = pipe.diagnose([Image.open(out / "golden" / g["image"]).convert("RGB") for g in golden], [None] * len(golden))
    assert [(d.decision, d.crop, d.disease) for d in got] == [(g["decision"], g["crop"], g["disease"]) for g in golden]
    # a set that claims another size than its checkpoint is refused at load
    doc = json.loads((out / "model_set.json").read_text())
    (out / "model_set.json").write_text(json.dumps({**doc, "model_id": manifest.backbone.model_id}))
    from serving.bundles import ModelLoadError

    with pytest.raises(ModelLoadError, match="hidden_size 384 is not the 768"):
        Pipeline.load(out, manifest)


def test_an_interrupted_build_resumes(shallow, tmp_path):
    version, model_id, ckpt, data = shallow["dinov3"]
    out = tmp_path / "set"
    options = BuildOptions(epochs=2, batch_size=8, image_size=64, model_id=model_id, calibration_images=20,
                           workers=1)
    seen = []

    def stop_in_second_epoch_of_pepper(stage, done, total):
        seen.append(stage)
        if stage.startswith("train pepper") and done == total // 2 + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(ROOT / "versions" / version, ckpt, data, out, options, progress=stop_in_second_epoch_of_pepper)
    work = tmp_path / ".set.partial"
    assert not out.exists() and (work / "router" / "bundle.json").is_file()
    assert (work / "adapters" / "tomato" / "bundle.json").is_file()
    assert (work / ".checkpoints" / "pepper.pt").is_file()  # pepper's first epoch is kept

    said, steps = [], []
    build(ROOT / "versions" / version, ckpt, data, out, options, log=said.append,
          progress=lambda stage, done, total: steps.append((stage, done, total)))
    assert any("resuming" in m for m in said)
    assert any("router: already trained" in m for m in said) and any("tomato adapter: already" in m for m in said)
    pepper = [(d, t) for s, d, t in steps if s.startswith("train pepper")]
    assert pepper and pepper[0][0] == pepper[0][1] // 2 + 1  # went on from the second epoch, not step 1
    assert Pipeline.load(out, load_manifest(ROOT / "versions" / version)).info["random_init"] is False


def test_images_stream_from_disk_in_batches(shallow, tmp_path, monkeypatch):
    from serving import train

    version, model_id, ckpt, data = shallow["dinov2"]
    biggest = []
    original = train.ImageFiles.load

    def spy(self, indices):
        biggest.append(len(indices))
        return original(self, indices)

    monkeypatch.setattr(train.ImageFiles, "load", spy)
    build(ROOT / "versions" / version, ckpt, data, tmp_path / "set",
          BuildOptions(epochs=1, batch_size=4, image_size=56, model_id=model_id, feature_batch_size=8,
                       calibration_images=10, workers=1))
    assert biggest and max(biggest) <= 8  # never the whole crop at once


@pytest.mark.parametrize("case,match", [
    ("no-crop-folder", r"no folder for crop\(s\) pepper"),
    ("wrong-size", r"hidden_size 384 is not the 1024 of facebook/dinov3-vitl16"),
    ("not-a-variant", r"model id facebook/dinov2-small is neither"),
    ("no-checkpoint", r"config.json is missing: --backbone must be a Hugging Face checkpoint directory"),
    ("no-cuda", r"--device cuda"),
])
def test_bad_input_is_one_line_and_writes_nothing(inputs, tmp_path, case, match):
    import shutil

    version, model_id, ckpt, data = inputs["dinov3"]
    args = {"--model-id": model_id, "--backbone": ckpt, "--data": data, "--device": "cpu"}
    if case == "no-crop-folder":
        args["--data"] = tmp_path / "d"
        shutil.copytree(data / "tomato", tmp_path / "d" / "tomato")
    elif case == "wrong-size":
        args["--model-id"] = "facebook/dinov3-vitl16-pretrain-lvd1689m"
    elif case == "not-a-variant":
        args["--model-id"] = "facebook/dinov2-small"
    elif case == "no-checkpoint":
        args["--backbone"] = tmp_path
    elif case == "no-cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is visible here")
        args["--device"] = "cuda"
    out = tmp_path / "out"
    r = run("--version-dir", ROOT / "versions" / version, "--out", out, *[x for kv in args.items() for x in kv])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    import re

    assert re.search(match, lines[0]), lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out.partial"))


def test_help_names_the_interface():
    r = run("--help")
    assert r.returncode == 0
    for flag in ("--version-dir", "--backbone", "--data", "--out", "--device", "--epochs", "model.safetensors.index.json"):
        assert flag in r.stdout
