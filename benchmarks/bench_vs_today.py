"""This service against today's (a git ref's `serving/`), 32 clients, the two measured in turns.

    .venv/bin/python benchmarks/bench_vs_today.py [--family dinov3] [--baseline 27b3114] [--rounds 4] [--seconds 20]
    python3 benchmarks/bench_vs_today.py --device cuda --baseline-dir DIR   # a GPU host: DIR holds today's serving/

`make bench-serving` measures today's service once, after this one: on a machine whose load moves,
that ratio moves with it. Here both services are started at once (the same ViT-S model set of
build/bench-models, micro-batching on, response cache off: the bodies repeat) and 32 closed-loop
clients (mixed crops, no crop_hint) drive them in turns, `--rounds` times each, in the order
this, today, today, this, this, today, ... (ABBA: a trend in the load hits both alike). Only the
service being measured gets requests; the other waits idle. The ratio is that of the summed
requests over the summed seconds. JSON: docs/benchmarks/serving_vs_today_alternating.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import sayer, write_json  # noqa: E402
from benchmarks.bench_ready import extract  # noqa: E402
from benchmarks.bench_serving import (  # noqa: E402
    FAMILIES, MAX_BATCH, Service, closed_loop, machine, request_images, torch_threads_for_load, vit_s_model_set,
)

say = sayer("bench-vs-today")
CLIENTS = 32


def abba(rounds: int) -> list[str]:
    """this, today, today, this, ... : `rounds` turns each."""
    order = []
    for n in range(rounds):
        order += ["this", "today"] if n % 2 == 0 else ["today", "this"]
    return order


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=sorted(FAMILIES), default="dinov3")
    ap.add_argument("--baseline", default="27b3114", help="git ref whose serving/ is today's service (default 27b3114)")
    ap.add_argument("--baseline-dir", type=Path, help="a folder holding today's serving/ package, instead of "
                    "--baseline's git archive (for a host given a copy of the working tree without its history)")
    ap.add_argument("--device", default="cpu", help="AADS_DEVICE of both services: cpu (default) or cuda")
    ap.add_argument("--rounds", type=int, default=4, help="turns per service (default 4)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds per turn (default 20)")
    ap.add_argument("--models", type=Path, default=ROOT / "build" / "bench-models")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "serving_vs_today_alternating.json")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        ap.error("--rounds must be at least 1 and --seconds positive")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a stopped run still stops its services
    if args.baseline_dir and not (args.baseline_dir / "serving" / "__main__.py").is_file():
        print(f"error: --baseline-dir {args.baseline_dir} holds no serving/ package", file=sys.stderr)
        return 2
    threads = torch_threads_for_load()
    load_start = os.getloadavg()[0]
    model_dir = vit_s_model_set(args.family, args.models)
    _, bodies = request_images()
    turns: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-vs-today-") as tmp, contextlib.ExitStack() as stack:
        services = {
            "this": stack.enter_context(Service(model_dir, args.family, MAX_BATCH, 5.0, threads, device=args.device)),
            "today": stack.enter_context(Service(model_dir, args.family, MAX_BATCH, 5.0, threads, device=args.device,
                                                 code=(args.baseline_dir or extract(args.baseline, Path(tmp))).resolve())),
        }
        for name in services:  # one short warm turn each, not counted
            asyncio.run(closed_loop(services[name].url, bodies, CLIENTS, 3.0, 10_000))
        for n, name in enumerate(abba(args.rounds)):
            r = asyncio.run(closed_loop(services[name].url, bodies, CLIENTS, args.seconds, 10_000))
            r.update(service=name, turn=n + 1, load_average=round(os.getloadavg()[0], 2), at=time.strftime("%H:%M:%S"))
            turns.append(r)
            say(f"turn {n + 1} {name:<5}: {r['requests_per_s']:6.2f} req/s, p50 {r['p50_ms']:6.0f} ms "
                f"({r['requests']} requests, {r['statuses']}, load {r['load_average']})")
    summary = {}
    for name in ("this", "today"):
        mine = [t for t in turns if t["service"] == name]
        seconds = sum(t["seconds"] for t in mine)
        answered = sum(t["statuses"].get("200", 0) for t in mine)
        summary[name] = {"answered": answered, "requests": sum(t["requests"] for t in mine),
                         "seconds": round(seconds, 2), "requests_per_s": round(answered / seconds, 3),
                         "per_turn": [round(t["requests_per_s"], 3) for t in mine]}
    ratio = summary["this"]["requests_per_s"] / summary["today"]["requests_per_s"]
    pairs = [summary["this"]["per_turn"][i] / summary["today"]["per_turn"][i] for i in range(args.rounds)]
    result = {"command": "python benchmarks/bench_vs_today.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(load_start),
              "family": args.family, "version": FAMILIES[args.family], "baseline": args.baseline,
              "device": args.device,
              "clients": CLIENTS, "max_batch": MAX_BATCH, "torch_threads": threads, "seconds_per_turn": args.seconds,
              "summary": summary, "ratio": round(ratio, 3), "ratio_per_pair": [round(p, 3) for p in pairs],
              "turns": turns}
    write_json(args.json, result)
    say(f"this {summary['this']['requests_per_s']:.2f} req/s, today {summary['today']['requests_per_s']:.2f} req/s: "
        f"{ratio:.2f}x (pairs {', '.join(f'{p:.2f}' for p in pairs)}); wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
