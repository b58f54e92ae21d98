"""A model set that is healthy but biased: one crop's OOD thresholds shrunk, so most leaves of that
crop are called unfamiliar and sent to `review`. Everything else (backbone, router, the other
adapters, every contract the service checks) is the original's, and the hashes are rewritten, so
the service loads it as it would any set: the canary analysis must catch it from its decisions.

    make_biased(src_model_dir, dst_model_dir, crop="tomato", factor=0.2)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from serving.bundles import sha256_file


def make_biased(src: Path, dst: Path, crop: str, factor: float = 0.2) -> Path:
    """Copy the model set `src` to `dst` with `crop`'s OOD thresholds (every depth) times `factor`."""
    shutil.copytree(src, dst)
    adapter = dst / "adapters" / crop
    ood_path = adapter / "ood.safetensors"
    tensors = load_file(str(ood_path))
    for key in [k for k in tensors if k == "thresholds" or k.endswith(".thresholds")]:
        tensors[key] = (tensors[key] * factor).contiguous()
    ood_path.unlink()  # a copy may be a hard link or read-only: write a new file
    save_file(tensors, str(ood_path))
    bundle_path = adapter / "bundle.json"
    bundle = json.loads(bundle_path.read_text())
    bundle["files"]["ood.safetensors"] = sha256_file(ood_path)
    bundle["biased"] = f"test set: OOD thresholds x{factor} (sends most {crop} leaves to review)"
    bundle_path.unlink()
    bundle_path.write_text(json.dumps(bundle, indent=2) + "\n")
    model_set_path = dst / "model_set.json"
    doc = json.loads(model_set_path.read_text())
    for rel in (f"adapters/{crop}/ood.safetensors", f"adapters/{crop}/bundle.json"):
        doc["files"][rel] = sha256_file(dst / rel)
    model_set_path.unlink()
    model_set_path.write_text(json.dumps(doc, indent=2) + "\n")
    return dst
