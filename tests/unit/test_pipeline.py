"""The serving contract of serving.pipeline on tiny model sets of both families."""

import json
import shutil

import pytest
from PIL import Image

from serving import synthetic
from serving.dynamic_depth import FULL_DEPTH
from serving.pipeline import Diagnosis, ModelLoadError, Pipeline

REASONS = {None, "not_a_supported_crop", "unfamiliar_for_crop", "low_confidence"}


@pytest.fixture(scope="module")
def pipelines(tiny_model_set):
    out = {}
    for family in ("dinov2", "dinov3"):
        ms = tiny_model_set(family)
        out[family] = (ms, Pipeline.load(ms.path, ms.manifest(), device="cpu"))
    return out


@pytest.mark.parametrize("family", ["dinov2", "dinov3"])
def test_info_says_random_init(pipelines, family):
    ms, pipe = pipelines[family]
    info = pipe.info
    assert info["family"] == family and info["random_init"] is True and info["synthetic"] is True
    assert "randomly initialized" in info["notice"]
    # bf16 where this CPU has it and the golden images agree with fp32 (tests/unit/test_precision.py)
    assert info["device"] == "cpu" and info["dtype"] == info["precision"]["dtype"] in ("float32", "bfloat16")
    assert info["num_blocks"] == 3 and info["load_seconds"] > 0
    assert info["dynamic_blocks"]["enabled"] is (family == "dinov3")
    assert pipe.crops == ms.manifest().crops


@pytest.mark.parametrize("family", ["dinov2", "dinov3"])
def test_diagnose_batch_with_and_without_hints(pipelines, family):
    _, pipe = pipelines[family]
    pipe.warmup()
    images = [synthetic.leaf_image("tomato", "early_blight", 0, size=80),
              synthetic.leaf_image("corn", "common_rust", 1, size=80),
              synthetic.ood_image("noise", 0, size=80),
              Image.new("L", (40, 300), 30)]
    hints = [None, "corn", None, "pepper"]
    out = pipe.diagnose(images, hints)
    assert len(out) == 4 and all(isinstance(d, Diagnosis) for d in out)
    for d, hint in zip(out, hints):
        assert d.decision in ("accept", "review") and d.reason in REASONS
        assert (d.reason is None) == (d.decision == "accept")
        assert d.disease in pipe.crops[d.crop]
        assert 0 <= d.confidence <= 1 and d.ood_score >= 0
        assert 1 <= d.blocks_used <= pipe.info["num_blocks"]
        assert set(d.timings_ms) >= {"router", "adapter", "total"}
        if hint is None:
            assert d.crop in pipe.crops and d.crop_confidence is not None and d.router_ood_score is not None
        else:
            assert d.crop == hint and d.crop_confidence is None and d.router_ood_score is None
    assert json.dumps(out[0].to_dict())
    assert pipe.diagnose([], []) == []


def test_same_image_same_answer_alone_or_in_a_batch(pipelines):
    _, pipe = pipelines["dinov3"]
    img = synthetic.leaf_image("pepper", "healthy", 2, size=80)
    alone = pipe.diagnose([img], [None])[0]
    batch = pipe.diagnose([synthetic.ood_image("pattern", 1, size=80), img, img], [None, None, "pepper"])
    assert (batch[1].crop, batch[1].disease, batch[1].decision) == (alone.crop, alone.disease, alone.decision)
    assert abs(batch[1].confidence - alone.confidence) < 1e-4


def test_unknown_hint_rejected(pipelines):
    _, pipe = pipelines["dinov2"]
    with pytest.raises(ValueError, match="unknown crop_hint 'banana'"):
        pipe.diagnose([Image.new("RGB", (64, 64))], ["banana"])


def test_decision_rules(pipelines):
    _, pipe = pipelines["dinov2"]
    t = pipe.confidence_threshold
    assert pipe._decide(1.5, 0.5, 0.99) == ("review", "not_a_supported_crop")
    assert pipe._decide(None, 1.5, 0.99) == ("review", "unfamiliar_for_crop")
    assert pipe._decide(0.5, 0.5, t - 0.01) == ("review", "low_confidence")
    assert pipe._decide(0.5, 0.5, t + 0.01) == ("accept", None)


def test_adapter_info(pipelines):
    _, pipe = pipelines["dinov3"]
    info = pipe.adapter_info("tomato")
    assert info["rank"] == 8 and info["alpha"] == 16 and info["targets"] == ["q_proj", "v_proj"]
    assert info["classes"][0] == "healthy" and set(info["thresholds"]["ood"]) == set(info["classes"])
    assert {"adapter_model.safetensors", "adapter_config.json", "head.safetensors", "ood.safetensors"} <= set(info["sha256"])
    assert info["random_init"] is True
    with pytest.raises(KeyError):
        pipe.adapter_info("banana")


def test_dynamic_depth_calibrated_and_stored(pipelines):
    ms, pipe = pipelines["dinov3"]
    doc = json.loads((ms.path / "model_set.json").read_text())
    dyn = doc["dynamic_depth"]
    assert dyn["enabled"] and dyn["agreement"] >= dyn["target_agreement"] == 0.99
    assert pipe.policy.threshold == dyn["threshold"] and pipe.policy.min_blocks == 2
    imgs = [synthetic.leaf_image("corn", "healthy", i, size=80) for i in range(3)]
    full = pipe.diagnose(imgs, [None] * 3, policy=FULL_DEPTH)
    assert all(d.blocks_used == 3 for d in full)


def copy_set(ms, tmp_path):
    dst = tmp_path / "set"
    shutil.copytree(ms.path, dst)
    return dst


def test_tampered_adapter_refused_naming_the_file(tiny_model_set, tmp_path):
    ms = tiny_model_set("dinov2")
    d = copy_set(ms, tmp_path)
    target = d / "adapters" / "pepper" / "head.safetensors"
    target.write_bytes(target.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ModelLoadError, match=r"adapters/pepper/head.safetensors does not match its recorded sha256"):
        Pipeline.load(d, ms.manifest())


def test_missing_backbone_refused_naming_the_directory(tiny_model_set, tmp_path):
    ms = tiny_model_set("dinov3")
    d = copy_set(ms, tmp_path)
    (d / "backbone" / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"backbone/model.safetensors is missing"):
        Pipeline.load(d, ms.manifest())
    with pytest.raises(ModelLoadError, match="expected config.json and model.safetensors"):
        Pipeline.load(d, ms.manifest(), verify=False)


def test_wrong_version_and_missing_set(tiny_model_set, tmp_path):
    v2, v3 = tiny_model_set("dinov2"), tiny_model_set("dinov3")
    with pytest.raises(ModelLoadError, match="is for version v5.5.3-performance, not v5.5.4-dinov3"):
        Pipeline.load(v2.path, v3.manifest())
    with pytest.raises(ModelLoadError, match="does not exist"):
        Pipeline.load(tmp_path / "nothing", v3.manifest())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="model_set.json is missing"):
        Pipeline.load(tmp_path / "empty", v3.manifest())
