"""A real-size model set for the ready benchmark: DINOv3 ViT-L/16, published config, RANDOM weights.

    .venv/bin/python benchmarks/build_large_set.py --out build/large     # then:
    .venv/bin/python benchmarks/bench_ready.py --set v5.5.4-dinov3=build/large/set --runs 3

No machine here can download the real weights, so the checkpoint is `write_random_checkpoint`
of `facebook/dinov3-vitl16-pretrain-lvd1689m` (24 blocks, width 1024, 303 M parameters, 1.2 GB
of fp32 safetensors in 200 MB shards as the Hub serves large checkpoints), at the published
preprocessing (224 px). The set is built by the real `serving.build_model_set` code with as
little training as it accepts (synthetic images, 1 epoch, few calibration images): what is
measured with it is the start-up (reading, hashing, building, warming up 1.2 GB of weights),
not accuracy. Nothing it writes belongs in git: keep `--out` under build/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_ID = "facebook/dinov3-vitl16-pretrain-lvd1689m"
VERSION = "v5.5.4-dinov3"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write a random-weight DINOv3 ViT-L/16 checkpoint (published config) "
                                 "and build a minimal model set from it for benchmarks/bench_ready.py.")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "large",
                    help="work folder: checkpoint/, data/, set/ (default build/large)")
    ap.add_argument("--per-class", type=int, default=6, help="synthetic images per class (default 6)")
    args = ap.parse_args(argv)
    if args.per_class < 4:
        ap.error("--per-class must be at least 4 (the builder holds some out per class)")

    from serving import synthetic
    from serving.build_model_set import BuildOptions, build
    from serving.checkpoints import write_random_checkpoint
    from serving.manifest import load_manifest

    started = time.perf_counter()
    ckpt, data, out = args.out / "checkpoint", args.out / "data", args.out / "set"
    if not (ckpt / "config.json").is_file():
        print(f"build-large-set: writing random {MODEL_ID} checkpoint to {ckpt}", file=sys.stderr, flush=True)
        write_random_checkpoint(MODEL_ID, ckpt, seed=0, max_shard_size="200MB")
    if not data.is_dir():
        crops = load_manifest(ROOT / "versions" / VERSION).crops
        synthetic.generate(data, crops, per_class=args.per_class, seed=0, size=256)
    options = BuildOptions(device="cpu", epochs=1, batch_size=8, model_id=MODEL_ID, random_init=True, synthetic=True,
                           calibration_images=32, golden_per_crop=1, feature_batch_size=8,
                           extra={"purpose": "bench_ready ViT-L/16 start-up figure; random weights, minimal training"})
    build(ROOT / "versions" / VERSION, ckpt, data, out, options,
          log=lambda m: print(f"build-large-set: {m}", file=sys.stderr, flush=True))
    print(f"build-large-set: {out} built in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
