"""Fine-tune one crop adapter (LoRA + linear head), calibrate its OOD check, export the bundle.

    python -m serving.train --version-dir versions/v5.5.4-dinov3 --data DIR --crop tomato \
        --backbone build/models/v5.5.4-dinov3/backbone --out /tmp/tomato [--device cuda]

DIR is an ImageFolder: one sub-folder per class of the crop, named as in the adapter spec.
The training parameters (learning rate, batch size, epochs, held-out fraction, seed) come from
the manifest and can be overridden. The held-out split is never trained on: it sets the OOD
thresholds and gives the reported accuracy. Images are decoded from disk batch by batch
(`ImageFiles`), never held all at once. A whole model set (router, every adapter, calibration,
hashes) is built by `python -m serving.build_model_set`, which uses `train_adapter` from here.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file, save_file

from serving import dynamic_depth
from serving import ood as ood_mod
from serving.backbones import ROPE_MODULES, EncoderView, load_backbone
from serving.bundles import ModelLoadError, staged_directory, write_bundle
from serving.checkpoints import weights_digest
from serving.manifest import LoRA, ManifestError, Training, load_manifest
from serving.preprocess import Preprocess

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
HEAD_FILE, OOD_FILE = "head.safetensors", "ood.safetensors"
Progress = Callable[[str, int, int], None]  # (stage, done, total)


class DataError(Exception):
    """A dataset directory that cannot be used; the message names the path."""


def list_image_folder(data_dir: str | Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Image paths and class indices of an ImageFolder whose sub-folders are exactly `classes`."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"dataset directory {root} does not exist")
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    missing = [c for c in classes if c not in present]
    extra = [c for c in present if c not in classes]
    if missing or extra:
        parts = ([f"missing class folders {missing}"] if missing else []) + ([f"unknown folders {extra}"] if extra else [])
        raise DataError(f"dataset {root}: {'; '.join(parts)} (expected exactly {classes})")
    paths, labels = [], []
    for i, c in enumerate(classes):
        files = sorted(p for p in (root / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) < 2:
            raise DataError(f"dataset {root / c}: needs at least 2 images, found {len(files)}")
        paths += files
        labels += [i] * len(files)
    return paths, labels


class ImageSource(Protocol):
    """Images addressed by index; `load` returns a float32 batch (k, 3, H, W) of the indices asked for."""

    def __len__(self) -> int: ...
    def load(self, indices: list[int]) -> torch.Tensor: ...


class ImageFiles:
    """Images on disk, decoded and preprocessed batch by batch: a dataset never has to fit in RAM.

    Decoding runs on a small thread pool (PIL releases the GIL while it decodes and resizes).
    """

    def __init__(self, paths: list[Path], preprocess: Preprocess, workers: int | None = None):
        self.paths, self.preprocess = list(paths), preprocess
        self.workers = workers or min(8, (os.cpu_count() or 2))

    def __len__(self) -> int:
        return len(self.paths)

    def _one(self, i: int) -> torch.Tensor:
        p = self.paths[i]
        try:
            with Image.open(p) as im:
                return torch.from_numpy(self.preprocess.array(im))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"image {p} cannot be read ({e})") from None

    def load(self, indices: list[int]) -> torch.Tensor:
        if len(indices) <= 2 or self.workers <= 1:
            return torch.stack([self._one(i) for i in indices])
        with ThreadPoolExecutor(self.workers) as pool:
            return torch.stack(list(pool.map(self._one, indices)))


class ImageTensor:
    """Images already preprocessed in memory (tests, small sets)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def load(self, indices: list[int]) -> torch.Tensor:
        return self.images[indices]


def as_source(images: "ImageSource | torch.Tensor") -> ImageSource:
    return ImageTensor(images) if isinstance(images, torch.Tensor) else images


def batches(source: ImageSource, indices: list[int], batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(indices, images) in order, the next batch decoded in the background while this one is used."""
    chunks = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    if not chunks:
        return
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(source.load, chunks[0])
        for k, chunk in enumerate(chunks):
            x = pending.result()
            if k + 1 < len(chunks):
                pending = pool.submit(source.load, chunks[k + 1])
            yield chunk, x


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices): `fraction` of every class held out, at least one each."""
    g = torch.Generator().manual_seed(seed)
    train, held = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        held.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flips: leaves have no up or left, so both are label-preserving."""
    flip_h = (torch.rand(len(x), generator=g) < 0.5).to(x.device)
    flip_v = (torch.rand(len(x), generator=g) < 0.5).to(x.device)
    x = torch.where(flip_h[:, None, None, None], x.flip(-1), x)
    return torch.where(flip_v[:, None, None, None], x.flip(-2), x)


@torch.no_grad()
def features(view: EncoderView, images: "ImageSource | torch.Tensor", indices: list[int] | None = None,
             batch_size: int = 64, depths: tuple[int, ...] = (), progress: Progress | None = None,
             stage: str = "features") -> torch.Tensor | dict[int, torch.Tensor]:
    """Pooled float32 features on the CPU, (n, F); with `depths`, {depth: (n, F)} incl. the last block."""
    source = as_source(images)
    indices = list(range(len(source))) if indices is None else [int(i) for i in indices]
    want = tuple(sorted(set(depths) | {view.num_layers})) if depths else ()
    out: dict[int, list[torch.Tensor]] = {d: [] for d in want}
    flat: list[torch.Tensor] = []
    done = 0
    for chunk, x in batches(source, indices, batch_size):
        if want:
            for d, f in dynamic_depth.pooled_at(view, x, want).items():
                out[d].append(f.cpu())
        else:
            flat.append(view.forward_features(x).cpu())
        done += len(chunk)
        if progress:
            progress(stage, done, len(indices))
    if want:
        return {d: torch.cat(v) if v else torch.empty(0, view.feature_dim) for d, v in out.items()}
    return torch.cat(flat) if flat else torch.empty(0, view.feature_dim)


def set_training_mode(model: torch.nn.Module) -> None:
    """Train mode for what trains (LoRA dropout), eval mode for DINOv3's RoPE embedding.

    In train mode the RoPE module randomly rescales patch positions (the checkpoint's
    `pos_embed_rescale`, an augmentation of pre-training); serving never does, so adapters
    must not learn under it.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, ROPE_MODULES):
            module.eval()


@dataclass(frozen=True)
class AdapterJob:
    crop: str
    classes: list[str]
    family: str
    backbone_dir: Path
    lora: LoRA
    training: Training
    acceptance_rate: float
    random_init: bool = False
    synthetic: bool = False
    device: str = "cpu"
    exit_depths: tuple[int, ...] = ()     # blocks early exit may stop at: OOD statistics for each
    checkpoint: Path | None = None        # per-epoch training state, to resume after an interruption
    feature_batch_size: int = 64
    backbone_sha256: str | None = None    # known digest of the backbone's weights (saves re-hashing them)


def train_adapter(job: AdapterJob, images: "ImageSource | torch.Tensor", labels: torch.Tensor, out_dir: str | Path,
                  progress: Progress | None = None) -> dict:
    """Train LoRA + head on the train split, OOD on train/held-out, write the bundle to out_dir.

    With `job.checkpoint`, the state after every epoch is saved there and a later run with the
    same job resumes from it instead of starting over.
    """
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    t0 = time.perf_counter()
    tr = job.training
    source = as_source(images)
    device = torch.device(job.device)
    train_idx, held_idx = stratified_split(labels, tr.holdout_fraction, tr.seed)
    train_list, held_list = train_idx.tolist(), held_idx.tolist()
    torch.manual_seed(tr.seed)
    backbone = load_backbone(job.backbone_dir, job.family)
    model = get_peft_model(backbone, LoraConfig(r=job.lora.rank, lora_alpha=job.lora.alpha,
                                                lora_dropout=job.lora.dropout,
                                                target_modules=list(job.lora.target_modules))).to(device)
    view = EncoderView(model)
    steps_per_epoch = math.ceil(len(train_idx) / tr.batch_size)
    total = steps_per_epoch * tr.epochs
    state = _load_checkpoint(job)
    if state is not None:
        head = StandardisedHead(state["head"]["center"], state["head"]["scale"], len(job.classes))
    else:
        # The head sees standardised features (statistics of the untrained features): lesions move a
        # pooled feature only a little, so without this the head learns far too slowly.
        model.eval()
        first = features(view, source, train_list, job.feature_batch_size, progress=progress,
                         stage=f"features {job.crop}")
        head = StandardisedHead(first.mean(0), first.std(0).clamp_min(1e-6), len(job.classes))
    head = head.to(device)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=tr.learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tr.learning_rate, total_steps=total, pct_start=0.1)
    g = torch.Generator().manual_seed(tr.seed)
    start_epoch, loss_value = 0, float("nan")
    if state is not None:
        set_peft_model_state_dict(model, state["lora"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        g.set_state(state["rng"])
        start_epoch, loss_value = state["epoch"], state["loss"]
    step = start_epoch * steps_per_epoch
    labels_dev = labels.to(device)
    for epoch in range(start_epoch, tr.epochs):
        set_training_mode(model)
        order = train_idx[torch.randperm(len(train_idx), generator=g)].tolist()
        for chunk, x in batches(source, order, tr.batch_size):
            x = _augment(x.to(device), g)
            with torch.enable_grad():
                loss = torch.nn.functional.cross_entropy(head(view.forward_features(x)), labels_dev[chunk])
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_value = float(loss.item())
            if progress:
                progress(f"train {job.crop} (loss {loss_value:.3f})", step, total)
        if job.checkpoint is not None:
            _save_checkpoint(job, {"epoch": epoch + 1, "loss": loss_value, "head": head.state_dict(),
                                   "lora": get_peft_model_state_dict(model), "opt": opt.state_dict(),
                                   "sched": sched.state_dict(), "rng": g.get_state()})
    model.eval()
    head.eval()
    train_feats = features(view, source, train_list, job.feature_batch_size, depths=job.exit_depths)
    held_feats = features(view, source, held_list, job.feature_batch_size, depths=job.exit_depths)
    ood = ood_mod.fit_calibrated(train_feats, labels[train_idx], held_feats, labels[held_idx], len(job.classes), job.acceptance_rate,
                  view.num_layers)
    last_held = held_feats[view.num_layers] if isinstance(held_feats, dict) else held_feats
    with torch.no_grad():
        held_pred = head(last_held.to(device)).argmax(-1).cpu()
    metrics = {
        "heldout_accuracy": float((held_pred == labels[held_idx]).float().mean()),
        "heldout_accepted": float((ood.scores(last_held) <= 1).float().mean()),
        "train_size": len(train_idx), "heldout_size": len(held_idx),
        "final_loss": round(loss_value, 5), "train_seconds": round(time.perf_counter() - t0, 1),
    }
    head = head.cpu()
    with staged_directory(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        (tmp / "README.md").unlink(missing_ok=True)  # peft's model card template: not part of a bundle
        save_file(head.to_tensors(), str(tmp / HEAD_FILE))
        ood.save(tmp / OOD_FILE)
        write_bundle(tmp, {
            "kind": "adapter", "crop": job.crop, "classes": list(job.classes), "family": job.family,
            "feature": "cls+mean_patch",
            "backbone_sha256": job.backbone_sha256 or weights_digest(job.backbone_dir),
            "lora": job.lora.model_dump(), "training": tr.model_dump(),
            "ood_acceptance_rate": job.acceptance_rate, "ood_shrinkage": ood.shrinkage,
            "ood_thresholds": {c: round(float(t), 6) for c, t in zip(job.classes, ood.thresholds)},
            "ood_exit_depths": sorted(ood.by_depth),
            "random_init": job.random_init, "synthetic": job.synthetic, "metrics": metrics,
        })
    if job.checkpoint is not None:
        job.checkpoint.unlink(missing_ok=True)
    return metrics


def _load_checkpoint(job: AdapterJob) -> dict | None:
    if job.checkpoint is None or not job.checkpoint.is_file():
        return None
    try:
        state = torch.load(job.checkpoint, map_location="cpu", weights_only=False)
    except Exception:  # a checkpoint cut short by the interruption itself: start this adapter over
        return None
    return state if isinstance(state, dict) and state.get("job") == _job_key(job) else None


def _save_checkpoint(job: AdapterJob, state: dict) -> None:
    job.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    tmp = job.checkpoint.with_suffix(".tmp")
    torch.save({**state, "job": _job_key(job)}, tmp)
    os.replace(tmp, job.checkpoint)


def _job_key(job: AdapterJob) -> str:
    return repr((job.crop, job.classes, job.family, job.lora.model_dump(), job.training.model_dump(),
                 job.acceptance_rate))


class StandardisedHead(torch.nn.Module):
    """logits = Linear((feature - center) / scale); center and scale are fixed, not trained."""

    def __init__(self, center: torch.Tensor, scale: torch.Tensor, num_classes: int):
        super().__init__()
        self.register_buffer("center", center.float().clone())
        self.register_buffer("scale", scale.float().clone())
        self.linear = torch.nn.Linear(len(center), num_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear((feats.float() - self.center) / self.scale)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"center": self.center.contiguous(), "scale": self.scale.contiguous(),
                "weight": self.linear.weight.detach().contiguous(), "bias": self.linear.bias.detach().contiguous()}

    @classmethod
    def load(cls, directory: Path) -> "StandardisedHead":
        t = load_file(str(directory / HEAD_FILE))
        head = cls(t["center"], t["scale"], t["weight"].shape[0])
        head.linear.weight.data.copy_(t["weight"])
        head.linear.bias.data.copy_(t["bias"])
        return head.eval().requires_grad_(False)


def check_device(device: str) -> str:
    """`device` if torch can use it here, else DataError saying what is available."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DataError(f"--device {device!r}: not a device name (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {device}: no CUDA device is visible here (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise DataError(f"--device {device}: only cpu and cuda are supported")
    return str(dev)


def _rich_progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

    bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       transient=False, console=None)
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        key = stage.split(" (")[0]
        if key not in tasks:
            tasks[key] = bar.add_task(stage, total=total)
        bar.update(tasks[key], completed=done, total=total, description=stage)

    return bar, update


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m serving.train",
        description="Fine-tune one crop adapter (LoRA on the manifest's target modules + a linear disease head) "
                    "on an ImageFolder dataset, calibrate its OOD check on a held-out split, and export the "
                    "bundle (peft adapter files, head.safetensors, ood.safetensors, bundle.json with sha256s).")
    ap.add_argument("--version-dir", required=True, type=Path, help="versions/<v>: manifest with crops, LoRA and training settings")
    ap.add_argument("--data", required=True, type=Path, help="ImageFolder of the crop: one folder per disease class")
    ap.add_argument("--crop", required=True, help="crop name from the adapter spec, e.g. tomato")
    ap.add_argument("--backbone", required=True, type=Path, help="local Hugging Face backbone directory (config.json + model.safetensors)")
    ap.add_argument("--out", required=True, type=Path, help="bundle directory to write (replaced atomically)")
    ap.add_argument("--image-size", type=int, help="input size (default: the manifest's, or the model set's if --backbone is inside one)")
    ap.add_argument("--resize-size", type=int, help="shorter side before the centre crop (default: as --image-size)")
    ap.add_argument("--epochs", type=int, help="override the manifest's epochs")
    ap.add_argument("--batch-size", type=int, help="override the manifest's batch size")
    ap.add_argument("--lr", type=float, help="override the manifest's learning rate")
    ap.add_argument("--device", default="cpu", help="where to train: cpu (default), cuda, cuda:1, ...")
    ap.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout, no progress bar")
    args = ap.parse_args(argv)
    try:
        manifest = load_manifest(args.version_dir)
        if args.crop not in manifest.crops:
            raise DataError(f"crop {args.crop!r} is not in the adapter spec of {manifest.version} "
                            f"(crops: {', '.join(manifest.crops)})")
        b = manifest.backbone
        size, resize = b.image_size, b.resize_size
        set_json = args.backbone.parent / "model_set.json"
        if set_json.is_file():
            import json
            pre = json.loads(set_json.read_text()).get("preprocess", {})
            size, resize = pre.get("image_size", size), pre.get("resize_size", resize)
        if args.image_size:
            size, resize = args.image_size, args.resize_size or round(args.image_size * 256 / 224)
        try:
            preprocess = Preprocess(b.family, size, resize, tuple(b.mean), tuple(b.std))
        except ValueError as e:
            raise DataError(str(e)) from None
        overrides = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size,
                                       "learning_rate": args.lr}.items() if v is not None}
        training = manifest.training.model_copy(update=overrides)
        classes = manifest.crops[args.crop]
        paths, labels = list_image_folder(args.data, classes)
        if not (args.backbone / "config.json").is_file():
            raise ModelLoadError(f"backbone weights missing: expected config.json and model.safetensors in {args.backbone}")
        job = AdapterJob(args.crop, classes, b.family, args.backbone, manifest.adapter_spec.lora, training,
                         manifest.adapter_spec.ood_acceptance_rate, device=check_device(args.device))
        images = ImageFiles(paths, preprocess)
        if args.json:
            metrics = train_adapter(job, images, torch.tensor(labels), args.out)
        else:
            bar, update = _rich_progress()
            with bar:
                metrics = train_adapter(job, images, torch.tensor(labels), args.out, update)
    except (ManifestError, DataError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    if args.json:
        import json
        print(json.dumps({"crop": args.crop, "out": str(args.out), **metrics}))
    else:
        print(f"wrote {args.out}: held-out accuracy {metrics['heldout_accuracy']:.3f}, "
              f"accepted by OOD {metrics['heldout_accepted']:.3f} ({metrics['heldout_size']} held-out images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
