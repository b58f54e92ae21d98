"""The canary analysis figures between real serving processes, to choose the default thresholds.

Starts `python -m serving` on the demo model sets (build/models, `make models`) and a real
Prometheus (Debian's, scripts/prometheus_tools.sh) scraping them with the repository's rules,
sends every process the same images (synthetic leaves of every crop/disease plus a share of
noise), then prints the analysis figures (orchestrator/canary/queries.py) for pairs:

  same      two processes of the same version (the noise floor a healthy canary shows)
  versions  v5.5.3-performance vs v5.5.4-dinov3 (two different healthy models)

  python benchmarks/canary_figures.py [--images 60] [--json docs/benchmarks/canary-figures.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.canary import PrometheusClient, measure
from orchestrator.canary import queries as q
from serving.manifest import load_manifest
from serving.synthetic import leaf_image, ood_image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def start(version: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "AADS_HOST": "127.0.0.1", "AADS_PORT": str(port), "AADS_LOG_LEVEL": "warning",
           "AADS_MODEL_DIR": str(REPO / "build/models" / version), "AADS_MANIFEST_DIR": str(REPO / "versions" / version),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "serving"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"not ready: {url}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=60, help="requests per process")
    ap.add_argument("--noise-share", type=float, default=0.2, help="share of noise images in the mix")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    tools = Path(subprocess.run(["bash", str(REPO / "scripts/prometheus_tools.sh")], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout.strip().splitlines()[-1])
    tools = tools if tools.is_absolute() else REPO / tools
    slots = {"a1": "v5.5.4-dinov3", "a2": "v5.5.4-dinov3", "b": "v5.5.3-performance"}
    ports = {s: free_port() for s in slots}
    procs = {s: start(v, ports[s]) for s, v in slots.items()}
    work = Path(tempfile.mkdtemp(prefix="canary-figures-"))
    prom_port = free_port()
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "5s"},
              "scrape_configs": [{"job_name": "aads-slots", "static_configs": [
                  {"targets": [f"127.0.0.1:{p}"], "labels": {"slot": s}} for s, p in ports.items()]}]}
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom = subprocess.Popen([str(tools / "prometheus"), f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for s in slots:
            wait(f"http://127.0.0.1:{ports[s]}/ready")
        wait(f"http://127.0.0.1:{prom_port}/-/ready")
        time.sleep(3)
        crops = load_manifest(REPO / "versions" / "v5.5.4-dinov3").crops
        leaves = [png(leaf_image(c, d, i, seed=11)) for i in range(4) for c, ds in crops.items() for d in ds]
        noise = [png(ood_image("noise", i, seed=11)) for i in range(8)]
        every = max(1, round(1 / args.noise_share)) if args.noise_share > 0 else 0
        mix = [noise[i % len(noise)] if every and i % every == 0 else leaves[i % len(leaves)] for i in range(args.images)]
        started = time.time()

        def send(slot: str) -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{ports[slot]}", timeout=120) as c:
                for body in mix:
                    c.post("/v1/diagnose", files={"image": ("x.png", body, "image/png")}).raise_for_status()

        with ThreadPoolExecutor(len(slots)) as pool:
            list(pool.map(send, slots))
        time.sleep(3)
        window = time.time() - started + 2
        out = {"images_per_process": args.images, "noise_share": args.noise_share, "window_s": round(window, 1)}
        with PrometheusClient(f"http://127.0.0.1:{prom_port}") as client:
            for name, cand, live in (("same", "a2", "a1"), ("versions", "b", "a1")):
                f = measure(client, q.matcher("slot", cand), q.matcher("slot", live), window)
                out[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in f.to_dict().items()}
        print(json.dumps(out, indent=2))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=2) + "\n")
        return 0
    finally:
        for p in (*procs.values(), prom):
            p.terminate()
        for p in (*procs.values(), prom):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    raise SystemExit(main())
