"""What the router pass costs: one batch diagnosed without `crop_hint` (router pass + adapter pass)
against the same batch with each image's true crop as its hint (the router pass skipped).

    .venv/bin/python benchmarks/bench_router_share.py [--sets build/models/v5.5.4-dinov3 ...] [--rounds 30]

In one process, per model set: batches of 8 mixed-crop synthetic images, the two ways alternating
round by round (so a busy spell hits both alike); the median of each, and the router's share of the
hint-free batch from the pipeline's own `timings_ms` (router vs adapter vs preprocess). The answer
to "can the router share work with the adapter pass" is in docs/serving-models.md; this measures
what sharing could save at most: the router's share. JSON: docs/benchmarks/router_share.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._common import machine, sayer, write_json  # noqa: E402
from serving import synthetic  # noqa: E402
from serving.manifest import load_manifest  # noqa: E402
from serving.pipeline import Pipeline  # noqa: E402

say = sayer("bench-router-share")
BATCH = 8


def mixed_batch(manifest, seed: int) -> tuple[list, list[str]]:
    """BATCH images cycling through the crops (and their first diseases), with their true crops."""
    pairs = [(crop, disease) for crop, diseases in manifest.crops.items() for disease in diseases[:2]]
    chosen = [pairs[i % len(pairs)] for i in range(BATCH)]
    images = [synthetic.leaf_image(c, d, i, seed=seed, size=160) for i, (c, d) in enumerate(chosen)]
    return images, [c for c, _ in chosen]


def measure(model_dir: Path, rounds: int) -> dict:
    manifest = load_manifest(ROOT / "versions" / model_dir.name)
    pipe = Pipeline.load(model_dir, manifest, device="cpu")
    pipe.warmup()
    images, crops = mixed_batch(manifest, seed=5)
    no_hint, hinted, parts = [], [], {"preprocess": [], "router": [], "adapter": []}
    for n in range(rounds + 1):
        t0 = time.perf_counter()
        got = pipe.diagnose(images, [None] * BATCH)
        t1 = time.perf_counter()
        pipe.diagnose(images, crops)
        t2 = time.perf_counter()
        if n == 0:
            continue  # warms both shapes
        no_hint.append(t1 - t0)
        hinted.append(t2 - t1)
        timings = got[0].timings_ms
        for part in parts:
            parts[part].append(timings.get(part, 0.0))
    med = {k: statistics.median(v) for k, v in parts.items()}
    total = sum(med.values())
    return {"version": manifest.version, "dtype": pipe.info["dtype"], "num_blocks": pipe.info["num_blocks"],
            "hidden_size": pipe.info["hidden_size"], "batch": BATCH, "rounds": rounds,
            "no_hint_ms_median": round(1e3 * statistics.median(no_hint), 2),
            "with_hint_ms_median": round(1e3 * statistics.median(hinted), 2),
            "hint_saves": round(1 - statistics.median(hinted) / statistics.median(no_hint), 3),
            "parts_ms_median": {k: round(v, 2) for k, v in med.items()},
            "router_share_of_parts": round(med["router"] / total, 3) if total else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", type=Path,
                    default=[ROOT / "build" / "models" / v for v in ("v5.5.4-dinov3", "v5.5.3-performance")],
                    help="model set folders named after their version (default: the demo sets of make models)")
    ap.add_argument("--rounds", type=int, default=30, help="timed rounds per set (default 30)")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "router_share.json")
    args = ap.parse_args(argv)
    missing = [str(s) for s in args.sets if not (s / "model_set.json").is_file()]
    if missing:
        print(f"error: no model set in {', '.join(missing)} (make models builds the demo sets)", file=sys.stderr)
        return 2
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    results = {"machine": machine(torch=torch, load=os.getloadavg()[0]), "sets": []}
    for model_dir in args.sets:
        r = measure(model_dir.resolve(), args.rounds)
        results["sets"].append(r)
        say(f"{r['version']}: no hint {r['no_hint_ms_median']} ms, with hint {r['with_hint_ms_median']} ms per batch "
            f"of {BATCH} (hint saves {100 * r['hint_saves']:.0f}%); parts {r['parts_ms_median']}")
    write_json(args.json, results)
    say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
