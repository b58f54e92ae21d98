"""fp32 against bf16 (weights held in bf16, fp32 pooling) for the four backbones, side by side.

    .venv/bin/python benchmarks/bench_precision.py          (make bench-backbones runs it too)

DINOv3 ViT-S/16, ViT-B/16 and DINOv2 ViT-S/14, ViT-B/14, random weights of the real configs,
224 px, batch 1 and 8, the two precisions interleaved round by round in one process (load from
other processes hits both alike). Next to each figure: its share of the machine's peak FLOP/s
for the cores used (clock x cores x FLOP per cycle: AVX-512 FMA for fp32; AVX512-BF16 and,
where the CPU has it, AMX for bf16), and how far bf16 moves the pooled feature the heads read
(cosine to fp32). Decision agreement is measured per version on model sets (serving.precision,
`dtype_agreement` in model_set.json). Writes docs/benchmarks/precision.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import write_json  # noqa: E402

import torch

from serving.backbones import REAL_SIZES, EncoderView, real_size_backbone
from serving.precision import cpu_flags

NAMES = {("dinov3", "S"): "ViT-S/16", ("dinov3", "B"): "ViT-B/16", ("dinov2", "S"): "ViT-S/14",
         ("dinov2", "B"): "ViT-B/14"}
PATCH = {"dinov2": 14, "dinov3": 16}
PREFIX = {"dinov2": 1, "dinov3": 5}  # CLS (+ 4 registers)
ROUNDS = {1: 6, 8: 3}


def forward_flops(family: str, size: str, image: int = 224) -> float:
    """Multiply-adds x 2 of one image through the encoder: projections, MLP, attention."""
    cfg = REAL_SIZES[size]
    d, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    n = (image // PATCH[family]) ** 2 + PREFIX[family]
    per_layer = 2 * (4 * n * d * d + 8 * n * d * d) + 2 * 2 * n * n * d
    embed = 2 * (image // PATCH[family]) ** 2 * 3 * PATCH[family] ** 2 * d
    return layers * per_layer + embed


def peak_flops(threads: int) -> dict:
    """Peak FLOP/s of `threads` cores from the clock and vector width (per-cycle figures of the ISA)."""
    mhz = None
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            mhz = float(line.split(":")[1])
            break
    ghz = (mhz or 2000.0) / 1000
    flags = cpu_flags()
    # Two 512-bit FMA units: 2 x 16 fp32 lanes x 2 FLOP; VDPBF16PS doubles the lanes; AMX TDPBF16PS
    # does 16x16x32 multiply-adds per tile op, one per 16 cycles: 1024 FLOP per cycle.
    fp32 = 2 * 16 * 2 if "avx512f" in flags else 2 * 8 * 2
    bf16 = 1024 if "amx_bf16" in flags else (2 * 32 * 2 if "avx512_bf16" in flags else fp32)
    return {"clock_ghz": round(ghz, 3), "threads": threads,
            "fp32_gflops": round(ghz * threads * fp32, 1), "bf16_gflops": round(ghz * threads * bf16, 1),
            "bf16_unit": "AMX" if "amx_bf16" in flags else ("AVX512-BF16" if "avx512_bf16" in flags else "none")}


def timed(model, x) -> float:
    with torch.inference_mode():
        t = time.perf_counter()
        model(pixel_values=x)
        return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="dinov3:S,dinov3:B,dinov2:S,dinov2:B", help="family:size list")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "precision.json")
    args = ap.parse_args()
    threads = torch.get_num_threads()
    peak = peak_flops(threads)
    print(f"peak for {threads} threads: {peak}; load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for spec in args.models.split(","):
        family, size = spec.split(":")
        fp32 = real_size_backbone(family, size).eval()
        bf16 = real_size_backbone(family, size).eval().to(torch.bfloat16)
        flops = forward_flops(family, size)
        for batch in [int(b) for b in args.batches.split(",")]:
            x = torch.randn(batch, 3, 224, 224)
            with torch.inference_mode():
                a = EncoderView(fp32).forward_features(x)
                b = EncoderView(bf16).forward_features(x)  # warm-up too
            cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())
            times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
            timed(fp32, x)
            for r in range(ROUNDS[batch]):
                for name in (("float32", "bfloat16") if r % 2 == 0 else ("bfloat16", "float32")):
                    times[name].append(timed(fp32 if name == "float32" else bf16, x.to(torch.bfloat16)
                                             if name == "bfloat16" else x))
            row = {"model": NAMES[(family, size)], "batch": batch, "gflop_per_image": round(flops / 1e9, 2),
                   "min_pooled_cosine_bf16_vs_fp32": round(cosine, 5)}
            for name, ts in times.items():
                med = statistics.median(ts)
                ips = batch / med
                key = "fp32_gflops" if name == "float32" else "bf16_gflops"
                row[name] = {"img_s": round(ips, 2), "latency_ms": round(med * 1e3, 1),
                             "share_of_peak": round(ips * flops / 1e9 / peak[key], 4)}
            row["speedup"] = round(row["bfloat16"]["img_s"] / row["float32"]["img_s"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
        del fp32, bf16
    doc = {"command": "benchmarks/bench_precision.py", "peak": peak, "load_average_at_end": round(os.getloadavg()[0], 1),
           "torch": torch.__version__, "rows": rows}
    write_json(args.out, doc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
