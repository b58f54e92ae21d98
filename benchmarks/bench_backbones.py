"""DINOv3 vs DINOv2 backbones at matching sizes: latency, throughput, peak memory.

    .venv/bin/python benchmarks/bench_backbones.py          (make bench-backbones)

Random weights of the real configurations (ViT-S/14 vs ViT-S/16, ViT-B/14 vs ViT-B/16; 224px
input; DINOv2 keeps its 518px position table and interpolates it, as the released checkpoints
do), batch 1 and 8. Latency is timed with the two families interleaved round by round in one
process, so load from other processes hits both alike. Peak memory is measured in a fresh
child process per model (CPU: peak RSS growth over the process after loading the model;
CUDA: torch.cuda.max_memory_allocated). Writes docs/benchmarks/bench_backbones.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import write_json  # noqa: E402

import torch  # noqa: E402

from serving.backbones import choose_device_dtype, real_size_backbone  # noqa: E402

NAMES = {("dinov2", "S"): "ViT-S/14", ("dinov3", "S"): "ViT-S/16", ("dinov2", "B"): "ViT-B/14", ("dinov3", "B"): "ViT-B/16"}
ROUNDS = {("S", 1): 7, ("S", 8): 3, ("B", 1): 5, ("B", 8): 2}


def _forward(model, x):
    with torch.inference_mode():
        model(pixel_values=x)
    if x.is_cuda:
        torch.cuda.synchronize()


def memory_child(family: str, size: str) -> dict:
    """Runs in a fresh process: peak memory of batch 1 then batch 8 (peaks only grow)."""
    device, dtype = choose_device_dtype(None, "auto")
    model = real_size_backbone(family, size).to(device=device, dtype=dtype)
    params_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    out = {"params_mib": round(params_mib, 1)}
    for batch in (1, 8):
        x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            _forward(model, x)
            out[f"peak_mib_b{batch}"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        else:
            # Reset the kernel's peak-RSS mark (VmHWM) so building the model does not count.
            Path("/proc/self/clear_refs").write_text("5")
            before = _status_kib("VmRSS")
            _forward(model, x)
            out[f"peak_mib_b{batch}"] = round((_status_kib("VmHWM") - before) / 1024, 1)
            out["rss_mib_with_model"] = round(before / 1024, 1)
    return out


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure_memory(args) -> dict:
    memory = {}
    for size in args.sizes.split(","):
        for f in ("dinov2", "dinov3"):
            proc = subprocess.run([sys.executable, __file__, "--memory-child", f, size]
                                  + (["--threads", str(args.threads)] if args.threads else []), capture_output=True,
                                  text=True, check=True)
            memory[NAMES[(f, size)]] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"memory {NAMES[(f, size)]}: {memory[NAMES[(f, size)]]}", flush=True)
    return memory


def memory_note() -> str:
    if torch.cuda.is_available():
        return "peak_mib_bN: torch.cuda.max_memory_allocated during a batch-N forward (MiB), weights included"
    return ("peak_mib_bN: peak RSS growth during a batch-N forward over the RSS with the model loaded "
            "(MiB, activations and workspace); params_mib: weights")


def machine() -> str:
    import platform

    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), cpu)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return f"{os.cpu_count()}-core {platform.machine()} ({cpu}), {mem:.0f} GiB, {gpu}, torch {torch.__version__}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="S,B", help="comma-separated: S, B")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "bench_backbones.json")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice); 1 is steadier "
                    "on a machine other processes load")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="re-measure memory only, into the existing JSON")
    ap.add_argument("--memory-child", nargs=2, metavar=("FAMILY", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(*args.memory_child)))
        return 0

    if args.memory_only:
        doc = json.loads(args.out.read_text())
        doc["memory"] = measure_memory(args)
        doc["memory_note"] = memory_note()
        write_json(args.out, doc)
        print(f"wrote {args.out}")
        return 0
    device, dtype = choose_device_dtype(None, "auto")
    print(f"machine: {machine()}; {device.type}, {str(dtype).removeprefix('torch.')}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}", flush=True)
    t_start = time.perf_counter()
    load_at_start = round(os.getloadavg()[0], 1)
    results = []
    for size in args.sizes.split(","):
        models = {f: real_size_backbone(f, size).to(device=device, dtype=dtype) for f in ("dinov2", "dinov3")}
        for batch in (1, 8):
            x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
            times = {f: [] for f in models}
            for f, m in models.items():  # warm-up
                _forward(m, x)
            rounds = ROUNDS[(size, batch)] * (5 if device.type == "cuda" else 1)
            for r in range(rounds):
                order = ("dinov2", "dinov3") if r % 2 == 0 else ("dinov3", "dinov2")
                for f in order:
                    t = time.perf_counter()
                    _forward(models[f], x)
                    times[f].append(time.perf_counter() - t)
            row = {"size": size, "batch": batch, "rounds": rounds}
            for f in models:
                med = statistics.median(times[f])
                row[f] = {"model": NAMES[(f, size)], "latency_ms": round(med * 1e3, 1),
                          "throughput_img_s": round(batch / med, 2)}
            row["dinov3_over_dinov2_latency"] = round(row["dinov3"]["latency_ms"] / row["dinov2"]["latency_ms"], 3)
            results.append(row)
            print(f"{size} batch {batch}: {NAMES[('dinov2', size)]} {row['dinov2']['latency_ms']} ms "
                  f"({row['dinov2']['throughput_img_s']} img/s), {NAMES[('dinov3', size)]} "
                  f"{row['dinov3']['latency_ms']} ms ({row['dinov3']['throughput_img_s']} img/s), "
                  f"ratio v3/v2 {row['dinov3_over_dinov2_latency']}", flush=True)
        del models
    memory = measure_memory(args)
    doc = {"command": "make bench-backbones (benchmarks/bench_backbones.py)", "machine": machine(),
           "threads": torch.get_num_threads(), "load_average_at_start": load_at_start,
           "device": device.type, "dtype": str(dtype).removeprefix("torch."), "input": "224x224",
           "weights": "random init, real configs", "latency": results,
           "memory_note": memory_note(),
           "memory": memory, "seconds": round(time.perf_counter() - t_start, 1)}
    if not args.no_write:
        write_json(args.out, doc)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
