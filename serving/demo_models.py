"""Write a complete demo model set for a version (no real weights can be downloaded here).

    python -m serving.demo_models --version-dir versions/v5.5.4-dinov3 --out build/models/v5.5.4-dinov3

The real builder (`python -m serving.build_model_set`) fed a small RANDOMLY INITIALIZED
backbone of the version's family (the real architecture at a small size, saved in Hub format)
and the deterministic synthetic image set (serving.synthetic): a router and one LoRA adapter
per crop of the adapter spec, trained with the manifest's training settings; OOD and, for a
version with dynamic blocks enabled, the exit threshold calibrated on held-out images.

An existing complete set whose stamp (manifest hash + build settings + this code) matches is
reused, not rebuilt. `build_model_set(..., tiny=True)` makes a seconds-sized set for tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from serving import synthetic
from serving.backbones import random_backbone, save_backbone
from serving.build_model_set import BuildOptions, build
from serving.bundles import ModelLoadError, verify_hashes
from serving.manifest import ManifestError, load_manifest, manifest_sha256
from serving.pipeline import MODEL_SET_FILE, Pipeline
from serving.train import DataError

Progress = Callable[[str, int, int], None]
SET_FORMAT = 2

# Sizes: the demo set must train in a few minutes on 2 CPU cores and still reach the accuracy
# and OOD targets on held-out synthetic images; the tiny set only has to exercise every path.
DEMO = {"hidden_size": 128, "num_hidden_layers": 6, "num_attention_heads": 2, "initializer_range": 0.1, "image_size": {"dinov2": 112, "dinov3": 112},
        "resize_size": 128, "canvas": 144, "per_class": 100, "epochs": None, "batch_size": None}
TINY = {"hidden_size": 48, "num_hidden_layers": 3, "num_attention_heads": 2, "initializer_range": 0.1, "image_size": {"dinov2": 56, "dinov3": 64},
        "resize_size": 72, "canvas": 80, "per_class": 10, "epochs": 2, "batch_size": 16}
# The code that decides what the weights and statistics of a set are (not how they are served).
_STAMPED_SOURCES = ("backbones.py", "build_model_set.py", "checkpoints.py", "dynamic_depth.py", "ood.py",
                    "preprocess.py", "router.py", "synthetic.py", "train.py")


def _stamp(version_dir: Path, cfg: dict, tiny: bool) -> str:
    h = hashlib.sha256()
    h.update(manifest_sha256(version_dir).encode())
    h.update(json.dumps({"cfg": cfg, "tiny": tiny, "format": SET_FORMAT}, sort_keys=True).encode())
    here = Path(__file__).parent
    for name in _STAMPED_SOURCES:
        h.update(name.encode() + b"\0" + (here / name).read_bytes())
    return h.hexdigest()


def existing_set_matches(out_dir: Path, stamp: str) -> bool:
    """A complete set with this stamp whose files all still match their hashes."""
    try:
        doc = json.loads((out_dir / MODEL_SET_FILE).read_text())
        if doc.get("demo_stamp") != stamp:
            return False
        verify_hashes(out_dir, doc["files"], f"model set {out_dir}")
        return True
    except (OSError, ValueError, KeyError, ModelLoadError):
        return False


def build_model_set(version_dir: str | Path, out_dir: str | Path, tiny: bool = False, force: bool = False,
                    progress: Progress | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Build (or reuse) the demo model set of a version in out_dir; returns out_dir.

    The real builder (serving.build_model_set) fed a random backbone of the version's family,
    saved in Hub format, and a generated synthetic ImageFolder per crop.
    """
    version_dir, out_dir = Path(version_dir), Path(out_dir)
    say = log or (lambda _msg: None)
    manifest = load_manifest(version_dir)
    family = manifest.backbone.family
    cfg = dict(TINY if tiny else DEMO)
    cfg["image_size"] = cfg["image_size"][family]
    stamp = _stamp(version_dir, cfg, tiny)
    if not force and existing_set_matches(out_dir, stamp):
        say(f"reused the existing model set in {out_dir} (stamp {stamp[:12]} matches, every hash verified)")
        return out_dir

    training = manifest.training
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.demo-inputs-", dir=_ensure(out_dir.parent)))
    try:
        say(f"generating the synthetic image set ({cfg['per_class']} per class) in {scratch / 'data'}")
        synthetic.generate(scratch / "data", manifest.crops, cfg["per_class"], seed=training.seed, size=cfg["canvas"],
                           progress=_stage(progress, "synthetic images"))
        size = {k: cfg[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size",
                                    "initializer_range")}
        save_backbone(random_backbone(family, seed=training.seed, **size), scratch / "backbone")
        options = BuildOptions(
            device="cpu", epochs=cfg["epochs"], batch_size=cfg["batch_size"], image_size=cfg["image_size"],
            resize_size=cfg["resize_size"], random_init=True, synthetic=True, check_size=False, workers=1,
            extra={"stands_for": manifest.backbone.model_id, "tiny": tiny, "demo_backbone": size,
                   "synthetic_set": {"per_class": cfg["per_class"], "seed": training.seed, "canvas": cfg["canvas"]},
                   "demo_stamp": stamp})
        build(version_dir, scratch / "backbone", scratch / "data", out_dir, options, progress=progress, log=say)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out_dir


TEST_SEED_OFFSET = 2000  # train images use seed, depth calibration seed + 1000, evaluation seed + 2000


def evaluate_model_set(version_dir: str | Path, model_dir: str | Path, per_class: int = 40,
                       ood_per_kind: int = 40, batch_size: int = 32) -> dict:
    """Serve held-out synthetic images (a seed never trained or calibrated on) through the pipeline.

    accuracy: share of in-distribution images whose diagnosis names the right crop and disease
    (best guess, whatever the decision); accepted/accepted_accuracy: how many were accepted and
    how many of those were right; ood_review_rate: share of OOD images (noise, unseen patterns,
    unseen leaf colours) sent to review. With dynamic depth on, decisions are compared with a
    second, full-depth pass over the same images.
    """
    from serving.dynamic_depth import FULL_DEPTH

    manifest = load_manifest(version_dir)
    pipe = Pipeline.load(Path(model_dir), manifest)
    doc = pipe.model_set
    seed = doc.get("training", {}).get("seed", 0) + TEST_SEED_OFFSET
    canvas = doc.get("synthetic_set", {}).get("canvas", 144)
    items = [(c, d, synthetic.leaf_image(c, d, i, seed=seed, size=canvas))
             for c, ds in manifest.crops.items() for d in ds for i in range(per_class)]
    items += [(synthetic.OOD_DIR, k, synthetic.ood_image(k, i, seed=seed, size=canvas))
              for k in synthetic.OOD_KINDS for i in range(ood_per_kind)]

    def serve(policy=None):
        out, seconds = [], 0.0
        for b in range(0, len(items), batch_size):
            batch = [im for _, _, im in items[b:b + batch_size]]
            t = time.perf_counter()
            out += pipe.diagnose(batch, [None] * len(batch), policy=policy)
            seconds += time.perf_counter() - t
        return out, seconds

    pipe.warmup()
    got, seconds = serve()
    ind = [(c, d, g) for (c, d, _), g in zip(items, got) if c != synthetic.OOD_DIR]
    ood = [(k, g) for (c, k, _), g in zip(items, got) if c == synthetic.OOD_DIR]
    right = [g.crop == c and g.disease == d for c, d, g in ind]
    accepted = [g.decision == "accept" for _, _, g in ind]
    result = {
        "version": manifest.version, "family": pipe.info["family"], "random_init": pipe.info["random_init"],
        "num_blocks": pipe.info["num_blocks"], "hidden_size": pipe.info["hidden_size"],
        "image_size": pipe.preprocess.image_size, "in_distribution_images": len(ind), "ood_images": len(ood),
        "accuracy": sum(right) / len(ind),
        "crop_accuracy": sum(g.crop == c for c, _, g in ind) / len(ind),
        "accepted": sum(accepted) / len(ind),
        "accepted_accuracy": sum(r for r, a in zip(right, accepted) if a) / max(1, sum(accepted)),
        "in_distribution_review_reasons": _count(g.reason for _, _, g in ind if g.decision == "review"),
        "ood_review_rate": sum(g.decision == "review" for _, g in ood) / max(1, len(ood)),
        "ood_review_rate_by_kind": {k: sum(g.decision == "review" for kk, g in ood if kk == k) /
                                    max(1, sum(kk == k for kk, _ in ood)) for k in synthetic.OOD_KINDS},
        "ood_review_reasons": _count(g.reason for _, g in ood if g.decision == "review"),
        "mean_blocks_used": sum(g.blocks_used for g in got) / len(got),
        "seconds_per_image": seconds / len(items),
        "dynamic_blocks": pipe.info["dynamic_blocks"],
    }
    if pipe.policy.enabled:
        full, full_seconds = serve(FULL_DEPTH)
        key = lambda g: (g.decision, g.reason, g.crop, g.disease)  # noqa: E731
        result["dynamic_agreement_with_full_depth"] = sum(key(a) == key(b) for a, b in zip(got, full)) / len(got)
        result["full_depth_seconds_per_image"] = full_seconds / len(items)
    return result


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _stage(progress: Progress | None, name: str) -> Callable | None:
    if progress is None:
        return None
    return lambda *args: progress(name, *args[-2:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m serving.demo_models",
        description="Write a demo model set for a version: a small randomly initialized backbone of the "
                    "version's family, a crop router and one LoRA adapter per crop trained on a generated "
                    "synthetic image set. Reuses an existing set whose stamp matches.")
    ap.add_argument("--version-dir", required=True, type=Path, help="versions/<v>")
    ap.add_argument("--out", required=True, type=Path, help="model set directory, e.g. build/models/<v>")
    ap.add_argument("--tiny", action="store_true", help="seconds-sized set for tests (figures not meaningful)")
    ap.add_argument("--force", action="store_true", help="rebuild even if a matching set exists")
    ap.add_argument("--json", action="store_true", help="print model_set.json's summary as JSON, no progress bar")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        if args.json:
            build_model_set(args.version_dir, args.out, tiny=args.tiny, force=args.force,
                            log=lambda m: print(m, file=sys.stderr))
        else:
            from rich.console import Console
            from serving.train import _rich_progress

            console = Console(stderr=True)
            bar, update = _rich_progress()
            with bar:
                build_model_set(args.version_dir, args.out, tiny=args.tiny, force=args.force, progress=update,
                                log=lambda m: bar.console.print(m))
            console.print(_summary(args.out))
        if args.json:
            doc = json.loads((args.out / MODEL_SET_FILE).read_text())
            doc.pop("files")
            print(json.dumps(doc))
    except (ManifestError, ModelLoadError, DataError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; the previous model set (if any) is unchanged", file=sys.stderr)
        return 130
    return 0


def _summary(out_dir: Path) -> str:
    doc = json.loads((out_dir / MODEL_SET_FILE).read_text())
    m = doc["metrics"]
    lines = [f"{doc['version']} ({doc['family']}, randomly initialized, synthetic data): {out_dir}",
             f"  router held-out crop accuracy {m['router']['heldout_crop_accuracy']:.3f}"]
    for crop, a in m["adapters"].items():
        lines.append(f"  {crop}: held-out accuracy {a['heldout_accuracy']:.3f}, OOD-accepted {a['heldout_accepted']:.3f}")
    d = doc["dynamic_depth"]
    if d.get("enabled"):
        lines.append(f"  dynamic depth: threshold {d['threshold']:.6f}, agreement {d['agreement']:.3f}, "
                     f"mean blocks {d['mean_blocks']:.2f}/{d['full_blocks']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
