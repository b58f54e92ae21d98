"""The demo model sets built by `make models` meet the issue's figures on held-out synthetic images.

Slow: builds build/models/<v> first when missing or stale (a few minutes on 2 cores each).
"""

from pathlib import Path

import pytest

from serving.demo_models import build_model_set, evaluate_model_set

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("version", ["v5.5.3-performance", "v5.5.4-dinov3"])
def test_demo_set_accuracy_and_ood(version):
    version_dir, model_dir = ROOT / "versions" / version, ROOT / "build" / "models" / version
    build_model_set(version_dir, model_dir)
    r = evaluate_model_set(version_dir, model_dir, per_class=20, ood_per_kind=20)
    assert r["random_init"] is True
    assert r["accuracy"] >= 0.95, r
    assert r["ood_review_rate"] >= 0.90, r
    if r["dynamic_blocks"]["enabled"]:
        assert r["dynamic_agreement_with_full_depth"] >= 0.95, r
