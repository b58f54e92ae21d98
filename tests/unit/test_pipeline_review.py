"""Out-of-distribution images come back `review` with the reason that names the check that fired,
through Pipeline.diagnose (its public API) on the tiny model sets of both families.

The tiny sets are random-init backbones with router and adapters fitted on synthetic leaves;
the synthetic "noise" and "pattern" images score several times their thresholds there, far from
the boundary, so these decisions do not depend on a lucky seed.
"""

from __future__ import annotations

import pytest

from serving import synthetic
from serving.pipeline import Pipeline

FOREIGN = [("noise", 0), ("pattern", 1), ("noise", 3)]


@pytest.fixture(scope="module", params=["dinov2", "dinov3"])
def pipeline(request, tiny_model_set):
    ms = tiny_model_set(request.param)
    return Pipeline.load(ms.path, ms.manifest(), device="cpu")


def foreign_images():
    return [synthetic.ood_image(kind, i, seed=7) for kind, i in FOREIGN]


def test_router_score_over_its_threshold_is_review_not_a_supported_crop(pipeline):
    out = pipeline.diagnose(foreign_images(), [None] * len(FOREIGN))
    for d in out:
        assert d.router_ood_score is not None and d.router_ood_score > 1.0, d
        assert (d.decision, d.reason) == ("review", "not_a_supported_crop"), d


def test_adapter_ood_score_over_its_threshold_is_review_unfamiliar_for_crop(pipeline):
    # A crop hint skips the router, so only the crop adapter's OOD check can fire.
    for crop in pipeline.crops:
        out = pipeline.diagnose(foreign_images(), [crop] * len(FOREIGN))
        for d in out:
            assert d.router_ood_score is None and d.ood_score > 1.0, d
            assert (d.crop, d.decision, d.reason) == (crop, "review", "unfamiliar_for_crop"), d


def test_a_leaf_in_the_same_batch_is_not_called_foreign(pipeline):
    leaf = synthetic.leaf_image("tomato", "late_blight", 1, seed=7)
    out = pipeline.diagnose([foreign_images()[0], leaf], [None, None])
    assert out[0].reason == "not_a_supported_crop"
    assert out[1].router_ood_score <= 1.0 and out[1].ood_score <= 1.0
    assert out[1].reason not in ("not_a_supported_crop", "unfamiliar_for_crop"), out[1]
