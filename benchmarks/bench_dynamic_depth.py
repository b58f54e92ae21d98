"""Dynamic block count (v5.5.4-dinov3): latency reduction and decision agreement vs full depth.

    .venv/bin/python benchmarks/bench_dynamic_depth.py      (second half of make bench-backbones)

On the demo model set of v5.5.4-dinov3 (built first if missing), held-out synthetic images
(in-distribution + OOD) are served through Pipeline.diagnose with the calibrated threshold
from model_set.json, with the manifest's uncalibrated threshold, and at full depth; the three
are interleaved batch by batch in one process. Agreement = same (decision, reason, crop,
disease) as full depth. Writes docs/benchmarks/bench_dynamic_depth.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import write_json  # noqa: E402

from serving import synthetic  # noqa: E402
from serving.demo_models import TEST_SEED_OFFSET, build_model_set  # noqa: E402
from serving.dynamic_depth import FULL_DEPTH, DepthPolicy  # noqa: E402
from serving.manifest import load_manifest  # noqa: E402
from serving.pipeline import Pipeline  # noqa: E402

VERSION = "v5.5.4-dinov3"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=ROOT / "build" / "models")
    ap.add_argument("--per-class", type=int, default=16)
    ap.add_argument("--ood-per-kind", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "bench_dynamic_depth.json")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    version_dir, model_dir = ROOT / "versions" / VERSION, args.models_dir / VERSION
    build_model_set(version_dir, model_dir, log=lambda m: print(m, file=sys.stderr))
    manifest = load_manifest(version_dir)
    pipe = Pipeline.load(model_dir, manifest)
    pipe.warmup()
    doc = pipe.model_set
    seed, canvas = doc["training"]["seed"] + TEST_SEED_OFFSET, doc["synthetic_set"]["canvas"]
    images = [synthetic.leaf_image(c, d, i, seed=seed, size=canvas)
              for c, ds in manifest.crops.items() for d in ds for i in range(args.per_class)]
    images += [synthetic.ood_image(k, i, seed=seed, size=canvas) for k in synthetic.OOD_KINDS
               for i in range(args.ood_per_kind)]
    policies = {
        "full_depth": FULL_DEPTH,
        "calibrated": pipe.policy,
        "manifest_threshold": DepthPolicy(True, pipe.policy.min_blocks, manifest.dynamic_blocks.threshold),
        # Every sample leaves at the minimum depth: the most early exit can save, and what it costs.
        "exit_at_min_blocks": DepthPolicy(True, pipe.policy.min_blocks, -1.0),
    }
    key = lambda g: (g.decision, g.reason, g.crop, g.disease)  # noqa: E731
    out = {"version": VERSION, "model_set": str(model_dir.relative_to(ROOT)) if model_dir.is_relative_to(ROOT) else str(model_dir),
           "num_blocks": pipe.view.num_layers, "min_blocks": pipe.policy.min_blocks,
           "calibrated_threshold": pipe.policy.threshold, "manifest_threshold": manifest.dynamic_blocks.threshold,
           "images": len(images), "device": pipe.info["device"], "batches": {}}
    print(f"{VERSION}: {pipe.view.num_layers} blocks, min {pipe.policy.min_blocks}, calibrated threshold "
          f"{pipe.policy.threshold}, {len(images)} images ({pipe.info['device']})")
    for batch in (1, 8):
        times = {k: [] for k in policies}
        decisions = {k: [] for k in policies}
        blocks = {k: [] for k in policies}
        for b in range(0, len(images), batch):
            chunk = images[b:b + batch]
            names = list(policies) if (b // batch) % 2 == 0 else list(reversed(policies))
            for name in names:
                t = time.perf_counter()
                got = pipe.diagnose(chunk, [None] * len(chunk), policy=policies[name])
                times[name].append(time.perf_counter() - t)
                decisions[name] += [key(g) for g in got]
                blocks[name] += [g.blocks_used for g in got]
        full_total = sum(times["full_depth"])
        row = {}
        for name in policies:
            total = sum(times[name])
            row[name] = {
                "total_s": round(total, 3), "median_batch_ms": round(statistics.median(times[name]) * 1e3, 2),
                "latency_reduction": round(1 - total / full_total, 4),
                "agreement": round(sum(a == f for a, f in zip(decisions[name], decisions["full_depth"])) / len(images), 4),
                "mean_blocks": round(sum(blocks[name]) / len(images), 3),
            }
            print(f"batch {batch} {name:>18}: {row[name]['median_batch_ms']:8.2f} ms/batch, "
                  f"reduction {row[name]['latency_reduction']:+.1%}, agreement {row[name]['agreement']:.3f}, "
                  f"mean blocks {row[name]['mean_blocks']:.2f}")
        out["batches"][str(batch)] = row
    out["command"] = "make bench-backbones (benchmarks/bench_dynamic_depth.py)"
    if not args.no_write:
        write_json(args.out, out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
