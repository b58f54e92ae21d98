"""Build a model set from a downloaded checkpoint and a labelled image set.

    python -m serving.build_model_set --version-dir versions/v5.5.4-dinov3 \
        --backbone ~/hf/dinov3-vitb16-pretrain-lvd1689m --data ~/data/plants --out build/models/v5.5.4-dinov3 \
        [--device cuda] [--epochs N]

`--backbone` is a Hugging Face checkpoint directory (config.json, model.safetensors or a sharded
model.safetensors.index.json + shards, preprocessor_config.json). `--data` holds one ImageFolder
per crop of the adapter spec: DATA/<crop>/<class>/*.jpg, class folders named as in the spec.

Steps, each one saved as it completes in a work directory next to --out (`.<name>.partial`), so
a rerun after an interruption goes on where it stopped (an adapter from its last finished epoch):
copy the checkpoint; split every class into train / held-out; train the crop router (linear probe
+ OOD statistics on base-backbone features); train one LoRA adapter + head per crop; calibrate
every OOD threshold and the early-exit threshold on HELD-OUT images; measure how often the
serving dtype (bf16 where the hardware has it) decides as fp32 does; record the golden set (held-out images and
their decisions); hash every file into model_set.json; then move the set to --out. Images are
decoded from disk batch by batch, never all held in memory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from serving import dynamic_depth
from serving.backbones import EncoderView, load_backbone
from serving.bundles import ModelLoadError, read_bundle, sha256_file
from serving.checkpoints import (CONFIG_FILE, MODEL_TYPE, PREPROCESSOR_FILE, check_config_matches,
                                 preprocess_from_checkpoint, read_config, weight_files, weights_digest)
from serving.manifest import Manifest, ManifestError, load_manifest, manifest_sha256
from serving.pipeline import MODEL_SET_FILE, RANDOM_INIT_NOTICE, Pipeline
from serving.preprocess import Preprocess
from serving.router import train_router
from serving.train import (AdapterJob, DataError, ImageFiles, check_device, features, list_image_folder,
                           stratified_split, train_adapter)

__all__ = ["BuildOptions", "build", "main", "SET_FORMAT", "GOLDEN_DIR", "GOLDEN_FILE"]

Progress = Callable[[str, int, int], None]
SET_FORMAT = 2
GOLDEN_DIR, GOLDEN_FILE = "golden", "golden.json"
DTYPE_AGREEMENT_TARGET = 0.995
MIN_IMAGES_TO_SHOW_TARGET = 200  # 1 / (1 - target): fewer, and a single differing decision misses the target


@dataclass(frozen=True)
class BuildOptions:
    device: str = "cpu"
    epochs: int | None = None             # default: the manifest's training.epochs
    batch_size: int | None = None         # default: the manifest's training.batch_size
    model_id: str | None = None           # default: the manifest's backbone.model_id (or one of its variants)
    image_size: int | None = None         # default: the checkpoint's preprocessor_config.json, else the manifest
    resize_size: int | None = None
    feature_batch_size: int = 64
    calibration_images: int = 2000        # held-out images for the exit threshold and the dtype agreement
    golden_per_crop: int = 2
    workers: int | None = None            # image decoding threads
    random_init: bool = False             # the checkpoint holds random weights (demo, tests)
    synthetic: bool = False               # the data is generated (demo, tests)
    check_size: bool = True               # the checkpoint must be the size the model id names
    extra: dict = field(default_factory=dict)  # more keys for model_set.json (the demo's notes)


def _say(log: Callable[[str], None] | None) -> Callable[[str], None]:
    return log or (lambda _msg: None)


def build(version_dir: str | Path, backbone_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
          options: BuildOptions = BuildOptions(), progress: Progress | None = None,
          log: Callable[[str], None] | None = None) -> Path:
    """Build the model set of a version into out_dir (replaced only once the new set is complete).

    Raises ManifestError, ModelLoadError or DataError naming the bad input before anything is written.
    """
    say = _say(log)
    t0 = time.perf_counter()
    version_dir, backbone_dir, data_dir, out_dir = map(Path, (version_dir, backbone_dir, data_dir, out_dir))
    manifest = load_manifest(version_dir)
    family, b = manifest.backbone.family, manifest.backbone
    model_id = options.model_id or b.model_id
    if model_id not in [b.model_id, *b.variants]:
        raise ModelLoadError(f"model id {model_id} is neither {version_dir.name}'s model_id {b.model_id} nor one of "
                             f"its variants ({', '.join(b.variants) or 'none'})")
    config = read_config(backbone_dir)
    if options.check_size:
        check_config_matches(config, family, model_id, f"backbone {backbone_dir}")
    elif config.get("model_type") != MODEL_TYPE[family]:
        raise ModelLoadError(f"backbone {backbone_dir}: model_type {config.get('model_type')!r} is not {family}")
    weights = weight_files(backbone_dir)
    device = check_device(options.device)
    if options.image_size:
        try:
            preprocess = Preprocess(family, options.image_size, options.resize_size or options.image_size,
                                    tuple(b.mean), tuple(b.std), crop=options.resize_size is not None)
        except ValueError as e:
            raise DataError(f"--image-size/--resize-size: {e}") from None
        pre_source = "build options"
    else:
        preprocess, pre_source = preprocess_from_checkpoint(backbone_dir, family, b.image_size, b.resize_size,
                                                            b.mean, b.std)
    training = manifest.training.model_copy(update={k: v for k, v in {
        "epochs": options.epochs, "batch_size": options.batch_size}.items() if v})
    data = _list_data(data_dir, manifest)
    say(f"{sum(len(p) for p, _ in data.values())} images in {len(data)} crops; backbone {model_id} "
        f"({len(weights) - (1 if len(weights) > 1 else 0)} weight file(s)), preprocessing from {pre_source}")

    work = out_dir.parent / f".{out_dir.name}.partial"
    stamp = _stamp(version_dir, backbone_dir, data, options, training, preprocess)
    _prepare_work_dir(work, stamp, say)

    # 1. the checkpoint, copied into the set
    digest = weights_digest(backbone_dir)
    if not _backbone_copied(work / "backbone", digest):
        say(f"copying the checkpoint into {work / 'backbone'}")
        _copy_backbone(backbone_dir, work / "backbone", weights, digest)
    num_layers = int(config["num_hidden_layers"])
    policy = dynamic_depth.DepthPolicy.from_fraction(manifest.dynamic_blocks.enabled,
                                                     manifest.dynamic_blocks.min_blocks_fraction, 1.0, num_layers)
    exits = dynamic_depth.exit_depths(policy, num_layers)
    splits = {crop: stratified_split(torch.tensor(labels), training.holdout_fraction, training.seed)
              for crop, (_paths, labels) in data.items()}
    common = {"family": family, "random_init": options.random_init, "synthetic": options.synthetic}

    # 2. the router
    if _bundle_done(work / "router", "router"):
        say("router: already trained (resumed)")
        router_metrics = read_bundle(work / "router", kind="router")["metrics"]
    else:
        say(f"training the router (linear probe + OOD statistics on base-backbone features, on {device})")
        router_metrics = _train_router(work, manifest, data, splits, preprocess, exits, options, device, common,
                                       progress)

    # 3. one adapter per crop
    adapter_metrics = {}
    for crop, (paths, labels) in data.items():
        adir = work / "adapters" / crop
        if _bundle_done(adir, "adapter"):
            say(f"{crop} adapter: already trained (resumed)")
            adapter_metrics[crop] = read_bundle(adir, kind="adapter")["metrics"]
            continue
        say(f"training the {crop} adapter (LoRA r={manifest.adapter_spec.lora.rank} on "
            f"{'+'.join(manifest.adapter_spec.lora.target_modules)}, {training.epochs} epochs, {device})")
        job = AdapterJob(crop, manifest.crops[crop], family, work / "backbone", manifest.adapter_spec.lora, training,
                         manifest.adapter_spec.ood_acceptance_rate, random_init=options.random_init,
                         synthetic=options.synthetic, device=device, exit_depths=exits,
                         checkpoint=work / ".checkpoints" / f"{crop}.pt",
                         feature_batch_size=options.feature_batch_size, backbone_sha256=digest)
        adapter_metrics[crop] = train_adapter(job, ImageFiles(paths, preprocess, options.workers), torch.tensor(labels),
                                              adir, progress)
    shutil.rmtree(work / ".checkpoints", ignore_errors=True)

    # 4. set-wide calibration on held-out images, golden set, model_set.json
    doc = {
        "format": SET_FORMAT, "version": manifest.version, "family": family, "model_id": model_id,
        "random_init": options.random_init, "synthetic": options.synthetic,
        "notice": RANDOM_INIT_NOTICE if options.random_init else None,
        "backbone_config": {k: config.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                       "patch_size", "image_size")},
        "backbone_sha256": digest,
        "preprocess": {**preprocess.to_dict(), "source": pre_source},
        "classes": {crop: list(manifest.crops[crop]) for crop in data},
        "training": training.model_dump(),
        "data": {crop: {"images": len(p), "heldout": len(splits[crop][1])} for crop, (p, _l) in data.items()},
        "metrics": {"router": router_metrics, "adapters": adapter_metrics},
        "dynamic_depth": {"enabled": False},
        "stamp": stamp, **options.extra,
    }
    hashes = _write_set_json(work, doc)
    held = _heldout_sample(data, splits, options.calibration_images)
    if manifest.dynamic_blocks.enabled:
        say(f"calibrating the early-exit threshold on {len(held)} held-out images")
        pipe = Pipeline.load(work, manifest, device=device, verify=False, dtype="float32")
        result = pipe.calibrate_depth(_open_all(held))
        dyn = manifest.dynamic_blocks
        doc["dynamic_depth"] = {"enabled": True, "min_blocks": pipe.policy.min_blocks,
                                "min_blocks_fraction": dyn.min_blocks_fraction, "manifest_threshold": dyn.threshold,
                                "target_agreement": dyn.target_agreement, **result.to_dict()}
        _write_set_json(work, doc, hashes)
        del pipe
    say(f"comparing serving-dtype and fp32 decisions on {len(held)} held-out images")
    doc["dtype_agreement"] = dtype_agreement(work, manifest, _open_all(held), device)
    warning = agreement_warning(doc["dtype_agreement"])
    if warning:
        say(f"warning: {warning}")
    _write_set_json(work, doc, hashes)
    say("recording the golden set from held-out images")
    doc["golden"] = _record_golden(work, manifest, data, splits, options.golden_per_crop, device)
    doc["build_seconds"] = round(time.perf_counter() - t0, 1)
    _write_set_json(work, doc, hashes)
    _move_into_place(work, out_dir)
    say(f"wrote {out_dir} in {time.perf_counter() - t0:.0f}s")
    return out_dir


# ------------------------------------------------------------------------------------------- data
def _list_data(data_dir: Path, manifest: Manifest) -> dict[str, tuple[list[Path], list[int]]]:
    if not data_dir.is_dir():
        raise DataError(f"dataset directory {data_dir} does not exist")
    missing = [c for c in manifest.crops if not (data_dir / c).is_dir()]
    if missing:
        raise DataError(f"dataset {data_dir}: no folder for crop(s) {', '.join(missing)} (expected one ImageFolder "
                        f"per crop: {data_dir}/<crop>/<class>/*.jpg)")
    return {crop: list_image_folder(data_dir / crop, classes) for crop, classes in manifest.crops.items()}


def _heldout_sample(data: dict, splits: dict, limit: int) -> list[Path]:
    """Up to `limit` held-out paths, spread evenly over the crops' held-out lists."""
    held = [[data[c][0][i] for i in splits[c][1].tolist()] for c in data]
    out: list[Path] = []
    k = 0
    while len(out) < limit and any(k < len(h) for h in held):
        out += [h[k] for h in held if k < len(h)]
        k += 1
    return out[:limit]


def _open_all(paths: list[Path]) -> list[Image.Image]:
    out = []
    for p in paths:
        with Image.open(p) as im:
            im.load()
            out.append(im.copy())
    return out


# ------------------------------------------------------------------------------------------- steps
def _train_router(work: Path, manifest: Manifest, data: dict, splits: dict, preprocess: Preprocess,
                  exits: tuple[int, ...], options: BuildOptions, device: str, common: dict,
                  progress: Progress | None) -> dict:
    backbone = load_backbone(work / "backbone", manifest.backbone.family, device)
    view = EncoderView(backbone)
    parts: dict[str, list] = {"tr": [], "ho": []}
    labels: dict[str, list] = {"tr_crop": [], "ho_crop": [], "tr_fine": [], "ho_fine": []}
    fine_names: list[str] = []
    for ci, (crop, (paths, lab)) in enumerate(data.items()):
        lab_t = torch.tensor(lab)
        tr, ho = splits[crop]
        files = ImageFiles(paths, preprocess, options.workers)
        for key, idx in (("tr", tr), ("ho", ho)):
            parts[key].append(features(view, files, idx.tolist(), options.feature_batch_size, depths=exits,
                                       progress=_stage(progress, f"router features {crop}"), stage="features"))
            labels[f"{key}_crop"].append(torch.full((len(idx),), ci))
            labels[f"{key}_fine"].append(lab_t[idx] + len(fine_names))
        fine_names += [f"{crop}/{c}" for c in manifest.crops[crop]]
    del backbone, view

    def cat(chunks: list):
        if isinstance(chunks[0], dict):
            return {d: torch.cat([c[d] for c in chunks]) for d in chunks[0]}
        return torch.cat(chunks)

    return train_router(cat(parts["tr"]), torch.cat(labels["tr_crop"]), torch.cat(labels["tr_fine"]),
                        cat(parts["ho"]), torch.cat(labels["ho_crop"]), torch.cat(labels["ho_fine"]),
                        list(data), fine_names, manifest.adapter_spec.router_acceptance_rate, work / "router", common)


def agreement_warning(agree: dict) -> str | None:
    """What an operator should hear about a measured bf16/fp32 agreement, or None when it is firm."""
    if agree.get("meets_target") is False:
        return (f"{agree['serving_dtype']} and float32 decide alike on only {agree['agreement']:.4f} of "
                f"{agree['images']} held-out images (target {DTYPE_AGREEMENT_TARGET}); the service will serve this "
                f"set in float32 (dtype: float32 in the manifest says so outright)")
    if agree.get("meets_target") and agree["images"] < MIN_IMAGES_TO_SHOW_TARGET:
        # With fewer images, a single differing decision already misses the target: passing says little.
        return (f"bf16 agreement measured on only {agree['images']} held-out images; showing {DTYPE_AGREEMENT_TARGET} "
                f"needs at least {MIN_IMAGES_TO_SHOW_TARGET}. The set is served in bf16 on this evidence: more "
                f"held-out images make it firm, dtype: float32 in the manifest rules bf16 out")
    return None


def dtype_agreement(model_dir: Path, manifest: Manifest, images: list[Image.Image], device: str,
                    batch_size: int = 32, serving_dtype: str | None = None) -> dict:
    """Share of `images` whose decision (decision, reason, crop, disease) is the same in the dtype the
    service will run in on `device` (or `serving_dtype`) and in fp32. Target: >= 99.5%."""
    serving = Pipeline.load(model_dir, manifest, device=device, verify=False, dtype=serving_dtype,
                            check_precision=False)
    dtype = serving.info["dtype"]
    result = {"serving_dtype": dtype, "device": str(serving.device), "images": len(images),
              "target": DTYPE_AGREEMENT_TARGET}
    if dtype == "float32":
        return {**result, "agreement": 1.0, "note": "the service runs in float32 here: nothing to compare"}
    a = _decisions(serving, images, batch_size)
    del serving
    b = _decisions(Pipeline.load(model_dir, manifest, device=device, verify=False, dtype="float32"), images, batch_size)
    same = sum(x == y for x, y in zip(a, b))
    agreement = same / max(1, len(images))
    return {**result, "agreement": agreement, "differing": len(images) - same,
            "meets_target": agreement >= DTYPE_AGREEMENT_TARGET}


def _decisions(pipe: Pipeline, images: list[Image.Image], batch_size: int) -> list[tuple]:
    out = []
    for i in range(0, len(images), batch_size):
        out += [(d.decision, d.reason, d.crop, d.disease)
                for d in pipe.diagnose(images[i:i + batch_size], [None] * len(images[i:i + batch_size]))]
    return out


def _record_golden(work: Path, manifest: Manifest, data: dict, splits: dict, per_crop: int, device: str) -> dict:
    """Copy `per_crop` held-out images of every crop into golden/ with the decisions this set gives them."""
    gdir = work / GOLDEN_DIR
    shutil.rmtree(gdir, ignore_errors=True)
    gdir.mkdir()
    chosen: list[tuple[str, Path]] = []
    for crop, (paths, labels) in data.items():
        held = splits[crop][1].tolist()
        by_class: dict[int, list[int]] = {}
        for i in held:
            by_class.setdefault(labels[i], []).append(i)
        picks = [by_class[c][0] for c in sorted(by_class)][:per_crop]
        for n, i in enumerate(picks):
            name = f"{crop}-{manifest.crops[crop][labels[i]]}-{n}{paths[i].suffix.lower()}"
            shutil.copyfile(paths[i], gdir / name)
            chosen.append((name, gdir / name))
    # The reference decisions are fp32's: any other precision is held to agree with them.
    pipe = Pipeline.load(work, manifest, device=device, verify=False, dtype="float32")
    got = pipe.diagnose(_open_all([p for _n, p in chosen]), [None] * len(chosen))
    rows = [{"image": name, "sha256": sha256_file(path), "decision": d.decision, "reason": d.reason,
             "crop": d.crop, "disease": d.disease, "confidence": round(d.confidence, 4),
             "ood_score": round(d.ood_score, 4)} for (name, path), d in zip(chosen, got)]
    (gdir / GOLDEN_FILE).write_text(json.dumps(rows, indent=2) + "\n")
    return {"images": len(rows), "file": f"{GOLDEN_DIR}/{GOLDEN_FILE}", "device": str(pipe.device),
            "dtype": pipe.info["dtype"]}


# ------------------------------------------------------------------------------------------- work dir
def _stamp(version_dir: Path, backbone_dir: Path, data: dict, options: BuildOptions, training, preprocess) -> str:
    """What decides the set's contents: a work dir from other inputs is not resumed but started over."""
    h = hashlib.sha256()
    h.update(manifest_sha256(version_dir).encode())
    for name in weight_files(backbone_dir) + [CONFIG_FILE]:
        st = (backbone_dir / name).stat()
        h.update(f"{name}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    for crop, (paths, labels) in data.items():
        h.update(f"{crop}\0{len(paths)}\0".encode())
        for p, lab in zip(paths, labels):
            h.update(f"{p.name}\0{lab}\0{p.stat().st_size}\n".encode())
    opts = {k: v for k, v in options.__dict__.items() if k not in ("workers", "extra", "device")}
    h.update(json.dumps({"options": opts, "training": training.model_dump(), "preprocess": preprocess.to_dict(),
                         "format": SET_FORMAT}, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _prepare_work_dir(work: Path, stamp: str, say: Callable[[str], None]) -> None:
    stamp_file = work / ".stamp"
    if work.is_dir():
        if stamp_file.is_file() and stamp_file.read_text().strip() == stamp:
            say(f"resuming the interrupted build in {work}")
            return
        say(f"discarding {work}: it was started from other inputs")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    stamp_file.write_text(stamp + "\n")


def _bundle_done(directory: Path, kind: str) -> bool:
    try:
        read_bundle(directory, kind=kind)
        return True
    except ModelLoadError:
        return False


def _backbone_copied(dest: Path, digest: str) -> bool:
    marker = dest / ".complete"
    return marker.is_file() and marker.read_text().strip() == digest


def _copy_backbone(src: Path, dest: Path, weights: list[str], digest: str) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in [CONFIG_FILE, PREPROCESSOR_FILE, *weights]:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    if weights_digest(dest) != digest:
        raise ModelLoadError(f"copying {src} into {dest} changed the weights (disk full or failing?)")
    (dest / ".complete").write_text(digest + "\n")


_SKIP = (MODEL_SET_FILE, ".stamp", "backbone/.complete")


def _write_set_json(directory: Path, doc: dict, known: dict[str, str] | None = None) -> dict[str, str]:
    """Write model_set.json with the sha256 of every file; `known` hashes are reused (large weights
    are hashed once per build, not at every rewrite). Returns the hashes."""
    known = known or {}
    files = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if p.is_file() and rel not in _SKIP and not rel.startswith(".checkpoints/"):
            files[rel] = known.get(rel) or sha256_file(p)
    doc = {**doc, "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(), "files": files}
    (directory / MODEL_SET_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return files


def _move_into_place(work: Path, out_dir: Path) -> None:
    """The finished set replaces out_dir in two renames; the work dir's own markers stay out of it."""
    (work / ".stamp").unlink(missing_ok=True)
    (work / "backbone" / ".complete").unlink(missing_ok=True)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
    os.replace(work, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _stage(progress: Progress | None, name: str) -> Progress | None:
    if progress is None:
        return None
    return lambda _stage, done, total: progress(name, done, total)


# ------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m serving.build_model_set",
        description="Build a version's model set from a Hugging Face checkpoint directory and one ImageFolder per "
                    "crop: router, one LoRA adapter per crop, OOD and early-exit thresholds calibrated on held-out "
                    "images, the golden set, sha256 of every file. An interrupted build resumes where it stopped "
                    "when run again with the same arguments. See docs/serving-models.md.")
    ap.add_argument("--version-dir", required=True, type=Path, help="versions/<v>: manifest with crops, LoRA and training settings")
    ap.add_argument("--backbone", required=True, type=Path,
                    help="checkpoint directory as huggingface-cli download leaves it (config.json, model.safetensors "
                         "or model.safetensors.index.json + shards, preprocessor_config.json)")
    ap.add_argument("--data", required=True, type=Path, help="DATA/<crop>/<class>/*.jpg: one ImageFolder per crop")
    ap.add_argument("--out", required=True, type=Path, help="model set directory to write (replaced once complete)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where to train and calibrate")
    ap.add_argument("--epochs", type=int, help="adapter epochs (default: the manifest's training.epochs)")
    ap.add_argument("--batch-size", type=int, help="training batch size (default: the manifest's)")
    ap.add_argument("--model-id", help="the Hub id the checkpoint is (default: the manifest's model_id; may name "
                                       "one of its variants); its family and size are checked against config.json")
    ap.add_argument("--image-size", type=int, help="input size, overriding the checkpoint's preprocessor_config.json "
                                                   "(a square resize when --resize-size is not given)")
    ap.add_argument("--resize-size", type=int, help="shorter side before a centre crop of --image-size")
    ap.add_argument("--calibration-images", type=int, default=2000,
                    help="held-out images used for the early-exit threshold and the bf16/fp32 check (default 2000)")
    ap.add_argument("--golden-per-crop", type=int, default=2, help="held-out images per crop in the golden set (default 2)")
    ap.add_argument("--workers", type=int, help="image decoding threads (default: min(8, CPUs))")
    ap.add_argument("--json", action="store_true", help="print model_set.json (without file hashes) on stdout, no progress bar")
    args = ap.parse_args(argv)
    for name in ("epochs", "batch_size", "calibration_images", "workers", "image_size", "resize_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    options = BuildOptions(device=args.device, epochs=args.epochs, batch_size=args.batch_size, model_id=args.model_id,
                           calibration_images=args.calibration_images, golden_per_crop=args.golden_per_crop,
                           workers=args.workers, image_size=args.image_size, resize_size=args.resize_size)
    try:
        if args.json:
            build(args.version_dir, args.backbone, args.data, args.out, options, log=lambda m: print(m, file=sys.stderr))
        else:
            from serving.train import _rich_progress

            bar, update = _rich_progress()
            with bar:
                build(args.version_dir, args.backbone, args.data, args.out, options, progress=update,
                      log=lambda m: bar.console.print(m))
    except (ManifestError, ModelLoadError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted; run the same command again to resume (work kept in "
              f"{args.out.parent / f'.{args.out.name}.partial'})", file=sys.stderr)
        return 130
    doc = json.loads((args.out / MODEL_SET_FILE).read_text())
    doc.pop("files", None)
    if args.json:
        print(json.dumps(doc))
    else:
        print(summary(doc, args.out))
    return 0


def summary(doc: dict, out_dir: Path) -> str:
    m = doc["metrics"]
    kind = "random weights, synthetic data" if doc.get("random_init") else doc.get("model_id")
    lines = [f"{doc['version']} ({doc['family']}, {kind}): {out_dir}",
             f"  router held-out crop accuracy {m['router']['heldout_crop_accuracy']:.3f}"]
    for crop, a in m["adapters"].items():
        lines.append(f"  {crop}: held-out accuracy {a['heldout_accuracy']:.3f}, OOD-accepted {a['heldout_accepted']:.3f}")
    d = doc.get("dynamic_depth", {})
    if d.get("enabled"):
        lines.append(f"  dynamic depth: threshold {d['threshold']:.6f}, agreement {d['agreement']:.3f}, "
                     f"mean blocks {d['mean_blocks']:.2f}/{d['full_blocks']}")
    agree = doc.get("dtype_agreement") or {}
    if agree:
        lines.append(f"  {agree['serving_dtype']} vs float32 decisions: {agree['agreement']:.4f} agree "
                     f"({agree['images']} held-out images)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
