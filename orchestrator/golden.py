"""The golden image set: a fixed handful of PNGs shipped in the package (orchestrator/golden/).

A build records the decisions its image gives on them (the ledger's `build.golden`); verify and
every switch's smoke test ask the running image again and compare. Only the categorical outcome
is compared (decision, reason, crop, disease): scores may move in the last digits between CPU
and GPU, a different decision means a different model.
The PNGs are made by scripts/make_golden.py (deterministic).
"""

from __future__ import annotations

import base64
import hashlib
from importlib import resources
from typing import Any

from orchestrator.probe import post_json

COMPARED = ("decision", "reason", "crop", "disease")
RECORDED = COMPARED + ("confidence", "ood_score")


def fingerprint() -> list[tuple[str, str]]:
    """(name, sha256) of every golden image: what a recorded set of outputs must cover."""
    return [(name, hashlib.sha256(data).hexdigest()) for name, data in golden_images()]


def golden_images() -> list[tuple[str, bytes]]:
    """(file name, PNG bytes) of every golden image, sorted by name."""
    folder = resources.files("orchestrator") / "golden"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".png")), key=lambda f: f.name)
    return [(f.name, f.read_bytes()) for f in files]


def collect(base_url: str, timeout: float = 60.0, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The decisions of the service at `base_url` on the golden set, one dict per image (`headers`: an API key)."""
    out = []
    for name, data in golden_images():
        body = post_json(f"{base_url}/v1/diagnose", {"image": base64.b64encode(data).decode()}, timeout=timeout,
                         headers=headers)
        result = body.get("result", body) if isinstance(body, dict) else {}
        # The image's hash travels with its answer: a golden set changed after a build is then
        # told apart from a model that answers differently.
        row: dict[str, Any] = {"image": name, "sha256": hashlib.sha256(data).hexdigest()}
        for key in RECORDED:
            value = result.get(key)
            row[key] = round(value, 4) if isinstance(value, float) else value
        out.append(row)
    return out


def compare(recorded: list[dict[str, Any]], got: list[dict[str, Any]]) -> list[str]:
    """One line per mismatch between recorded and new golden outputs; empty means they agree."""
    problems = []
    now = {row["image"]: row for row in got}
    for want in recorded:
        name = want["image"]
        have = now.get(name)
        if have is None:
            problems.append(f"{name}: no answer")
            continue
        if want.get("sha256") and have.get("sha256") and want["sha256"] != have["sha256"]:
            problems.append(f"{name}: the golden image changed since this build recorded it (rebuild to re-record)")
            continue
        for key in COMPARED:
            if want.get(key) != have.get(key):
                problems.append(f"{name}: {key} {want.get(key)!r} -> {have.get(key)!r}")
    extra = sorted(set(now) - {row["image"] for row in recorded})
    problems += [f"{name}: not in the recorded set" for name in extra]
    return problems
