#!/usr/bin/env bash
# The AADS-ULoRA story on this host, what `make demo` runs once both images are built and pushed:
#   deploy v5.5.3-performance -> a diagnosis through the edge -> switch to v5.5.4-dinov3 (DINOv3)
#   -> a diagnosis showing the new backbone -> roll back -> status + history.
# Idempotent: a second run reuses the stack (`up` of the live version changes nothing) and the
# images, and walks the same story again.
#
# Settings (env): ORCH (the orchestrator CLI, default .venv/bin/orchestrator), AADS_CONFIG and
# every AADS_* the orchestrator reads (e.g. AADS_TARGET_LOCAL_EDGE_PORT=9090).
set -euo pipefail
cd "$(dirname "$0")/.."

ORCH=${ORCH:-.venv/bin/orchestrator}
PY=${PY:-.venv/bin/python}
FROM_VERSION=v5.5.3-performance
TO_VERSION=v5.5.4-dinov3
export COLUMNS=${COLUMNS:-150}  # rich tables: wide enough for digests and phases when piped
# The demo turns API keys off, so a plain `curl 127.0.0.1:8080/v1/version` answers; a target keeps
# them on unless told (docs/security.md). AADS_TARGET_LOCAL_API_KEYS=on runs the demo with keys.
export AADS_TARGET_LOCAL_API_KEYS=${AADS_TARGET_LOCAL_API_KEYS:-off}

heading() { printf '\n\033[1;36m=== %s ===\033[0m\n' "$*"; }
started=$(date +%s)

# One diagnosis through the public edge: a fixed golden image (a leaf photo stand-in), answer summarized.
diagnose() {
    "$PY" - "$1" "$KEYS" <<'EOF'
import base64, json, sys
import requests
from orchestrator.golden import golden_images
edge = sys.argv[1]
name, png = next((n, b) for n, b in golden_images() if n.startswith("tomato-"))
keys = __import__("pathlib").Path(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] else None
headers = {}
if keys is not None and keys.is_file():  # keys on: the orchestrator's own key
    from orchestrator import api_keys
    headers = {"X-API-Key": api_keys.own_key(api_keys.read_keys(keys))}
r = requests.post(f"{edge}/v1/diagnose", json={"image": base64.b64encode(png).decode()}, timeout=120, headers=headers)
if not r.ok:
    sys.exit(f"demo: POST {edge}/v1/diagnose answered {r.status_code}: {r.text[:300]}")
d = r.json()
print(f"POST {edge}/v1/diagnose  ({name})")
print(f"  served by   {d['version']}   backbone {d['backbone']['family']} ({d['backbone']['model_id']})")
print(f"  decision    {d['decision']}" + (f" ({d['reason']})" if d.get("reason") else ""))
print(f"  crop        {d['crop']}  disease {d['disease']}  confidence {d['confidence']}")
print(f"  blocks used {d['blocks_used']}   total {sum(d['timings'].values()):.0f} ms")
if d.get("model_note"):
    print(f"  note        {d['model_note']}")
EOF
}

heading "1. Deploy $FROM_VERSION (orchestrator up)"
echo "API keys: $AADS_TARGET_LOCAL_API_KEYS for this demo (orchestrator up without AADS_TARGET_LOCAL_API_KEYS=off keeps them on)"
# The local target has `variant: auto`: the CUDA image (<repo>:<version>) where a GPU is visible,
# the CPU image (<repo>:<version>-cpu) otherwise; the orchestrator names its choice.
"$ORCH" up "$FROM_VERSION"
EDGE=$("$ORCH" status --json 2>/dev/null | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["edge"])')
KEYS=$("$PY" -c 'from orchestrator import config; print(config.load().state_path / "compose" / "local" / "api-keys")')
[ "$AADS_TARGET_LOCAL_API_KEYS" = off ] && KEYS=""

heading "2. A diagnosis through the edge ($EDGE)"
diagnose "$EDGE"

heading "3. Switch to $TO_VERSION, keeping $FROM_VERSION warm (orchestrator switch --keep-previous)"
"$ORCH" switch "$TO_VERSION" --keep-previous

heading "4. The same diagnosis, now on the DINOv3 backbone"
diagnose "$EDGE"

heading "5. Roll back (orchestrator rollback --keep-previous): the warm previous slot, an instant flip"
# --keep-previous keeps $TO_VERSION warm too: the next `make demo` switches without a cold start.
"$ORCH" rollback --keep-previous
diagnose "$EDGE"

heading "6. Status, and the images of each version (CUDA: the plain tag, CPU: -cpu)"
"$ORCH" status
"$ORCH" list

heading "7. History"
"$ORCH" history --limit 10

printf '\n\033[1mdemo done in %ss.\033[0m The stack keeps running: edge on %s, `%s status`, runbook: docs/operations.md\n' \
    "$(($(date +%s) - started))" "$EDGE" "$ORCH"
