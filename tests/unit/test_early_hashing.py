"""The service's loader hashes the model set beside the heavy imports, not after them.

Hashing reads every weight file (1.2 GB for a ViT-L/16 set) and releases the GIL, so it can run on
a second core while torch/transformers/peft import; it also brings the weights into the page cache
before they are read. A file that fails its hash still fails the load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: serving.pipeline (torch, transformers) must not be imported yet.
# The import of serving.pipeline waits (at most 20 s) for the first file hash; the order of the two
# events is the answer. Loading that hashes only after the imports records the import first.
PROBE = textwrap.dedent("""
    import json, sys, threading
    from pathlib import Path
    import serving.bundles as bundles

    events, hashed = [], threading.Event()
    real_sha = bundles.sha256_file
    def sha256_file(path):
        if not hashed.is_set():
            events.append("hash")
            hashed.set()
        return real_sha(path)
    bundles.sha256_file = sha256_file

    class Watch:
        def find_spec(self, name, path=None, target=None):
            if name == "serving.pipeline" and "import" not in events:
                hashed.wait(20)
                events.append("import")
            return None
    sys.meta_path.insert(0, Watch())

    from serving.manifest import load_manifest
    from serving.runtime import load_pipeline
    from serving.settings import Settings
    model_dir, version_dir = Path(sys.argv[1]), Path(sys.argv[2])
    pipe = load_pipeline(Settings(model_dir=model_dir, manifest_dir=version_dir, precision="float32"),
                         load_manifest(version_dir))
    print(json.dumps({"events": events, "phases": pipe.phases.rounded()}))
""")


def run_probe(model_set) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", PROBE, str(model_set.path), str(model_set.version_dir)],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_hashing_starts_before_the_heavy_imports(tiny_model_set):
    got = run_probe(tiny_model_set("dinov3"))
    assert got["events"] == ["hash", "import"]
    assert {"imports", "hash", "read_weights", "build_model"} <= set(got["phases"])


def test_a_tampered_file_still_fails_the_load(tiny_model_set, tmp_path):
    import shutil

    from serving.bundles import ModelLoadError
    from serving.runtime import load_pipeline
    from serving.settings import Settings

    src = tiny_model_set("dinov3")
    copy = tmp_path / "models"
    shutil.copytree(src.path, copy)
    files = json.loads((copy / "model_set.json").read_text())["files"]
    weights = next(rel for rel in files if rel.startswith("backbone/") and rel.endswith(".safetensors"))
    with open(copy / weights, "r+b") as f:  # same size, one byte changed: only the hash can tell
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(ModelLoadError, match="does not match its recorded sha256"):
        load_pipeline(Settings(model_dir=copy, manifest_dir=src.version_dir, precision="float32"), src.manifest())
