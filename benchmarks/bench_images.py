"""Image benchmarks (`make bench-images`): size per version and variant, bytes the two versions'
images share, and a no-change rebuild (cache hit, same image id) next to a cold build.

Runs the real CLI (`python -m orchestrator build ... --json`) against a scratch state dir and a
scratch local tag, so the operator's ledger is untouched. Steps, all in one run:
  1. cold build of v5.5.3-performance (`--no-cache`: every layer, pip downloads included)
  2. the same build again with nothing changed (must be a cache hit: same image id)
  3. v5.5.4-dinov3 on the warm cache
  4. layer sharing between the two images (RootFS layers + `docker history` sizes)
Results: printed as a markdown table and written to docs/benchmarks-images.json (merged, so a
separate `--variant cuda` run adds the CUDA size without losing the CPU figures).

    .venv/bin/python benchmarks/bench_images.py [--variant cpu|cuda] [--skip-cold]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks._common import machine  # noqa: E402

OUT = REPO / "docs" / "benchmarks-images.json"
OLD, NEW = "v5.5.3-performance", "v5.5.4-dinov3"


def cli(env: dict[str, str], *args: str) -> tuple[dict, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "orchestrator", *args, "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"bench-images: orchestrator {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout), seconds


def history(client: docker.DockerClient, image_id: str) -> list[dict]:
    """`docker history`, bottom (base) to top; each entry: Id (an intermediate image or <missing>), Size."""
    return list(reversed(client.api.history(image_id)))


def _key(entry: dict) -> tuple:
    return (entry["Id"],) if entry["Id"] != "<missing>" else (entry.get("CreatedBy"), entry["Size"])


def shared(client, a_id: str, b_id: str) -> dict:
    """Bytes in the history both images have in common (same intermediate images from the bottom),
    checked against the common prefix of their RootFS layers."""
    ha, hb = history(client, a_id), history(client, b_id)
    common = 0
    for x, y in zip(ha, hb):
        if _key(x) != _key(y):
            break
        common += 1
    shared_bytes = sum(e["Size"] for e in ha[:common])
    la, lb = (client.images.get(i).attrs["RootFS"]["Layers"] for i in (a_id, b_id))
    common_layers = next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), min(len(la), len(lb)))
    size_a, size_b = (client.images.get(i).attrs["Size"] for i in (a_id, b_id))
    larger = max(size_a, size_b)
    return {"layers": [len(la), len(lb)], "shared_layers": common_layers, "shared_bytes": shared_bytes,
            "size_bytes": {OLD: size_a, NEW: size_b}, "shared_fraction_of_larger": round(shared_bytes / larger, 4),
            "own_bytes": {OLD: size_a - shared_bytes, NEW: size_b - shared_bytes}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--skip-cold", action="store_true", help="no --no-cache build (keeps the run short)")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="aads-bench-images-"))
    repo = f"127.0.0.1:5000/aads-bench-{secrets.token_hex(3)}"
    (scratch / "orchestrator.yaml").write_text(yaml.safe_dump({
        "registry": repo, "state_dir": str(scratch / "state"), "versions_dir": str(REPO / "versions"),
        "models_dir": str(REPO / "build" / "models")}))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AADS_")},
           "AADS_CONFIG": str(scratch / "orchestrator.yaml"), "PYTHONUNBUFFERED": "1"}
    client = docker.from_env(timeout=3600)
    build = ["build", "--variant", args.variant, "--no-golden"]
    results: dict = {}
    try:
        if not args.skip_cold:
            print(f"cold build of {OLD} ({args.variant}, --no-cache) ...", file=sys.stderr)
            cold, cold_s = cli(env, *build[:1], OLD, *build[1:], "--no-cache")
            results["cold_build_s"] = round(cold_s, 1)
        print(f"no-change rebuild of {OLD} ...", file=sys.stderr)
        first, first_s = cli(env, *build[:1], OLD, *build[1:])
        again, again_s = cli(env, *build[:1], OLD, *build[1:])
        results["cached_rebuild_s"] = round(again_s, 1)
        # (a --no-cache build writes new bytes, e.g. pip's files: the cache holds both, so only
        # two builds with the cache on are expected to give one id)
        results["cache_hit_same_image_id"] = again["image_id"] == first["image_id"]
        print(f"{NEW} on the warm cache ...", file=sys.stderr)
        other, other_s = cli(env, *build[:1], NEW, *build[1:])
        results["second_version_build_s"] = round(other_s, 1)
        results["sharing"] = shared(client, first["image_id"], other["image_id"])
    finally:
        for image in client.images.list():
            for tag in image.tags:
                if tag.startswith(repo + ":"):
                    client.api.remove_image(tag, noprune=True)

    record = {"machine": machine(), "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "engine": client.version()["Version"], **results}
    data = json.loads(OUT.read_text()) if OUT.is_file() else {}
    earlier = data.get(args.variant, {})
    if "cold_build_s" not in record and "cold_build_s" in earlier:  # --skip-cold keeps the last cold figure
        record["cold_build_s"], record["cold_build_at"] = earlier["cold_build_s"], earlier.get("cold_build_at",
                                                                                                earlier.get("at"))
    elif "cold_build_s" in record:
        record["cold_build_at"] = record["at"]
    data[args.variant] = record
    OUT.write_text(json.dumps(data, indent=2) + "\n")

    s = results["sharing"]
    mb = lambda n: f"{n / 1e6:,.0f} MB"  # noqa: E731
    print(f"\n{args.variant} variant, {record['machine']}, engine {record['engine']}\n")
    print("| figure | value |\n| --- | --- |")
    print(f"| image size {OLD} | {mb(s['size_bytes'][OLD])} |")
    print(f"| image size {NEW} | {mb(s['size_bytes'][NEW])} |")
    print(f"| shared by both (layers) | {mb(s['shared_bytes'])} ({s['shared_layers']} of {s['layers'][0]}/{s['layers'][1]}) |")
    print(f"| shared, share of the larger image | {s['shared_fraction_of_larger']:.1%} (target >= 90%) |")
    print(f"| own layers (manifest + models) | {mb(s['own_bytes'][OLD])} / {mb(s['own_bytes'][NEW])} |")
    if "cold_build_s" in record:
        print(f"| cold build (--no-cache) | {record['cold_build_s']} s |")
    print(f"| no-change rebuild | {results['cached_rebuild_s']} s, same image id: {results['cache_hit_same_image_id']} |")
    print(f"| {NEW} on the warm cache | {results['second_version_build_s']} s |")
    print(f"\nwritten to {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
