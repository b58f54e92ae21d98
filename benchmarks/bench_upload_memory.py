"""Peak memory of the service under hostile uploads: 32 clients sending the largest allowed images.

`python -m serving` runs as a real process on 127.0.0.1 on a demo model set, with the shipped
defaults (AADS_MAX_PIXELS, AADS_DECODE_CONCURRENCY, ...) unless told otherwise. The "largest
allowed image" is the attack of the hostile-client review: a PNG of exactly AADS_MAX_PIXELS
pixels (RGBA, the widest decode: 4 bytes a pixel) that compresses to little on the wire, plus the
same as a JPEG. Each of `--clients` threads sends its requests back to back (single diagnoses,
then 8-image batches); the server's RSS (psutil, the whole process) is sampled every 20 ms.

For each AADS_DECODE_CONCURRENCY in `--decode`, it prints and records the ready RSS, the peak
RSS, the answers by status, and the bound of docs/security.md:

    peak <= ready + D x 8 B x AADS_MAX_PIXELS + in-flight bodies + held images

Results: docs/benchmarks/upload_memory.json and the "## Upload memory" section of docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_upload_memory.py [--models build/models/v5.5.3-performance]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import free_port, sayer, stop_process  # noqa: E402
from orchestrator.polling import NotYet, PollTimeout, poll_until  # noqa: E402

MB = 1024 * 1024

say = sayer("bench-upload-memory")


def largest_images(max_pixels: int) -> dict[str, bytes]:
    """A PNG (RGBA) and a JPEG of exactly max_pixels (a square, or as close as a whole side allows)."""
    from PIL import Image, ImageDraw

    side = int(max_pixels ** 0.5)
    image = Image.new("RGBA", (side, max_pixels // side), (40, 140, 40, 255))
    draw = ImageDraw.Draw(image)
    for i in range(0, side, 97):  # some structure, still small on the wire
        draw.line([(i, 0), (side - i, image.height)], fill=(200, 60 + i % 150, 30, 255), width=9)
    png, jpeg = io.BytesIO(), io.BytesIO()
    image.save(png, "PNG", optimize=False, compress_level=9)
    image.convert("RGB").save(jpeg, "JPEG", quality=85)
    return {"png": png.getvalue(), "jpeg": jpeg.getvalue()}


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 0.02):
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.every_s = every_s
        self.peak = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except Exception:
                return
            time.sleep(self.every_s)


def post(port: int, path: str, body: bytes, timeout: float = 300) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return -1
    finally:
        conn.close()


def run_level(models: Path, version_dir: Path, decode: int, clients: int, per_client: int,
              env_extra: dict[str, str]) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "AADS_HOST": "127.0.0.1", "AADS_PORT": str(port), "AADS_MODEL_DIR": str(models),
           "AADS_MANIFEST_DIR": str(version_dir), "AADS_DECODE_CONCURRENCY": str(decode),
           "AADS_LOG_LEVEL": "warning", "HF_HUB_OFFLINE": "1", **env_extra}
    from serving.settings import Settings

    settings = Settings.from_env(env)
    images = largest_images(settings.max_pixels)
    bodies = {
        "single-png": ("/v1/diagnose", json.dumps({"image": base64.b64encode(images["png"]).decode()}).encode()),
        "single-jpeg": ("/v1/diagnose", json.dumps({"image": base64.b64encode(images["jpeg"]).decode()}).encode()),
        "batch-8-png": ("/v1/diagnose/batch", json.dumps(
            {"images": [{"image": base64.b64encode(images["png"]).decode()}] * 8}).encode()),
    }
    proc = subprocess.Popen([sys.executable, "-m", "serving"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def ready() -> bool | NotYet:
            if proc.poll() is not None:
                raise SystemExit(f"error: the service exited before it got ready: {proc.stderr.read()[-1000:]}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/ready")
                status = c.getresponse().status
            except OSError as e:
                return NotYet(f"/ready unreachable ({type(e).__name__})")
            return status == 200 or NotYet(f"/ready answered {status}")
        try:
            poll_until(ready, timeout=300, interval=0.2, what="the service to get ready")
        except PollTimeout as e:
            proc.kill()  # its stderr ends only when it does
            raise SystemExit(f"error: {e}: {proc.stderr.read()[-1000:]}") from None
        import psutil

        time.sleep(1.0)
        ready_rss = psutil.Process(proc.pid).memory_info().rss
        sampler = RssSampler(proc.pid)
        sampler.start()
        statuses: dict[str, dict[int, int]] = {k: {} for k in bodies}
        lock = threading.Lock()

        def client(i: int) -> None:
            for n in range(per_client):
                kind = list(bodies)[(i + n) % len(bodies)]
                path, body = bodies[kind]
                status = post(port, path, body)
                with lock:
                    statuses[kind][status] = statuses[kind].get(status, 0) + 1

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(900)
        seconds = time.monotonic() - started
        time.sleep(0.5)
        sampler.stop_event.set()
        sampler.join(5)
    finally:
        stop_process(proc, 60)
    body_max = max(len(b) for _, b in bodies.values())
    from serving.images import held_pixels

    held = held_pixels(version_resize(version_dir)) * 3
    in_flight = min(clients, settings.max_connections)
    bound = (ready_rss + decode * 8 * settings.max_pixels
             + in_flight * 3 * body_max + min(settings.queue_size, in_flight * 8) * held)
    return {
        "decode_concurrency": decode, "max_pixels": settings.max_pixels, "clients": clients,
        "requests": clients * per_client, "seconds": round(seconds, 1),
        "image_bytes": {k: len(v) for k, v in images.items()},
        "ready_rss_mb": round(ready_rss / MB, 1), "peak_rss_mb": round(sampler.peak / MB, 1),
        "growth_mb": round((sampler.peak - ready_rss) / MB, 1),
        "decode_term_mb": round(decode * 8 * settings.max_pixels / MB, 1),
        "bound_mb": round(bound / MB, 1),
        "statuses": {k: {str(s): n for s, n in v.items()} for k, v in statuses.items()},
    }


def version_resize(version_dir: Path) -> int:
    from serving.manifest import load_manifest

    return load_manifest(version_dir).backbone.resize_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=str(ROOT / "build" / "models" / "v5.5.3-performance"),
                    help="a model set (default: the v5.5.3 demo set)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--per-client", type=int, default=3, help="requests each client sends (default 3)")
    ap.add_argument("--decode", default="1,2,4", help="AADS_DECODE_CONCURRENCY values to measure (default 1,2,4)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "upload_memory.json"))
    args = ap.parse_args(argv)
    models = Path(args.models)
    if not (models / "model_set.json").is_file():
        print(f"error: {models} is not a model set (make models)", file=sys.stderr)
        return 2
    version = json.loads((models / "model_set.json").read_text()).get("version") or models.name
    version_dir = ROOT / "versions" / version
    levels = []
    for decode in [int(x) for x in args.decode.split(",")]:
        say(f"AADS_DECODE_CONCURRENCY={decode}: {args.clients} clients x {args.per_client} requests")
        level = run_level(models, version_dir, decode, args.clients, args.per_client, {})
        say(f"  ready {level['ready_rss_mb']} MB, peak {level['peak_rss_mb']} MB "
            f"(+{level['growth_mb']} MB; decode term {level['decode_term_mb']} MB; bound {level['bound_mb']} MB) "
            f"in {level['seconds']} s; {level['statuses']}")
        levels.append(level)
    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "model_set": str(models), "version": version, "levels": levels}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
