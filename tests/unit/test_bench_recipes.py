"""The benchmarks' model-set recipes stay in step with serving.demo_models' own.

bench_serving swaps its ViT-S sizes in for demo_models.TINY; a key added to the demo recipes
and missing there broke `make bench-serving` before any measurement (a KeyError).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import bench_serving  # noqa: E402
from serving import demo_models  # noqa: E402


def test_vit_s_recipe_has_every_key_of_the_tiny_recipe():
    assert set(demo_models.TINY) <= set(bench_serving.VIT_S)
    assert set(demo_models.DEMO) <= set(bench_serving.VIT_S)
