"""The import contract (pyproject.toml [tool.importlinter]) holds, and would catch a planted breach.

`make lint` runs the same check; this test keeps it in the suite, so a branch that skips lint still
hears that the release plane pulled in the serving plane (and with it torch).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")



def lint_imports(root: Path) -> subprocess.CompletedProcess:
    if LINT_IMPORTS is None:  # a dev dependency: missing means a broken install, not a reason to skip
        pytest.fail("lint-imports is not installed: pip install -e '.[dev]' (make install does)")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, env=env,  # finds root/pyproject.toml
                          capture_output=True, text=True, timeout=300)


def test_the_repository_keeps_the_contract():
    out = lint_imports(REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


@pytest.mark.parametrize("package, line, broken", [
    ("orchestrator", "    import torch", "orchestrator is not allowed to import torch"),
    ("orchestrator", "    from serving import settings", "orchestrator is not allowed to import serving"),
    ("serving", "    import orchestrator", "serving is not allowed to import orchestrator"),
    ("aads_manifest", "    import serving", "aads_manifest is not allowed to import serving"),
])
def test_a_planted_lazy_import_breaks_it(tmp_path, package, line, broken):
    shutil.copyfile(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for name in ("aads_manifest", "serving", "orchestrator"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / package / "sneaky.py").write_text(f"def later():\n{line}\n")
    out = lint_imports(tmp_path)
    assert out.returncode != 0
    assert broken in out.stdout
