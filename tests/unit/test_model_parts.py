"""Model-side building blocks: preprocessing, bundles, OOD, backbones, dynamic depth, synthetic data."""


import numpy as np
import pytest
import torch
from PIL import Image

from serving import dynamic_depth, ood, synthetic
from serving.backbones import EncoderView, choose_device_dtype, load_backbone, random_backbone, save_backbone
from serving.bundles import ModelLoadError, read_bundle, staged_directory, write_bundle
from serving.preprocess import Preprocess

SMALL = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=2)


# ---------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("family,size,patch", [("dinov2", 56, 14), ("dinov3", 64, 16)])
def test_preprocess_shapes_and_patch(family, size, patch):
    pre = Preprocess(family, size, size + 8)
    assert pre.patch_size == patch
    x = pre.batch([Image.new("RGB", (300, 120), (255, 0, 0)), Image.new("L", (50, 90), 128)])
    assert x.shape == (2, 3, size, size) and x.dtype == torch.float32
    red = (1 - 0.485) / 0.229
    assert abs(float(x[0, 0].mean()) - red) < 1e-3           # mean/std applied per channel
    with pytest.raises(ValueError, match="multiple of patch"):
        Preprocess(family, size + 1, size + 8)


def test_preprocess_center_crop_keeps_the_middle():
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    img.paste((255, 255, 255), (40, 0, 160, 100))  # white middle, a bit wider than the crop
    x = Preprocess("dinov3", 64, 64).array(img)     # shorter side 100 -> 64, width 128 -> crop middle 64
    assert (x[0] > 2.0).all()


def test_preprocess_transparency_becomes_white():
    img = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    x = Preprocess("dinov2", 28, 28).array(img)
    assert np.allclose(x[0], (1 - 0.485) / 0.229, atol=1e-4)


# ---------------------------------------------------------------- bundles
def test_bundle_round_trip_and_tamper(tmp_path):
    with staged_directory(tmp_path / "b") as d:
        (d / "a.bin").write_bytes(b"abc")
        (d / "sub").mkdir()
        (d / "sub" / "c.txt").write_text("x")
        write_bundle(d, {"kind": "adapter", "crop": "tomato"})
    doc = read_bundle(tmp_path / "b", kind="adapter")
    assert set(doc["files"]) == {"a.bin", "sub/c.txt"} and doc["crop"] == "tomato"
    with pytest.raises(ModelLoadError, match="expected a router bundle"):
        read_bundle(tmp_path / "b", kind="router")
    (tmp_path / "b" / "sub" / "c.txt").write_text("y")
    with pytest.raises(ModelLoadError, match=r"sub/c.txt does not match its recorded sha256"):
        read_bundle(tmp_path / "b")
    (tmp_path / "b" / "a.bin").unlink()
    with pytest.raises(ModelLoadError, match=r"a.bin is missing"):
        read_bundle(tmp_path / "b")


def test_bundle_errors_name_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        read_bundle(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(ModelLoadError, match=r"bundle.json is missing"):
        read_bundle(tmp_path / "x")
    (tmp_path / "x" / "bundle.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match="cannot be read"):
        read_bundle(tmp_path / "x")


def test_staged_directory_leaves_nothing_on_failure(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "old").write_text("keep")
    with pytest.raises(RuntimeError):
        with staged_directory(tmp_path / "b") as d:
            (d / "new").write_text("half")
            raise RuntimeError("crash")
    assert [p.name for p in tmp_path.iterdir()] == ["b"] and (tmp_path / "b" / "old").read_text() == "keep"


# ---------------------------------------------------------------- OOD
def test_ledoit_wolf_shrinks_few_samples():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 50, generator=g, dtype=torch.float64)
    cov, s = ood.ledoit_wolf(x - x.mean(0))
    assert 0 < s <= 1
    assert torch.linalg.matrix_rank(cov) == 50          # the sample covariance alone has rank < 20
    x = torch.randn(5000, 5, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2, 4, 8, 16], dtype=torch.float64)
    assert ood.ledoit_wolf(x - x.mean(0))[1] < 0.05     # plenty of data, far from isotropic: little shrinkage
    x = torch.randn(5000, 5, generator=g, dtype=torch.float64)
    assert ood.ledoit_wolf(x - x.mean(0))[1] > 0.5      # isotropic: the target itself is right


def test_ood_thresholds_hit_the_acceptance_rate_on_held_out_data():
    g = torch.Generator().manual_seed(1)
    means = torch.randn(3, 32, generator=g) * 4
    def sample(n):
        labels = torch.arange(3).repeat_interleave(n)
        return means[labels] + torch.randn(3 * n, 32, generator=g), labels
    tr_x, tr_y = sample(60)
    ho_x, ho_y = sample(200)
    te_x, _ = sample(400)
    model = ood.calibrate(ood.fit(tr_x, tr_y, 3), ho_x, ho_y, 0.95)
    accepted = float((model.scores(te_x) <= 1).float().mean())
    assert 0.9 < accepted < 0.99
    far = torch.randn(100, 32, generator=g) * 4 + 30
    assert float((model.scores(far) > 1).float().mean()) == 1.0


def test_ood_save_load(tmp_path):
    x, y = torch.randn(40, 8), torch.arange(2).repeat(20)
    m = ood.calibrate(ood.fit(x, y, 2), x, y, 0.9)
    m.save(tmp_path / "o.safetensors")
    m2 = ood.OODModel.load(tmp_path / "o.safetensors")
    assert torch.allclose(m.scores(x), m2.scores(x))


# ---------------------------------------------------------------- backbones
@pytest.mark.parametrize("family,size", [("dinov2", 56), ("dinov3", 64)])
def test_backbone_save_load_and_encoder_view_match_transformers(tmp_path, family, size):
    model = random_backbone(family, image_size=size, **SMALL)
    save_backbone(model, tmp_path / "bb")
    loaded = load_backbone(tmp_path / "bb", family)
    view = EncoderView(loaded)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = loaded(pixel_values=x).last_hidden_state
        mine = view.forward_features(x)
    ref_feat = torch.cat([ref[:, 0], ref[:, view.prefix_tokens:].mean(1)], -1)
    assert torch.allclose(mine, ref_feat, atol=1e-5)
    assert view.prefix_tokens == (5 if family == "dinov3" else 1)  # DINOv3: CLS + 4 registers


def test_backbone_load_errors_name_the_directory(tmp_path):
    with pytest.raises(ModelLoadError, match=rf"expected config.json and model.safetensors .* in {tmp_path / 'none'}"):
        load_backbone(tmp_path / "none", "dinov3")
    model = random_backbone("dinov2", image_size=56, **SMALL)
    save_backbone(model, tmp_path / "bb")
    with pytest.raises(ModelLoadError, match="is a 'dinov2' model, not dinov3"):
        load_backbone(tmp_path / "bb", "dinov3")
    (tmp_path / "bb" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=r"unreadable.*" + str(tmp_path / "bb")):
        load_backbone(tmp_path / "bb", "dinov2")


def test_device_dtype_choice(monkeypatch):
    from serving import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda *a: frozenset({"avx2"}))  # a CPU without native bf16
    dev, dt = choose_device_dtype("cpu", "auto")
    assert dev.type == "cpu" and dt == torch.float32
    assert choose_device_dtype("cpu", "bfloat16")[1] == torch.bfloat16
    if not torch.cuda.is_available():
        assert choose_device_dtype(None, "auto") == (torch.device("cpu"), torch.float32)


# ---------------------------------------------------------------- dynamic depth
@pytest.mark.parametrize("family,size", [("dinov2", 56), ("dinov3", 64)])
def test_dynamic_depth_matches_full_depth_and_exits_per_sample(family, size):
    model = random_backbone(family, image_size=size, hidden_size=48, num_hidden_layers=6, num_attention_heads=2)
    view = EncoderView(model)
    x = torch.randn(5, 3, size, size)
    with torch.no_grad():
        full = view.forward_features(x)
        feats, blocks = dynamic_depth.run(view, x)
        assert torch.allclose(feats, full, atol=1e-5) and blocks.tolist() == [6] * 5
        traced, sims = dynamic_depth.trace(view, x)
        assert torch.allclose(traced[-1], full, atol=1e-5)
        # a threshold between the observed similarities makes some samples exit early, others not
        thr = float(sims[2].median())
        policy = dynamic_depth.DepthPolicy(True, 3, thr)
        feats, blocks = dynamic_depth.run(view, x, policy)
        expect = dynamic_depth.exit_blocks(sims, 3, thr)
        assert blocks.tolist() == expect.tolist()
        assert min(blocks.tolist()) >= 3
        early = sims[2] >= thr  # the median and those above it: at least 3 of the 5
        assert int(early.sum()) >= 3 and (blocks[early] == 3).all(), (blocks, sims[2], thr)
        assert (blocks[~early] > 3).all() and bool((~early).any()), (blocks, sims[2], thr)
        for i, b in enumerate(blocks.tolist()):
            assert torch.allclose(feats[i], traced[b - 1, i], atol=1e-5)


def test_calibrate_threshold_picks_lowest_agreeing():
    agreement = {0.5: 0.9, 0.7: 0.97, 0.9: 0.99, 0.95: 1.0, 0.99: 1.0}
    cal = dynamic_depth.calibrate_threshold(lambda t: (agreement[t], 10 * t), sorted(agreement), 0.99, 12, 100)
    assert cal.threshold == 0.9 and cal.agreement >= 0.99
    never = dynamic_depth.calibrate_threshold(lambda t: (0.5, 1.0), [0.5, 0.9], 0.99, 12, 100)
    assert never.threshold > 1 and never.mean_blocks == 12


def test_policy_from_fraction():
    p = dynamic_depth.DepthPolicy.from_fraction(True, 0.5, 0.99, 12)
    assert p.min_blocks == 6
    assert dynamic_depth.DepthPolicy.from_fraction(True, 0.01, 0.99, 6).min_blocks == 1


# ---------------------------------------------------------------- synthetic data
def test_synthetic_is_deterministic_and_order_free(tmp_path):
    a = np.asarray(synthetic.leaf_image("tomato", "early_blight", 3, seed=0, size=64))
    b = np.asarray(synthetic.leaf_image("tomato", "early_blight", 3, seed=0, size=64))
    c = np.asarray(synthetic.leaf_image("tomato", "early_blight", 4, seed=0, size=64))
    assert (a == b).all() and not (a == c).all()
    crops = {"tomato": ["healthy", "late_blight"], "corn": ["healthy", "common_rust"]}
    out = synthetic.generate(tmp_path / "d", crops, per_class=2, size=48, ood_per_kind=1)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert len(files) == 8 + len(synthetic.OOD_KINDS)
    assert "tomato/late_blight/late_blight_0001.png" in files and "_ood/noise/noise_0000.png" in files
    again = synthetic.generate(tmp_path / "e", crops, per_class=2, size=48, ood_per_kind=1)
    assert all((out / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_synthetic_classes_differ():
    healthy = np.asarray(synthetic.leaf_image("corn", "healthy", 0), dtype=float)
    rust = np.asarray(synthetic.leaf_image("corn", "common_rust", 0), dtype=float)
    assert rust[..., 0].mean() > healthy[..., 0].mean()      # orange pustules add red
    with pytest.raises(ValueError, match="unknown OOD kind"):
        synthetic.ood_image("cats", 0)


def test_dinov2_blocks_get_only_the_hidden_states():
    """transformers 5.17's Dinov2Layer.forward takes no `attention_mask` (5.24's does): the block
    loop must pass DINOv2 blocks nothing but the hidden states, or serving fails on such a host
    (seen on the GPU machine: TypeError in the first forward pass)."""
    model = random_backbone("dinov2", image_size=56, **SMALL)
    view = EncoderView(model)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ref = model(pixel_values=x).last_hidden_state
    for layer in view.layers:
        original = type(layer).forward.__get__(layer)

        def strict(hidden_states, _original=original):  # the 5.17 signature, less its unused flags
            return _original(hidden_states)

        layer.forward = strict
    with torch.no_grad():
        mine = view.forward_features(x)
    assert torch.allclose(mine, torch.cat([ref[:, 0], ref[:, 1:].mean(1)], -1), atol=1e-5)
