"""Fine-tune one crop adapter (LoRA + linear head), calibrate its OOD check, export the bundle.

    python -m serving.train --version-dir versions/v5.5.4-dinov3 --data DIR --crop tomato \
        --backbone build/models/v5.5.4-dinov3/backbone --out build/models/v5.5.4-dinov3/adapters/tomato

DIR is an ImageFolder: one sub-folder per class of the crop, named as in the adapter spec.
The training parameters (learning rate, batch size, epochs, held-out fraction, seed) come from
the manifest and can be overridden. The held-out split is never trained on: it sets the OOD
thresholds and gives the reported accuracy.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file, save_file

from serving import ood as ood_mod
from serving.backbones import EncoderView, load_backbone
from serving.bundles import ModelLoadError, sha256_file, staged_directory, write_bundle
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


def load_images(paths: list[Path], preprocess: Preprocess, progress: Progress | None = None) -> torch.Tensor:
    out = []
    for n, p in enumerate(paths, 1):
        try:
            with Image.open(p) as im:
                out.append(torch.from_numpy(preprocess.array(im)))
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"image {p} cannot be read ({e})") from None
        if progress and (n % 50 == 0 or n == len(paths)):
            progress("load images", n, len(paths))
    return torch.stack(out)


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
    flip_h = torch.rand(len(x), generator=g) < 0.5
    flip_v = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip_h[:, None, None, None], x.flip(-1), x)
    return torch.where(flip_v[:, None, None, None], x.flip(-2), x)


@torch.no_grad()
def features(view: EncoderView, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([view.forward_features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


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


def train_adapter(job: AdapterJob, images: torch.Tensor, labels: torch.Tensor, out_dir: str | Path,
                  progress: Progress | None = None) -> dict:
    """Train LoRA + head on the train split, OOD on train/held-out, write the bundle to out_dir."""
    from peft import LoraConfig, get_peft_model

    t0 = time.perf_counter()
    tr = job.training
    train_idx, held_idx = stratified_split(labels, tr.holdout_fraction, tr.seed)
    torch.manual_seed(tr.seed)
    backbone = load_backbone(job.backbone_dir, job.family)
    model = get_peft_model(backbone, LoraConfig(r=job.lora.rank, lora_alpha=job.lora.alpha,
                                                lora_dropout=job.lora.dropout,
                                                target_modules=list(job.lora.target_modules)))
    view = EncoderView(model)
    # The head sees standardised features (statistics of the untrained features): lesions move a
    # pooled feature only a little, so without this the head learns far too slowly.
    model.eval()
    first = features(view, images[train_idx])
    center, scale = first.mean(0), first.std(0).clamp_min(1e-6)
    head = StandardisedHead(center, scale, len(job.classes))
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=tr.learning_rate, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train_idx) / tr.batch_size)
    total = steps_per_epoch * tr.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tr.learning_rate, total_steps=total, pct_start=0.1)
    g = torch.Generator().manual_seed(tr.seed)
    step = 0
    model.train()
    for _epoch in range(tr.epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        for b in range(0, len(order), tr.batch_size):
            idx = order[b:b + tr.batch_size]
            x = _augment(images[idx], g)
            with torch.enable_grad():
                loss = torch.nn.functional.cross_entropy(head(view.forward_features(x)), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress:
                progress(f"train {job.crop} (loss {loss.item():.3f})", step, total)
    model.eval()
    head.eval()
    train_feats = features(view, images[train_idx])
    held_feats = features(view, images[held_idx])
    ood = ood_mod.fit(train_feats, labels[train_idx], len(job.classes))
    ood = ood_mod.calibrate(ood, held_feats, labels[held_idx], job.acceptance_rate)
    with torch.no_grad():
        held_pred = head(held_feats).argmax(-1)
    metrics = {
        "heldout_accuracy": float((held_pred == labels[held_idx]).float().mean()),
        "heldout_accepted": float((ood.scores(held_feats) <= 1).float().mean()),
        "train_size": len(train_idx), "heldout_size": len(held_idx),
        "final_loss": round(float(loss.item()), 5), "train_seconds": round(time.perf_counter() - t0, 1),
    }
    with staged_directory(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        (tmp / "README.md").unlink(missing_ok=True)  # peft's model card template: not part of a bundle
        save_file(head.to_tensors(), str(tmp / HEAD_FILE))
        ood.save(tmp / OOD_FILE)
        write_bundle(tmp, {
            "kind": "adapter", "crop": job.crop, "classes": list(job.classes), "family": job.family,
            "feature": "cls+mean_patch",
            "backbone_sha256": sha256_file(job.backbone_dir / "model.safetensors"),
            "lora": job.lora.model_dump(), "training": tr.model_dump(),
            "ood_acceptance_rate": job.acceptance_rate, "ood_shrinkage": ood.shrinkage,
            "ood_thresholds": {c: round(float(t), 6) for c, t in zip(job.classes, ood.thresholds)},
            "random_init": job.random_init, "synthetic": job.synthetic, "metrics": metrics,
        })
    return metrics


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
                         manifest.adapter_spec.ood_acceptance_rate)
        if args.json:
            images = load_images(paths, preprocess)
            metrics = train_adapter(job, images, torch.tensor(labels), args.out)
        else:
            bar, update = _rich_progress()
            with bar:
                images = load_images(paths, preprocess, update)
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
