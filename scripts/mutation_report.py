"""Summarize the last `make mutation` run: per module, killed / survived / timeout / no tests, and
every surviving mutant by name (`mutmut show NAME` prints its diff).

Reads mutmut's own records (mutants/**/*.py.meta). A timeout counts as killed: the tests did not
pass with the mutant (it made a wait loop spin until the per-mutant deadline). `--json` for machines.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections import Counter
from pathlib import Path

# mutmut 3's exit codes (mutmut/stats.py).
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def load(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for meta in sorted(root.rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text()).get("exit_code_by_key", {}).items():
            out[name] = STATUS.get(code, "suspicious")
    return out


def module_of(name: str) -> str:
    """'orchestrator.backends.compose.xǁComposeBackendǁ_fail__mutmut_3' -> 'orchestrator.backends.compose'."""
    return ".".join(p for p in name.split("__mutmut_")[0].split(".") if not p.startswith("x"))


def report(statuses: dict[str, str], scope: list[str]) -> dict:
    picked = {n: s for n, s in statuses.items() if not scope or any(fnmatch.fnmatchcase(n, g) for g in scope)}
    modules: dict[str, dict] = {}
    for name, status in sorted(picked.items()):
        m = modules.setdefault(module_of(name), {"counts": Counter(), "survivors": []})
        m["counts"][status] += 1
        if status == "survived":
            m["survivors"].append(name)
    rows = []
    for module, m in modules.items():
        c = m["counts"]
        detected = c["killed"] + c["timeout"]
        tested = detected + c["survived"]
        rows.append({"module": module, "mutants": sum(c.values()), "killed": c["killed"], "timeout": c["timeout"],
                     "survived": c["survived"], "no_tests": c["no tests"], "not_checked": c["not checked"],
                     "score": round(detected / tested, 4) if tested else None, "survivors": m["survivors"]})
    return {"modules": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scope", nargs="*", help="mutant name globs (as given to `mutmut run`); default: all")
    ap.add_argument("--root", type=Path, default=Path("mutants"), help="mutmut's work folder (default: mutants)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: no {args.root}/ here: run `make mutation` first", file=sys.stderr)
        return 2
    data = report(load(args.root), args.scope)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{'module':<34} {'mutants':>7} {'killed':>6} {'timeout':>7} {'survived':>8} {'no tests':>8} {'score':>6}")
    for r in data["modules"]:
        score = "-" if r["score"] is None else f"{r['score']:.0%}"
        print(f"{r['module']:<34} {r['mutants']:>7} {r['killed']:>6} {r['timeout']:>7} {r['survived']:>8} "
              f"{r['no_tests']:>8} {score:>6}")
    for r in data["modules"]:
        for name in r["survivors"]:
            print(f"survived: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
