"""Accuracy and OOD figures of the demo model sets, both versions side by side.

    .venv/bin/python benchmarks/eval_demo_models.py            # builds missing sets first (make models)

Serves held-out synthetic images (a seed never trained or calibrated on) through the same
Pipeline the service uses. Targets (issue 3): accuracy >= 95%, OOD images sent to review >= 90%.
Writes docs/benchmarks/eval_demo_models.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, write_json  # noqa: E402
from serving.demo_models import build_model_set, evaluate_model_set  # noqa: E402

VERSIONS = ("v5.5.3-performance", "v5.5.4-dinov3")
TARGET_ACCURACY, TARGET_OOD_REVIEW = 0.95, 0.90


def _machine() -> str:
    import torch

    return machine(torch=torch)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=ROOT / "build" / "models")
    ap.add_argument("--per-class", type=int, default=40, help="in-distribution test images per class")
    ap.add_argument("--ood-per-kind", type=int, default=40, help="OOD test images per kind (noise, pattern, unseen_leaf)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "eval_demo_models.json")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    results = {}
    for v in VERSIONS:
        model_dir = args.models_dir / v
        build_model_set(ROOT / "versions" / v, model_dir, log=lambda m: print(m, file=sys.stderr))
        results[v] = evaluate_model_set(ROOT / "versions" / v, model_dir, args.per_class, args.ood_per_kind)
    rows = [
        ("backbone (random init)", lambda r: f"{r['family']} h{r['hidden_size']} x{r['num_blocks']} @{r['image_size']}px"),
        ("accuracy (crop+disease)", lambda r: f"{r['accuracy']:.3f}"),
        ("crop accuracy (router)", lambda r: f"{r['crop_accuracy']:.3f}"),
        ("accepted", lambda r: f"{r['accepted']:.3f}"),
        ("accuracy of accepted", lambda r: f"{r['accepted_accuracy']:.3f}"),
        ("OOD sent to review", lambda r: f"{r['ood_review_rate']:.3f}"),
        *[(f"  {k}", (lambda k: lambda r: f"{r['ood_review_rate_by_kind'][k]:.3f}")(k))
          for k in ("noise", "pattern", "unseen_leaf")],
        ("mean blocks used", lambda r: f"{r['mean_blocks_used']:.2f} / {r['num_blocks']}"),
        ("dynamic depth agreement", lambda r: f"{r['dynamic_agreement_with_full_depth']:.3f}"
         if "dynamic_agreement_with_full_depth" in r else "off"),
    ]
    width = max(len(n) for n, _ in rows) + 2
    print(f"{'':{width}}" + "".join(f"{v:>24}" for v in VERSIONS))
    for name, fmt in rows:
        print(f"{name:{width}}" + "".join(f"{fmt(results[v]):>24}" for v in VERSIONS))
    ok = all(r["accuracy"] >= TARGET_ACCURACY and r["ood_review_rate"] >= TARGET_OOD_REVIEW for r in results.values())
    print(f"targets (accuracy >= {TARGET_ACCURACY}, OOD review >= {TARGET_OOD_REVIEW}): {'met' if ok else 'NOT met'}")
    doc = {"command": "benchmarks/eval_demo_models.py", "machine": _machine(), "per_class": args.per_class,
           "ood_per_kind": args.ood_per_kind, "targets": {"accuracy": TARGET_ACCURACY, "ood_review": TARGET_OOD_REVIEW},
           "met": ok, "results": results}
    if not args.no_write:
        write_json(args.out, doc)
        print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
