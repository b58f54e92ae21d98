"""`make bench-switch`: blue/green switch and rollback on compose, under constant load.

Brings up a stack of its own (compose project `aadsbench-<random>`, edge and slots on free
127.0.0.1 ports, a copy of the project ledger in a temp state dir, so neither the operator's stack
nor its history is touched), then runs, each under a load generator sending requests through the
edge from both kinds of client (a new connection per request, and kept-alive connections):

  1. cold switch  v5.5.3 -> v5.5.4 --keep-previous   (candidate started from nothing)
  2. warm rollback          -> v5.5.3                (the previous slot is still running)
  3. cold switch  v5.5.3 -> v5.5.4                   (old slot drained and stopped)
  4. cold rollback          -> v5.5.3                (previous slot was stopped)
  5. canary switch v5.5.3 -> v5.5.4 --canary 10,50,100 --step 20s (benchmarks/switch_canary.py:
     the same load plus a light diagnosis load; `--canary ''` leaves it out)

For each: requests sent and failed per client kind (target: zero failed), the phases the
orchestrator recorded (resolve, start, ready, smoke, flip, confirm, watch, drain, stop), the
command's wall time, and when the load first saw the new version answer; for the canary run, each
step's time beyond the configured step and the share of requests the candidate answered in it
against the configured share. The stack runs with its monitoring (Prometheus, which the canary
analysis queries) on free ports. Results go to docs/benchmarks/switch.json and the
"## Compose switch" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from benchmarks import switch_canary  # noqa: E402
from benchmarks.loadgen import LoadGenerator, LoadSpec  # noqa: E402
from orchestrator import api_keys  # noqa: E402
from orchestrator.canary.steps import parse_shares  # noqa: E402
from benchmarks._common import free_port, machine, sayer, write_section  # noqa: E402

OLD, NEW = "v5.5.3-performance", "v5.5.4-dinov3"
SECTION = "## Compose switch"
RUNS = [  # (label, argv, from, to)
    ("cold switch, --keep-previous", ["switch", NEW, "--keep-previous"], OLD, NEW),
    ("warm rollback", ["rollback"], NEW, OLD),
    ("cold switch", ["switch", NEW], OLD, NEW),
    ("cold rollback", ["rollback"], NEW, OLD),
]
PHASES = ["resolve", "start", "ready", "smoke", "flip", "confirm", "watch", "drain", "stop", "finish"]

say = sayer("bench-switch")


class BenchStack:
    def __init__(self, work: Path, *, watch_s: float, compose: str | None, monitoring: bool):
        from orchestrator import config as config_mod

        project_cfg = config_mod.load(os.environ.get("AADS_CONFIG"))
        src_ledger = project_cfg.state_path / "ledger.sqlite3"
        if not src_ledger.is_file():
            raise SystemExit(f"error: no ledger at {src_ledger}: run `make images` first (builds and pushes both versions)")
        self.work = work
        self.target = "bench"
        self.project = f"aadsbench-{secrets.token_hex(3)}"
        self.edge_port = free_port()
        state = work / "state"
        self.keys_file = state / "compose" / self.target / "api-keys"  # made by the first `up` (keys on, as shipped)
        state.mkdir(parents=True)
        src, dst = sqlite3.connect(src_ledger), sqlite3.connect(state / "ledger.sqlite3")
        src.backup(dst)
        src.close()
        dst.close()
        self.config = work / "orchestrator.yaml"
        self.config.write_text(yaml.safe_dump({
            "registry": project_cfg.registry, "state_dir": str(state),
            "versions_dir": str(project_cfg.versions_path.resolve()),
            "models_dir": str(project_cfg.models_path.resolve()), "default_target": self.target,
            "targets": {self.target: {
                "kind": "compose", "project": self.project,
                "compose_file": str(ROOT / "compose" / "compose.yaml"), "edge_host": "127.0.0.1",
                "edge_port": self.edge_port, "blue_port": free_port(), "green_port": free_port(),
                "watch_s": watch_s, "monitoring": monitoring,
                **({"prometheus_port": free_port(), "pushgateway_port": free_port(),
                    "canary_thresholds": switch_canary.THRESHOLDS} if monitoring else {})}},
        }, sort_keys=False))
        self.versions_dir = project_cfg.versions_path.resolve()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AADS_")}
        self.env.update({"AADS_CONFIG": str(self.config), "HF_HUB_OFFLINE": "1"})
        if compose:
            self.env["AADS_COMPOSE"] = compose

    def orchestrator(self, *args: str) -> tuple[subprocess.CompletedProcess, float]:
        start = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "orchestrator", *args], env=self.env, cwd=self.work,
                           capture_output=True, text=True, timeout=1200)
        return r, time.monotonic() - start

    def json(self, *args: str) -> Any:
        r, _ = self.orchestrator(*args, "--json")
        if r.returncode != 0:
            raise RuntimeError(f"orchestrator {' '.join(args)} failed: {r.stderr.strip().splitlines()[-1:]}")
        return json.loads(r.stdout)

    def edge_container(self):
        import docker

        label = [f"com.docker.compose.project={self.project}", "com.docker.compose.service=edge"]
        return docker.from_env().containers.list(filters={"label": label})[0]

    def down(self) -> None:
        import docker

        client = docker.from_env()
        label = {"label": f"com.docker.compose.project={self.project}"}
        for c in client.containers.list(all=True, filters=label):
            c.remove(force=True, v=True)
        for n in client.networks.list(filters=label):
            n.remove()


def run_one(stack: BenchStack, label: str, argv: list[str], old: str, new: str, *, rate: float,
            clients: int, path: str) -> dict[str, Any]:
    say(f"{label}: orchestrator {' '.join(argv)} under {rate:g} req/s per client kind")
    key = api_keys.own_key(api_keys.read_keys(stack.keys_file))
    spec = LoadSpec(url=f"http://127.0.0.1:{stack.edge_port}{path}", rate=rate, duration_s=900, clients=clients,
                    timeout_s=10, track_key="version", headers=(("X-API-Key", key),))
    with LoadGenerator(spec) as load:
        time.sleep(2)  # steady load before the command starts
        t_cmd = time.monotonic() - load.t0
        r, wall = stack.orchestrator(*argv, "--json")
        time.sleep(2)  # and after it ends
    result = load.result()
    if r.returncode != 0:
        raise RuntimeError(f"{label} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    out = json.loads(r.stdout)
    first_new = next((s.t for s in result.samples if s.ok and s.answer == new), None)
    last_old = max((s.t for s in result.samples if s.ok and s.answer == old), default=None)
    phases = out.get("phases") or {}
    to_traffic = sum(phases.get(p, 0.0) for p in ("resolve", "start", "ready", "smoke", "flip"))
    return {
        "label": label, "command": "orchestrator " + " ".join(argv), "from": old, "to": new,
        "outcome": out.get("outcome"), "warm": out.get("warm"),
        "wall_s": round(wall, 2), "phases": phases,
        "to_traffic_s": round(to_traffic, 3),
        "flip_plus_drain_s": round(phases.get("flip", 0.0) + phases.get("drain", 0.0), 3),
        "load_saw_new_after_s": None if first_new is None else round(first_new - t_cmd, 2),
        "load_saw_old_until_s": None if last_old is None else round(last_old - t_cmd, 2),
        "load": {k: result.kind(k) for k in spec.kinds},
        "sent": result.sent, "failed": result.failed,
        "failures": result.failures(10),
    }


def run_canary(stack: BenchStack, shares: str, step_s: float, *, rate: float, clients: int, path: str,
               diagnose_rate: float) -> dict[str, Any]:
    """Run 5: `switch NEW --canary SHARES --step STEP` under the GET load and a diagnosis load."""
    argv = ["switch", NEW, "--canary", shares, "--step", f"{step_s:g}s"]
    say(f"canary switch: orchestrator {' '.join(argv)} under {rate:g} GET + {diagnose_rate:g} diagnoses req/s "
        "per client kind")
    key = api_keys.own_key(api_keys.read_keys(stack.keys_file))
    headers = (("X-API-Key", key),)
    pool = switch_canary.leaf_pool(stack.versions_dir / NEW)
    sampler = switch_canary.EdgeSampler(stack.edge_container())
    gets = LoadGenerator(LoadSpec(url=f"http://127.0.0.1:{stack.edge_port}{path}", rate=rate, duration_s=900,
                                  clients=clients, timeout_s=10, track_key="version", headers=headers))
    diagnoses = switch_canary.diagnose_load(f"http://127.0.0.1:{stack.edge_port}/v1/diagnose", pool,
                                            rate=diagnose_rate, headers=headers)
    sampler.start()
    started = {}
    for name, gen in (("get", gets), ("diagnose", diagnoses)):
        gen.start()
        started[name] = time.time() - (time.monotonic() - gen.t0)  # unix time of the load's t0
    try:
        time.sleep(2)  # steady load before the command starts
        r, wall = stack.orchestrator(*argv, "--json")
        time.sleep(2)
    finally:
        results = {"get": gets.result(), "diagnose": diagnoses.result()}
        sampler.stop()
    # A failed canary is a result too (its steps are in the ledger): reported, not raised.
    error = None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1]
    entry = stack.json("history")["entries"][-1]
    out = json.loads(r.stdout) if r.returncode == 0 else {"outcome": entry.get("outcome"), "phases": entry.get("phases")}
    canary = entry.get("canary") or []
    n_steps = len(parse_shares(shares))
    cand_slot = out.get("slot") or (canary[0].get("slot") if canary else None)
    steps = switch_canary.step_rows(canary, step_s, out.get("phases") or {}, sampler, cand_slot,
                                    [(results[n], started[n]) for n in results], NEW)
    load = {k: {f: sum(res.kind(k)[f] for res in results.values()) for f in ("sent", "failed")}
            for k in ("fresh", "keepalive")}
    return {
        "argv": " ".join(argv), "from": OLD, "to": NEW, "outcome": out.get("outcome"), "error": error,
        "wall_s": round(wall, 2),
        "phases": out.get("phases"), "steps_configured_s": step_s * n_steps,
        "wall_minus_steps_s": round(wall - step_s * n_steps, 2), "steps": steps,
        "thresholds": switch_canary.THRESHOLDS, "diagnose_rate": diagnose_rate, "pool": len(pool),
        "load": load, "loads": {n: {k: res.kind(k) for k in ("fresh", "keepalive")} for n, res in results.items()},
        "sent": sum(res.sent for res in results.values()), "failed": sum(res.failed for res in results.values()),
        "failures": [f for res in results.values() for f in res.failures(10)],
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [SECTION, "",
             f"`{report['command']}` — {report['machine']}, {report['compose']}, {report['date']}.",
             f"Load: GET `{report['path']}` through the HAProxy edge, {report['rate']:g} req/s per client kind "
             f"({report['clients']} threads each): *fresh* = a new connection per request, *keep-alive* = "
             f"one connection held across requests. Watch window {report['watch_s']:g} s. "
             "JSON: `docs/benchmarks/switch.json`." + (f" {report['note']}" if report.get("note") else ""), "",
             "| run | fresh sent / failed | keep-alive sent / failed | command wall s | to traffic s "
             "| flip + drain s | load saw the new version after s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["runs"]:
        f, k = r["load"]["fresh"], r["load"]["keepalive"]
        lines.append(f"| {r['label']} ({r['from']} → {r['to']}) | {f['sent']} / {f['failed']} | "
                     f"{k['sent']} / {k['failed']} | {r['wall_s']:.2f} | {r['to_traffic_s']:.2f} | "
                     f"{r['flip_plus_drain_s']:.2f} | {r['load_saw_new_after_s']} |")
    lines += ["", "Phases (seconds, as the ledger recorded them):", "",
              "| run | " + " | ".join(PHASES) + " |", "| --- |" + " --- |" * len(PHASES)]
    for r in report["runs"]:
        lines.append(f"| {r['label']} | " + " | ".join(
            f"{r['phases'][p]:.2f}" if p in r["phases"] else "–" for p in PHASES) + " |")
    warm = next(r for r in report["runs"] if r["label"] == "warm rollback")
    cold = next(r for r in report["runs"] if r["label"] == "cold switch")
    lines += ["",
              f"Targets: zero failed requests — {report['failed_total']} failed of {report['sent_total']}; "
              f"rollback to a warm previous slot < 2 s to traffic — {warm['to_traffic_s']:.2f} s "
              f"(the command then watches for {report['watch_s']:g} s and drains); flip + drain < 2 s in a cold "
              f"switch — {cold['flip_plus_drain_s']:.2f} s.",
              "\"To traffic\" sums resolve, start, ready, smoke and flip: the time until the edge sends every new "
              "request to the new slot. \"Command wall\" includes the CLI's start-up and the watch window."]
    if report.get("canary"):
        lines += switch_canary.markdown(report["canary"])
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " See the module doc for the runs.")
    p.add_argument("--rate", type=float, default=10.0, help="requests/s per client kind (default 10)")
    p.add_argument("--clients", type=int, default=2, help="threads per client kind (default 2)")
    p.add_argument("--path", default="/v1/version", help="request path through the edge (default /v1/version)")
    p.add_argument("--watch", type=float, default=5.0, help="the target's watch window in s (default 5)")
    p.add_argument("--canary", default="10,50,100",
                   help="shares of the canary run, e.g. 10,50,100 (default); '' leaves the canary run out")
    p.add_argument("--step", type=float, default=20.0,
                   help="seconds per canary step (default 20, shortened from the production 60 for the bench)")
    p.add_argument("--diagnose-rate", type=float, default=1.0,
                   help="diagnosis requests/s per client kind during the canary run (default 1)")
    p.add_argument("--compose", choices=["v1", "v2"], help="force a compose CLI (default: what the host has, v2 first)")
    p.add_argument("--json-out", default=str(ROOT / "docs" / "benchmarks" / "switch.json"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"), help="markdown file to update ('' = none)")
    p.add_argument("--note", default="", help="a sentence on the conditions, printed with the results")
    args = p.parse_args(argv)
    if args.canary:
        try:
            parse_shares(args.canary)
        except ValueError as e:
            p.error(str(e))
    if args.step <= 0 or args.diagnose_rate <= 0:
        p.error("--step and --diagnose-rate must be positive")

    work = Path(tempfile.mkdtemp(prefix="aads-bench-switch-"))
    stack = BenchStack(work, watch_s=args.watch, compose=args.compose, monitoring=bool(args.canary))
    say(f"stack {stack.project}, edge on 127.0.0.1:{stack.edge_port}, state in {work}")
    try:
        r, wall = stack.orchestrator("up", OLD, "--json")
        if r.returncode != 0:
            say(f"up failed: {r.stderr.strip().splitlines()[-1:]}")
            return 1
        say(f"up {OLD}: {wall:.1f}s")
        status = stack.json("status")
        runs = [run_one(stack, label, argv, old, new, rate=args.rate, clients=args.clients, path=args.path)
                for label, argv, old, new in RUNS]
        canary = (run_canary(stack, args.canary, args.step, rate=args.rate, clients=args.clients, path=args.path,
                             diagnose_rate=args.diagnose_rate) if args.canary else None)
    finally:
        stack.down()
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "command": "make bench-switch" + (f" (benchmarks/bench_switch.py {' '.join(argv or sys.argv[1:])})"
                                          if (argv or sys.argv[1:]) else ""),
        "machine": machine(), "compose": status.get("compose"),
        "date": time.strftime("%Y-%m-%d"), "rate": args.rate, "clients": args.clients, "path": args.path,
        "watch_s": args.watch, "note": args.note, "runs": runs, "canary": canary,
        "sent_total": sum(r["sent"] for r in runs + ([canary] if canary else [])),
        "failed_total": sum(r["failed"] for r in runs + ([canary] if canary else [])),
    }
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    if args.doc:
        write_section(Path(args.doc), SECTION, text)
    print(text)
    canary_ok = canary is None or canary["outcome"] == "succeeded"
    return 0 if report["failed_total"] == 0 and canary_ok else 1


if __name__ == "__main__":
    sys.exit(main())
