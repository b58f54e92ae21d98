#!/bin/bash
# The cold switch's time to traffic, code of a git ref ("before") against this tree ("after"), in one run:
#
#   bash benchmarks/switch_before_after.sh [BASE_REF]      (default c9bef26: main before the last ready work)
#
# For each tree: build + push both versions (CPU variant, the demo sets of `make models`) into a registry
# repository of its own (<registry host>/aads-ready-before|after, so the project's tags and ledger are not
# touched), then benchmarks/bench_switch.py from that tree with its own state dir. The base tree is a
# temporary git worktree, removed at the end. JSON: build/switch-before.json, build/switch-after.json;
# docs/benchmarks.md is not rewritten (the "## Compose switch" section stays bench_switch's own).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${1:-c9bef26}
PY=${PY:-$ROOT/.venv/bin/python}
HOST=${AADS_REGISTRY_HOST:-127.0.0.1:5000}
BASE_TREE=$(mktemp -d /tmp/aads-switch-base-XXXXXX)
trap 'git -C "$ROOT" worktree remove --force "$BASE_TREE" >/dev/null 2>&1 || true' EXIT
git -C "$ROOT" worktree add --detach "$BASE_TREE" "$BASE" -q
mkdir -p "$ROOT/build"
ln -s "$ROOT/build" "$BASE_TREE/build"  # the demo sets (build/models), as in this tree
tree_of() { if [ "$1" = after ]; then echo "$ROOT"; else echo "$BASE_TREE"; fi; }
for tree in after before; do
  dir=$(tree_of $tree)
  for v in v5.5.3-performance v5.5.4-dinov3; do
    echo "switch-before-after: $tree: build + push $v ($(date -u +%T))" >&2
    (cd "$dir" && PYTHONPATH="$dir" AADS_REGISTRY="$HOST/aads-ready-$tree" AADS_STATE_DIR="$ROOT/build/orch-$tree" \
      nice -n 10 "$PY" -m orchestrator build $v --variant cpu --models "$ROOT/build/models/$v" >/dev/null &&
     PYTHONPATH="$dir" AADS_REGISTRY="$HOST/aads-ready-$tree" AADS_STATE_DIR="$ROOT/build/orch-$tree" \
      nice -n 10 "$PY" -m orchestrator push $v --variant cpu >/dev/null)
  done
done
for tree in before after; do
  dir=$(tree_of $tree)
  echo "switch-before-after: $tree: bench_switch ($(date -u +%T), load $(cut -d' ' -f1 /proc/loadavg))" >&2
  (cd "$dir" && PYTHONPATH="$dir" AADS_REGISTRY="$HOST/aads-ready-$tree" AADS_STATE_DIR="$ROOT/build/orch-$tree" \
    "$PY" benchmarks/bench_switch.py --doc '' --json-out "$ROOT/build/switch-$tree.json" --note "$tree" >/dev/null)
done
"$PY" - "$ROOT/build" <<'PY'
import json, sys
from pathlib import Path
for tree in ("before", "after"):
    for run in json.loads((Path(sys.argv[1]) / f"switch-{tree}.json").read_text())["runs"]:
        print(f"{tree:6} {run['label']:30} to traffic {run['to_traffic_s']:6.2f}s  ready {run['phases'].get('ready', 0):6.2f}s  "
              f"failed {run['failed']} of {run['sent']}")
PY
