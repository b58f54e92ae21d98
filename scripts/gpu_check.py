"""GPU check: the real model path on a CUDA device, in one short run (`make gpu-check`).

    python3 scripts/gpu_check.py --out build/gpu-check            # on the GPU machine (< 6 min on an H100)
    PYTHONPATH=wheels python3 -u scripts/gpu_check.py --out "$OUT"  # fastapi & co. carried as wheels
    python3 scripts/gpu_check.py --device cpu --quick --out DIR   # here, on the CPU, to test the script

Needs only python3 with torch, transformers (>= 5.24), peft, safetensors, numpy, pillow, httpx,
pyyaml, prometheus-client and rich; fastapi, starlette, uvicorn, pydantic, python-multipart (and a
newer transformers, where the host's is older) may come as wheels on PYTHONPATH. No network, no Docker. Checkpoints are the published configs of
DINOv3 ViT-S/16, ViT-L/16 (and ViT-B/16, the production size) and DINOv2 ViT-B/14 with RANDOM
weights, saved in Hub format and loaded by the real loading code. For each:

1. build a small model set on the device with serving.build_model_set (synthetic images);
2. serve it through the real HTTP app (uvicorn on 127.0.0.1) until /ready (its start-up phases and
   precision read back), diagnose over HTTP, resend images and expect X-Cache miss then hit;
3. compare bf16 and fp32 decisions (and OOD scores) on the held-out images;
4. measure images/s at batch 1, 8 and 32 through the pipeline as served (and forced to bf16 where
   the precision rule refused it);
5. record the peak device memory of the loaded version serving batch 32 (what the blue/green
   GPU-room check needs);
6. (first two sets) the service's batcher against a naive one-request-at-a-time service, 32 clients,
   response cache off in both.

A hard time budget (--budget-s) skips the remaining parts, saying so, rather than overrun.
Writes gpu_check.json and gpu_check.md to --out. Exit 0 when every part that ran passed.
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from serving import synthetic  # noqa: E402
from serving.build_model_set import BuildOptions, build, dtype_agreement  # noqa: E402
from serving.checkpoints import write_random_checkpoint  # noqa: E402
from serving.manifest import load_manifest  # noqa: E402
from serving.pipeline import Pipeline  # noqa: E402

BATCHES = (1, 8, 32)
CLIENTS = 32
API_KEY = "gpu-check:gpu-check-key-0001"

# (label, version, model id, seconds its build needs on an H100, generously); the order is the
# priority when time runs short.
PLAN = [
    ("DINOv3 ViT-S/16", "v5.5.4-dinov3", "facebook/dinov3-vits16-pretrain-lvd1689m", 30),
    ("DINOv2 ViT-B/14", "v5.5.3-performance", "facebook/dinov2-base", 40),
    ("DINOv3 ViT-L/16", "v5.5.4-dinov3", "facebook/dinov3-vitl16-pretrain-lvd1689m", 70),
    ("DINOv3 ViT-B/16", "v5.5.4-dinov3", "facebook/dinov3-vitb16-pretrain-lvd1689m", 40),
]


class Budget:
    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    @property
    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def allows(self, need: float) -> bool:
        return self.left > need


def log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------- parts
def make_inputs(work: Path, label: str, model_id: str, version: str, quick: bool) -> tuple[Path, Path]:
    """A random checkpoint of the published config (sharded, as large downloads are) + synthetic data."""
    ckpt = work / "checkpoints" / model_id.split("/")[-1]
    if not ckpt.is_dir():
        overrides = {"num_hidden_layers": 4} if quick else None
        write_random_checkpoint(model_id, ckpt, seed=0, max_shard_size="200MB", overrides=overrides)
    data = work / "data" / version
    if not data.is_dir():
        crops = load_manifest(ROOT / "versions" / version).crops
        synthetic.generate(data, crops, per_class=6 if quick else 16, seed=0, size=128 if quick else 256)
    return ckpt, data


def build_set(work: Path, version: str, ckpt: Path, data: Path, model_id: str, device: str, quick: bool,
              epochs: int = 1) -> Path:
    out = work / "sets" / f"{version}-{model_id.split('/')[-1]}"
    options = BuildOptions(device=device, epochs=epochs, batch_size=16, model_id=model_id, random_init=True,
                           synthetic=True, calibration_images=200, golden_per_crop=1,
                           image_size=112 if quick else None, resize_size=128 if quick else None,
                           extra={"gpu_check": True})
    build(ROOT / "versions" / version, ckpt, data, out, options, log=lambda m: log(f"  {m}"))
    return out


def heldout_images(model_dir: Path, data: Path, limit: int = 96) -> list:
    from PIL import Image

    paths = sorted(data.rglob("*.png"))[::3][:limit]
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    golden = model_dir / "golden"
    for p in sorted(golden.glob("*.png")):
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    return out


def compare_dtypes(model_dir: Path, version: str, images: list, device: str) -> dict:
    manifest = load_manifest(ROOT / "versions" / version)
    result = dtype_agreement(model_dir, manifest, images, device)
    if result["serving_dtype"] != "float32":
        # How far scores move, besides whether decisions flip.
        # The serving dtype forced: where the precision rule refused it, a default load would be fp32 again.
        a = Pipeline.load(model_dir, manifest, device=device, verify=False, dtype=result["serving_dtype"],
                          dtype_source="gpu-check", check_precision=False)
        b = Pipeline.load(model_dir, manifest, device=device, verify=False, dtype="float32")
        da = a.diagnose(images[:32], [None] * len(images[:32]))
        db = b.diagnose(images[:32], [None] * len(images[:32]))
        result["max_ood_score_change"] = max(abs(x.ood_score - y.ood_score) / max(1e-9, abs(y.ood_score))
                                             for x, y in zip(da, db))
        result["max_confidence_change"] = max(abs(x.confidence - y.confidence) for x, y in zip(da, db))
        del a, b
    return result


def throughput(model_dir: Path, version: str, images: list, device: str, budget: Budget) -> dict:
    """Images/s of the pipeline as the service loads it (and, on a bf16 GPU where the set was refused
    bf16, of the same set forced to bf16: what bf16 would buy), plus the served pipeline's peak memory."""
    manifest = load_manifest(ROOT / "versions" / version)
    if device.startswith("cuda"):
        gc.collect()  # the servers and pipelines of earlier parts must not count here
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    pipe = Pipeline.load(model_dir, manifest, device=device)
    pipe.warmup()
    out: dict = {"dtype": pipe.info["dtype"], "num_blocks": pipe.info["num_blocks"],
                 "hidden_size": pipe.info["hidden_size"], "image_size": pipe.preprocess.image_size}
    pool = (images * (64 // max(1, len(images)) + 1))[:64]
    out["images_per_s"] = _images_per_s(pipe, pool, device, budget)
    if device.startswith("cuda"):
        out["peak_memory_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
        out["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
        out["allocated_before_mib"] = round(base / 2**20, 1)
    served_fp32 = pipe.info["dtype"] == "float32"
    del pipe
    if device.startswith("cuda") and served_fp32 and torch.cuda.is_bf16_supported() and budget.allows(30):
        forced = Pipeline.load(model_dir, manifest, device=device, verify=False, dtype="bfloat16",
                               dtype_source="gpu-check", check_precision=False)
        forced.warmup()
        out["images_per_s_forced_bf16"] = _images_per_s(forced, pool, device, budget)
        del forced
    return out


def _images_per_s(pipe: Pipeline, pool: list, device: str, budget: Budget) -> dict:
    result: dict = {}
    for bs in BATCHES:
        if not budget.allows(20):
            result[str(bs)] = "skipped: time budget"
            continue
        batch = pool[:bs]
        pipe.diagnose(batch, [None] * bs)  # warm this shape
        _sync(device)
        n, t0 = 0, time.perf_counter()
        while n < max(3, 64 // bs) or time.perf_counter() - t0 < 1.0:
            pipe.diagnose(batch, [None] * bs)
            n += 1
            if time.perf_counter() - t0 > 4:
                break
        _sync(device)
        result[str(bs)] = round(n * bs / (time.perf_counter() - t0), 1)
    return result


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------- HTTP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The real app (serving.app.create_app) on uvicorn, 127.0.0.1, in a thread of this process."""

    def __init__(self, model_dir: Path, version: str, device: str, max_batch_size: int, cache_entries: int = 1024):
        import uvicorn

        from serving.app import create_app
        from serving.settings import Settings

        self.port = _free_port()
        env = {"AADS_MODEL_DIR": str(model_dir), "AADS_MANIFEST_DIR": str(ROOT / "versions" / version),
               "AADS_DEVICE": device, "AADS_MAX_BATCH_SIZE": str(max_batch_size), "AADS_MAX_WAIT_MS": "5",
               "AADS_QUEUE_SIZE": "1024", "AADS_API_KEYS": API_KEY,
               "AADS_CACHE_ENTRIES": str(cache_entries), "AADS_LOG_LEVEL": "warning"}
        self.app = create_app(Settings.from_env(env))
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Server":
        self.thread.start()
        return self

    def wait_ready(self, timeout: float) -> float:
        import httpx

        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            try:
                r = httpx.get(f"{self.url}/ready", timeout=5)
                if r.status_code == 200:
                    return time.perf_counter() - t0
                if r.status_code == 503 and "failed" in r.text:
                    raise RuntimeError(f"/ready: {r.text[:300]}")
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"/ready not 200 after {timeout:.0f}s")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def _png(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def serve_over_http(model_dir: Path, version: str, images: list, device: str, budget: Budget) -> dict:
    import httpx

    headers = {"X-API-Key": API_KEY.split(":", 1)[1]}
    with Server(model_dir, version, device, max_batch_size=32) as srv:
        ready_s = srv.wait_ready(min(120, max(10, budget.left - 10)))
        with httpx.Client(base_url=srv.url, headers=headers, timeout=60) as client:
            version_doc = client.get("/v1/version").json()
            phases = ready_phases(client.get("/metrics").text)
            answers = [client.post("/v1/diagnose", json={"image": _png(im)}) for im in images[:4]]
            cache = cache_hit_latency(client, images[4:8])
    bad = [r.status_code for r in answers if r.status_code != 200]
    first = answers[0].json() if answers and answers[0].status_code == 200 else {}
    model = version_doc.get("model") or {}
    precision = model.get("precision") or {}
    return {"ready_seconds": round(ready_s, 2), "ready_phases": phases,
            "diagnose_status": [r.status_code for r in answers], "ok": not bad and cache.get("ok", False),
            "random_init": version_doc.get("random_init", model.get("random_init")),
            "serving_dtype": model.get("dtype"), "precision_reason": precision.get("reason"),
            "precision_refused": precision.get("refused"), "cache": cache,
            "version": version_doc.get("version"), "first_answer": first.get("result", first)}


def ready_phases(metrics_text: str) -> dict:
    """`aads_ready_phase_seconds{phase="..."} s` lines of /metrics as {phase: seconds}, parsed as bench_ready does.
    process_start is left out: it counts from this check's own start (the server runs in its process)."""
    from benchmarks.bench_ready import PHASE_LINE

    return {phase: round(float(value), 3) for phase, value in PHASE_LINE.findall(metrics_text)
            if phase != "process_start"}


def cache_hit_latency(client, images: list) -> dict:
    """Each image sent twice: the first should miss the response cache, the second hit it."""
    miss, hit, headers = [], [], []
    for im in images:
        body = {"image": _png(im)}
        for times in (miss, hit):
            t0 = time.perf_counter()
            r = client.post("/v1/diagnose", json=body)
            times.append(time.perf_counter() - t0)
            headers.append((r.status_code, r.headers.get("x-cache")))
    expected = [(200, "miss"), (200, "hit")] * len(images)
    return {"ok": headers == expected, "x_cache": [h for _, h in headers],
            "miss_ms_median": round(1000 * sorted(miss)[len(miss) // 2], 2) if miss else None,
            "hit_ms_median": round(1000 * sorted(hit)[len(hit) // 2], 2) if hit else None}


def batcher_vs_naive(model_dir: Path, version: str, images: list, device: str, budget: Budget,
                     per_client: int) -> dict:
    """Requests/s of 32 concurrent clients against the batching service and a batch-size-1 service."""
    import httpx

    headers = {"X-API-Key": API_KEY.split(":", 1)[1]}
    bodies = [{"image": _png(im)} for im in images[:16]]
    out: dict = {"clients": CLIENTS, "requests_per_client": per_client}
    for name, max_batch in (("batched", 32), ("naive", 1)):
        if not budget.allows(30):
            out[name] = "skipped: time budget"
            continue
        # Response cache off: the clients resend 16 images, which the cache would answer, not the model.
        with Server(model_dir, version, device, max_batch_size=max_batch, cache_entries=0) as srv:
            srv.wait_ready(min(120, max(10, budget.left - 10)))

            def client(k: int) -> int:
                ok = 0
                with httpx.Client(base_url=srv.url, headers=headers, timeout=120) as c:
                    for j in range(per_client):
                        ok += c.post("/v1/diagnose", json=bodies[(k + j) % len(bodies)]).status_code == 200
                return ok

            client(0)  # warm
            t0 = time.perf_counter()
            with ThreadPoolExecutor(CLIENTS) as pool:
                ok = sum(pool.map(client, range(CLIENTS)))
            seconds = time.perf_counter() - t0
        out[name] = {"requests_per_s": round(CLIENTS * per_client / seconds, 1), "ok": ok,
                     "max_batch_size": max_batch}
    if isinstance(out.get("batched"), dict) and isinstance(out.get("naive"), dict):
        out["ratio"] = round(out["batched"]["requests_per_s"] / out["naive"]["requests_per_s"], 2)
        out["target"] = 2.0
    return out


# ----------------------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# GPU check ({env['device_name']}, torch {env['torch']}, transformers {env['transformers']})", "",
             f"Random-weight checkpoints of the published configs; synthetic images. Total {report['seconds']:.0f}s "
             f"of a {report['budget_s']:.0f}s budget.", "",
             "| backbone | version | ready (s) | bf16=fp32 decisions | img/s b1 | img/s b8 | img/s b32 | peak MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["backbones"]:
        tp = r.get("throughput") or {}
        ips = tp.get("images_per_s", {}) if isinstance(tp, dict) else {}
        agree = r.get("dtype") or {}
        agree_s = (f"{agree['agreement']:.4f} ({agree['serving_dtype']}, {agree['images']} img)"
                   if isinstance(agree, dict) and "agreement" in agree else str(agree or "-"))
        http = r.get("http") or {}
        lines.append(f"| {r['label']} | {r['version']} | {http.get('ready_seconds', '-') if isinstance(http, dict) else http} "
                     f"| {agree_s} | {ips.get('1', '-')} | {ips.get('8', '-')} | {ips.get('32', '-')} "
                     f"| {tp.get('peak_memory_mib', '-') if isinstance(tp, dict) else '-'} |")
    forced = [(r["label"], r["throughput"]["images_per_s_forced_bf16"]) for r in report["backbones"]
              if isinstance(r.get("throughput"), dict) and "images_per_s_forced_bf16" in r["throughput"]]
    if forced:
        lines += ["", "The same sets forced to bf16 (what the agreement rule declined), img/s:", "",
                  "| backbone | b1 | b8 | b32 |", "| --- | --- | --- | --- |"]
        lines += [f"| {label} | {ips.get('1', '-')} | {ips.get('8', '-')} | {ips.get('32', '-')} |" for label, ips in forced]
    lines += ["", "| backbone | served in | ready phases (s) | cache miss / hit ms (median) |", "| --- | --- | --- | --- |"]
    for r in report["backbones"]:
        http = r.get("http")
        if isinstance(http, dict):
            phases = ", ".join(f"{k} {v}" for k, v in (http.get("ready_phases") or {}).items())
            cache = http.get("cache") or {}
            lines.append(f"| {r['label']} | {http.get('serving_dtype')} | {phases or '-'} "
                         f"| {cache.get('miss_ms_median')} / {cache.get('hit_ms_median')} |")
    lines += ["", "| backbone | batched req/s | naive req/s | ratio (target >= 2) |", "| --- | --- | --- | --- |"]
    for r in report["backbones"]:
        b = r.get("batcher")
        if isinstance(b, dict):
            bb, nn = b.get("batched"), b.get("naive")
            lines.append(f"| {r['label']} | {bb.get('requests_per_s') if isinstance(bb, dict) else bb} "
                         f"| {nn.get('requests_per_s') if isinstance(nn, dict) else nn} | {b.get('ratio', '-')} |")
    peaks = [(r["version"], r["model_id"], r["throughput"].get("peak_memory_mib"), r["throughput"].get("peak_reserved_mib"))
             for r in report["backbones"] if isinstance(r.get("throughput"), dict)
             and r["throughput"].get("peak_memory_mib") is not None]
    if peaks:
        lines += ["", "Peak device memory of one loaded version serving batch 32 (for the blue/green GPU-room check; "
                  "add ~500 MiB of CUDA context per process):", "",
                  "| version | checkpoint | peak allocated MiB | peak reserved MiB |", "| --- | --- | --- | --- |"]
        lines += [f"| {v} | {m} | {a} | {r} |" for v, m, a, r in peaks]
    if report["skipped"]:
        lines += ["", "Skipped (time budget or error): " + "; ".join(report["skipped"])]
    if report["failures"]:
        lines += ["", "Failures: " + "; ".join(report["failures"])]
    return "\n".join(lines) + "\n"


MIN_TRANSFORMERS = (5, 24)  # pyproject.toml: older 5.x DINOv2 has no q_proj/v_proj for the adapters


def _transformers_too_old() -> str | None:
    import transformers

    have = tuple(int(p) for p in transformers.__version__.split(".")[:2] if p.isdigit())
    if have < MIN_TRANSFORMERS:
        return (f"transformers {transformers.__version__} is older than the {'.'.join(map(str, MIN_TRANSFORMERS))} "
                f"the service needs (its DINOv2 has no q_proj/v_proj for LoRA): carry a newer wheel on PYTHONPATH")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 scripts/gpu_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (to test the script)")
    ap.add_argument("--quick", action="store_true", help="ViT-S only, 4 blocks, small images: a CPU test run")
    ap.add_argument("--budget-s", type=float, help="hard time budget (default 330 on a GPU, 240 with --quick)")
    ap.add_argument("--epochs", type=int, default=1,
                    help="adapter training epochs per set (default 1; on random weights more epochs lower the bf16 "
                         "agreement: the heads then amplify tiny feature differences that bf16 moves)")
    ap.add_argument("--sets", type=int, default=len(PLAN), choices=range(1, len(PLAN) + 1),
                    help=f"how many backbones of the plan to check, in its order (default all {len(PLAN)})")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (checkpoints, data, sets) under --out")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device is visible (run with --device cpu --quick to test the script)", file=sys.stderr)
        return 2
    too_old = _transformers_too_old()
    if too_old:
        print(f"error: {too_old}", file=sys.stderr)
        return 2
    budget = Budget(args.budget_s or (240 if args.quick else 330))
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work" if args.keep else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    import transformers

    report: dict = {"environment": {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "device": args.device, "cuda": torch.version.cuda,
        "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu",
        "bf16_supported": bool(torch.cuda.is_bf16_supported()) if args.device.startswith("cuda") else None,
        "total_memory_mib": (round(torch.cuda.get_device_properties(0).total_memory / 2**20)
                             if args.device.startswith("cuda") else None)},
        "quick": args.quick, "epochs": args.epochs, "budget_s": budget.seconds, "backbones": [], "skipped": [], "failures": [],
        "random_weights": True}
    plan = PLAN[:1] if args.quick else PLAN[:args.sets]
    # Rough seconds each part needs before it is worth starting (build includes training).
    need = {"http": 15, "dtype": 10, "throughput": 25, "batcher": 40}
    try:
        for n, (label, version, model_id, build_need) in enumerate(plan):
            entry: dict = {"label": label, "version": version, "model_id": model_id}
            report["backbones"].append(entry)
            if not budget.allows((60 if args.quick else build_need) + need["throughput"]):
                report["skipped"].append(f"{label}: everything (time budget)")
                continue
            try:
                log(f"{label}: checkpoint + data")
                ckpt, data = make_inputs(work, label, model_id, version, args.quick)
                log(f"{label}: building the model set on {args.device}")
                t = time.perf_counter()
                model_dir = build_set(work, version, ckpt, data, model_id, args.device, args.quick, args.epochs)
                entry["build_seconds"] = round(time.perf_counter() - t, 1)
                images = heldout_images(model_dir, data, limit=32 if args.quick else 96)
                for part, fn in (
                    ("http", lambda: serve_over_http(model_dir, version, images, args.device, budget)),
                    ("dtype", lambda: compare_dtypes(model_dir, version, images, args.device)),
                    ("throughput", lambda: throughput(model_dir, version, images, args.device, budget)),
                    ("batcher", lambda: batcher_vs_naive(model_dir, version, images, args.device, budget,
                                                         per_client=2 if args.quick else 8)),
                ):
                    if part == "batcher" and n > 1:
                        continue
                    if not budget.allows(need[part]):
                        entry[part] = "skipped: time budget"
                        report["skipped"].append(f"{label}: {part}")
                        continue
                    log(f"{label}: {part}")
                    t = time.perf_counter()
                    try:
                        entry[part] = fn()
                    except Exception as e:  # one part failing must not hide the others' figures
                        entry[part] = f"failed: {type(e).__name__}: {e}"
                        report["failures"].append(f"{label} {part}: {type(e).__name__}: {str(e)[:200]}")
                        traceback.print_exc()
                    entry[f"{part}_seconds"] = round(time.perf_counter() - t, 1)
                if not args.keep:
                    shutil.rmtree(model_dir, ignore_errors=True)
            except Exception as e:
                entry["error"] = f"{type(e).__name__}: {e}"
                report["failures"].append(f"{label}: {type(e).__name__}: {str(e)[:200]}")
                traceback.print_exc()
            finally:
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                _write(args.out, report, budget)
    finally:
        _write(args.out, report, budget)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for r in report["backbones"]:
        http = r.get("http")
        if isinstance(http, dict) and not http.get("ok"):
            report["failures"].append(f"{r['label']}: diagnose over HTTP answered {http.get('diagnose_status')}, "
                                      f"X-Cache {(http.get('cache') or {}).get('x_cache')} (want miss, hit per image)")
    _write(args.out, report, budget)
    log(f"wrote {args.out / 'gpu_check.json'} and gpu_check.md in {report['seconds']:.0f}s")
    print(markdown(report))
    return 1 if report["failures"] else 0


def _write(out: Path, report: dict, budget: Budget) -> None:
    report["seconds"] = round(time.perf_counter() - budget.t0, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))


if __name__ == "__main__":
    sys.exit(main())
