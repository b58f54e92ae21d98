"""`make bench-ready`: time from `python -m serving` to `/ready`, today's code against a baseline.

For each demo model set (build/models/<version>, `make models`) and each `--set VERSION=DIR`
(e.g. the ViT-L/16 set of benchmarks/build_large_set.py), in one run on one machine: start the
service as a real process on 127.0.0.1, poll /ready every 100 ms, record the seconds from spawn
to the first 200, read its start-up phases from /metrics (`aads_ready_phase_seconds{phase}`),
stop it. Each baseline is the `serving/` package of a git ref (`--baseline`, repeatable; default
the commit before the speed work) extracted with `git archive` into a scratch directory, so all
run from the same venv. Each is started `--runs` times, alternating, and the best and median are
kept (other work on the machine only adds time).

Results: docs/benchmarks/ready.json and the "## Serving: time to ready" section of
docs/benchmarks.md. Inside the image, add the bytecode the Dockerfile now compiles; see there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import free_port, pythonpath_first, sayer, stop_process, write_json  # noqa: E402

say = sayer("bench-ready")
VERSIONS = ("v5.5.4-dinov3", "v5.5.3-performance")
BASELINE = "27b3114"  # main before issue 16 (fp32, no phases, from_pretrained, hashing first)
POLL_S = 0.1
# The phase label comes first; later label sets (version=...) follow it.
PHASE_LINE = re.compile(r'^aads_ready_phase_seconds\{phase="([a-z_]+)"[^}]*\} ([0-9.e+-]+)$', re.MULTILINE)


def extract(ref: str, into: Path) -> Path:
    """The `serving/` package of git `ref`, unpacked under `into` (for PYTHONPATH)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "serving"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def time_to_ready(code: Path, version: str, model_dir: Path, timeout: float = 300.0) -> dict:
    """Spawn the service from `code`, return seconds to /ready and the phases it reports."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": pythonpath_first(code), "AADS_MODEL_DIR": str(model_dir),
           "AADS_MANIFEST_DIR": str(ROOT / "versions" / version), "AADS_PORT": str(port), "AADS_HOST": "127.0.0.1",
           "AADS_LOG_LEVEL": "warning"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "serving"], env=env, cwd=str(code),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while time.perf_counter() - started < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"{version} from {code} exited {proc.returncode}: {proc.stderr.read().decode()[-400:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                    if r.status == 200:
                        seconds = time.perf_counter() - started
                        break
            except OSError:
                pass
            # As often as a prober would (the orchestrator polls every 0.25 s): answering a probe takes the
            # GIL from the loading thread, and polling every 20 ms measured 3 s slower here.
            time.sleep(POLL_S)
        else:
            raise RuntimeError(f"{version} from {code}: not ready within {timeout:.0f}s")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            phases = {m[0]: float(m[1]) for m in PHASE_LINE.findall(r.read().decode())}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/version", timeout=5) as r:
            model = json.loads(r.read()).get("model") or {}
        return {"seconds": round(seconds, 3), "phases": phases, "dtype": model.get("dtype")}
    finally:
        stop_process(proc, 20)


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Time from `python -m serving` to /ready: this tree against a baseline "
                                 "git ref, both from this venv, on the demo model sets (make models).")
    ap.add_argument("--baseline", action="append", help=f"git ref whose serving/ is a 'before'; repeat for several "
                    f"(default {BASELINE})")
    ap.add_argument("--no-baseline", action="store_true", help="time this tree only (e.g. on a host without the "
                    "git history, such as a GPU machine given a copy of the working tree)")
    ap.add_argument("--runs", type=int, default=3, help="starts per code tree and version (default 3)")
    ap.add_argument("--versions", nargs="*", default=list(VERSIONS), help="demo sets under build/models "
                    "(default both; none with --versions and no names)")
    ap.add_argument("--set", action="append", default=[], metavar="VERSION=DIR",
                    help="also time the model set in DIR with versions/VERSION's manifest (repeatable)")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "ready.json",
                    help="where the results go (default docs/benchmarks/ready.json)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a stopped run still stops its service
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if args.no_baseline and args.baseline:
        ap.error("--no-baseline and --baseline exclude each other")
    baselines = [] if args.no_baseline else args.baseline or [BASELINE]
    missing = [v for v in args.versions if not (ROOT / "build" / "models" / v / "model_set.json").is_file()]
    if missing:
        print(f"error: no demo model set for {', '.join(missing)} under build/models (run make models)", file=sys.stderr)
        return 2
    sets = [(v, v, ROOT / "build" / "models" / v) for v in args.versions]  # (label, version, model dir)
    for spec in args.set:
        version, sep, where = spec.partition("=")
        model_dir = Path(where).resolve()
        if not sep or not (ROOT / "versions" / version / "version.yaml").is_file():
            print(f"error: --set {spec}: expected VERSION=DIR with VERSION one of versions/", file=sys.stderr)
            return 2
        if not (model_dir / "model_set.json").is_file():
            print(f"error: --set {spec}: {model_dir} holds no model_set.json", file=sys.stderr)
            return 2
        sets.append((f"{version}@{model_dir.name}", version, model_dir))
    if not sets:
        print("error: nothing to time (no --versions and no --set)", file=sys.stderr)
        return 2
    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                 "python": platform.python_version()},
                     "baselines": baselines, "runs": args.runs, "versions": {}}
    with tempfile.TemporaryDirectory(prefix="bench-ready-") as tmp:
        trees = {f"before {ref}": extract(ref, Path(tmp) / str(i)) for i, ref in enumerate(baselines)}
        trees["after"] = ROOT
        for label, version, model_dir in sets:
            got: dict[str, list[dict]] = {name: [] for name in trees}
            for run in range(args.runs):
                for name, code in trees.items():  # alternating, so a busy spell hits all alike
                    r = time_to_ready(code, version, model_dir)
                    r["load_average"] = load_average()
                    got[name].append(r)
                    say(f"{label} {name} run {run + 1}: {r['seconds']:.2f}s ({r['dtype']}) {r['phases'] or ''}")
            summary = {}
            for name, rows in got.items():
                secs = [r["seconds"] for r in rows]
                best = min(rows, key=lambda r: r["seconds"])
                summary[name] = {"best_s": min(secs), "median_s": round(statistics.median(secs), 3),
                                 "dtype": best["dtype"], "phases_of_best": best["phases"], "runs": rows}
            results["versions"][label] = summary
            say(f"{label}: " + ", ".join(f"{name} best {s['best_s']:.2f}s" for name, s in summary.items()))
    write_json(args.json, results)
    say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
