"""Per-checkpoint image preprocessing: resize (+ centre crop), mean/std normalisation.

Two layouts, as the published processors do it: `crop=True` resizes the shorter side to
`resize_size` and cuts the centre `image_size` square (DINOv2's BitImageProcessor); `crop=False`
resizes the whole image to an `image_size` square without cropping (DINOv3's processor).
Resampling defaults to the family's (DINOv2 bicubic, DINOv3 bilinear) and mean/std to
ImageNet's; a checkpoint's own `preprocessor_config.json` overrides all of it when a model set
is built (see serving.checkpoints), and the model set records the result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

PATCH_SIZE = {"dinov2": 14, "dinov3": 16}
RESAMPLE = {"dinov2": "bicubic", "dinov3": "bilinear"}
_PIL_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class Preprocess:
    family: str
    image_size: int
    resize_size: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop: bool = True
    resample: str | None = None  # None: the family's

    def __post_init__(self):
        if self.family not in PATCH_SIZE:
            raise ValueError(f"unknown backbone family {self.family!r}")
        if self.resample is None:
            object.__setattr__(self, "resample", RESAMPLE[self.family])
        if self.resample not in _PIL_RESAMPLE:
            raise ValueError(f"unknown resample {self.resample!r}: choose from {', '.join(_PIL_RESAMPLE)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch {self.patch_size}")
        if self.resize_size < self.image_size:
            raise ValueError("resize_size must be >= image_size")

    @property
    def patch_size(self) -> int:
        return PATCH_SIZE[self.family]

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "patch_size": self.patch_size}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(
            family=d["family"],
            image_size=int(d["image_size"]),
            resize_size=int(d["resize_size"]),
            mean=tuple(d.get("mean", cls.mean)),
            std=tuple(d.get("std", cls.std)),
            crop=bool(d.get("crop", True)),
            resample=d.get("resample"),
        )

    def array(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> float32 array (3, image_size, image_size), normalised."""
        image = ImageOps.exif_transpose(image) if image.getexif() else image
        if image.mode != "RGB":
            # Transparent pixels become white rather than whatever colour hides under alpha 0.
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(canvas, rgba)
            image = image.convert("RGB")
        resample = _PIL_RESAMPLE[self.resample]
        if self.crop:
            w, h = image.size
            scale = self.resize_size / min(w, h)
            nw, nh = max(self.image_size, round(w * scale)), max(self.image_size, round(h * scale))
            image = image.resize((nw, nh), resample)
            left, top = (nw - self.image_size) // 2, (nh - self.image_size) // 2
            image = image.crop((left, top, left + self.image_size, top + self.image_size))
        else:
            image = image.resize((self.image_size, self.image_size), resample)
        x = np.asarray(image, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> float32 tensor (N, 3, image_size, image_size)."""
        if not images:
            return torch.empty(0, 3, self.image_size, self.image_size)
        return torch.from_numpy(np.stack([self.array(im) for im in images]))
