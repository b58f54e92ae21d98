"""One adapter pass per mixed-crop batch gives the per-crop path's decisions and numbers."""

import pytest
import torch

from serving import dynamic_depth, synthetic
from serving.mixed_adapters import MixedAdapters
from serving.pipeline import Pipeline


def _mixed_batch(manifest, per_class=2):
    images, hints = [], []
    for crop, diseases in manifest.crops.items():
        for d in diseases[:2]:
            for i in range(per_class):
                images.append(synthetic.leaf_image(crop, d, i, seed=31, size=96))
                hints.append(crop if i % 2 else None)  # hinted and routed rows of every crop, interleaved
    return images, hints


@pytest.mark.parametrize("family", ["dinov2", "dinov3"])
def test_one_mixed_pass_decides_as_one_pass_per_crop(tiny_model_set, family):
    ms = tiny_model_set(family)
    pipe = Pipeline.load(ms.path, ms.manifest(), device="cpu", dtype="float32")
    images, hints = _mixed_batch(ms.manifest())
    pipe.mixed_adapters = False
    per_crop = pipe.diagnose(images, hints)
    pipe.mixed_adapters = True
    calls = []
    real_run = dynamic_depth.run
    dynamic_depth.run, restore = (lambda *a, **k: calls.append(len(a[1])) or real_run(*a, **k)), real_run
    try:
        mixed = pipe.diagnose(images, hints)
    finally:
        dynamic_depth.run = restore
    assert len({d.crop for d in mixed}) > 1
    assert calls[-1] == len(images)  # the adapter pass took the whole batch at once
    for a, b in zip(per_crop, mixed):
        assert (a.decision, a.reason, a.crop, a.disease, a.blocks_used) == (b.decision, b.reason, b.crop, b.disease,
                                                                            b.blocks_used)
        assert a.confidence == pytest.approx(b.confidence, abs=1e-4)
        assert a.ood_score == pytest.approx(b.ood_score, rel=1e-3, abs=1e-4)


def test_early_exit_shrinks_the_adapter_names_with_the_batch(tiny_model_set):
    ms = tiny_model_set("dinov3")
    pipe = Pipeline.load(ms.path, ms.manifest(), device="cpu", dtype="float32")
    images, hints = _mixed_batch(ms.manifest())
    crops = [h or "corn" for h in hints]
    eager = dynamic_depth.DepthPolicy(True, 1, -1.0)  # every row converges after the first check
    dropped = []
    mixed = MixedAdapters(pipe.model)
    with torch.inference_mode(), mixed.rows(crops):
        real_keep = mixed.keep
        mixed.keep = lambda keep: dropped.append(int((~keep).sum())) or real_keep(keep)
        feats, used = dynamic_depth.run(pipe.view, pipe._pixels(images), eager, on_drop=mixed.keep)
    assert dropped == [len(images)] and mixed.names == []
    assert feats.shape[0] == len(images) and set(used.tolist()) == {1}
