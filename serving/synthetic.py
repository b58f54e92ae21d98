"""Deterministic synthetic leaf images (numpy + PIL only) for demos and tests.

Each crop has its own leaf (shape, colour, veins) and each disease class its own lesion
pattern (rings, blotches, specks, pustules, streaks), drawn at random positions, sizes and
orientations. Out-of-distribution images are noise and patterns no class uses. Image i of a
class is drawn from an RNG seeded by (seed, crop, class, i): the same arguments always give
the same bytes, whatever order they are generated in.

Layout written by `generate`: <out>/<crop>/<class>/*.png (an ImageFolder per crop) and
<out>/_ood/<kind>/*.png.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OOD_DIR = "_ood"
OOD_KINDS = ("noise", "pattern", "unseen_leaf")

LEAF = {  # base colour (RGB), leaf kind
    "tomato": ((72, 142, 52), "serrated"),
    "pepper": ((28, 96, 40), "smooth"),
    "corn": ((128, 166, 62), "blade"),
}
DEFAULT_LEAF = ((90, 130, 60), "smooth")


def _rng(*key) -> np.random.Generator:
    words = [zlib.crc32(str(k).encode()) for k in key]
    return np.random.default_rng(words)


def _jitter(rng, colour, amount=14):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _background(rng, size):
    base = np.array(_jitter(rng, rng.choice([(96, 74, 52), (110, 100, 88)]), 8), dtype=np.float32)
    img = base + rng.normal(0, 10, (size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _leaf_polygon(rng, size, kind):
    """Points of a leaf outline centred on the canvas, randomly rotated and scaled."""
    cx, cy = size / 2 + rng.uniform(-0.06, 0.06) * size, size / 2 + rng.uniform(-0.06, 0.06) * size
    angle = rng.uniform(0, math.pi)
    if kind == "blade":
        length, width = size * rng.uniform(0.9, 1.1), size * rng.uniform(0.36, 0.46)
    else:
        length, width = size * rng.uniform(0.46, 0.54), size * rng.uniform(0.32, 0.4)
    pts = []
    n = 64
    for i in range(n):
        t = 2 * math.pi * i / n
        if kind == "blade":
            x, y = length / 2 * math.cos(t), width / 2 * math.sin(t) * (1 - 0.3 * abs(math.cos(t)))
        else:
            r = 1.0 + (0.09 * (i % 2) if kind == "serrated" else 0.0)
            x = length * math.cos(t) * r
            y = width * math.sin(t) * r * (1 - 0.25 * math.cos(t))
        pts.append((cx + x * math.cos(angle) - y * math.sin(angle), cy + x * math.sin(angle) + y * math.cos(angle)))
    return pts, (cx, cy, angle, length)


def _inside(rng, mask: np.ndarray, n: int):
    ys, xs = np.nonzero(mask)
    idx = rng.integers(0, len(xs), n)
    return list(zip(xs[idx].tolist(), ys[idx].tolist()))


def _ellipse(draw, x, y, rx, ry, fill, outline=None, width=1):
    draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=fill, outline=outline, width=width)


def _lesions(rng, draw, mask, disease, angle, size):
    s = size / 144  # lesion sizes are tuned for a 144px canvas
    if disease == "healthy":
        return
    if disease == "early_blight":  # brown target spots with concentric rings and a yellow halo
        for x, y in _inside(rng, mask, rng.integers(8, 14)):
            r = rng.uniform(6, 10) * s
            _ellipse(draw, x, y, r + 3 * s, r + 3 * s, _jitter(rng, (190, 180, 60)))
            for k, col in enumerate([(92, 58, 28), (150, 104, 54), (80, 50, 24), (140, 96, 50)]):
                rr = r * (1 - k * 0.24)
                _ellipse(draw, x, y, rr, rr, _jitter(rng, col, 8))
    elif disease == "late_blight":  # large dark olive blotches with pale margins
        for x, y in _inside(rng, mask, rng.integers(2, 5)):
            r = rng.uniform(14, 24) * s
            _ellipse(draw, x, y, r + 4 * s, r * 0.8 + 4 * s, _jitter(rng, (150, 170, 110)))
            for _ in range(4):
                _ellipse(draw, x + rng.uniform(-r / 3, r / 3), y + rng.uniform(-r / 3, r / 3),
                         r * rng.uniform(0.55, 0.8), r * rng.uniform(0.45, 0.7), _jitter(rng, (44, 48, 30), 8))
    elif disease == "septoria_leaf_spot":  # many small grey-white spots with dark borders
        for x, y in _inside(rng, mask, rng.integers(30, 50)):
            r = rng.uniform(2.5, 4) * s
            _ellipse(draw, x, y, r, r, _jitter(rng, (210, 206, 190), 10), outline=_jitter(rng, (70, 40, 30), 8),
                     width=max(1, round(1.4 * s)))
    elif disease == "bacterial_spot":  # many tiny black specks
        for x, y in _inside(rng, mask, rng.integers(60, 100)):
            r = rng.uniform(1.5, 2.5) * s
            _ellipse(draw, x, y, r, r, _jitter(rng, (20, 18, 14), 6))
    elif disease == "bell_pepper_bacterial_spot":  # brown spots with a yellow halo
        for x, y in _inside(rng, mask, rng.integers(20, 35)):
            r = rng.uniform(2.5, 4) * s
            _ellipse(draw, x, y, r + 2 * s, r + 2 * s, _jitter(rng, (200, 190, 50)))
            _ellipse(draw, x, y, r, r, _jitter(rng, (90, 50, 20), 8))
    elif disease == "common_rust":  # small elongated orange-brown pustules
        for x, y in _inside(rng, mask, rng.integers(80, 140)):
            _ellipse(draw, x, y, rng.uniform(2, 3.5) * s, rng.uniform(1.2, 2) * s, _jitter(rng, (196, 96, 30), 12))
    elif disease == "northern_leaf_blight":  # long tan cigar-shaped streaks along the blade
        for x, y in _inside(rng, mask, rng.integers(4, 7)):
            half, w = rng.uniform(14, 24) * s, rng.uniform(3, 5) * s
            dx, dy = half * math.cos(angle), half * math.sin(angle)
            draw.line((x - dx, y - dy, x + dx, y + dy), fill=_jitter(rng, (196, 178, 132), 10), width=max(2, round(2 * w)))
            draw.line((x - dx * 0.8, y - dy * 0.8, x + dx * 0.8, y + dy * 0.8), fill=_jitter(rng, (150, 120, 80), 10),
                      width=max(1, round(w * 0.6)))
    else:  # a class not known here: a deterministic but distinct pattern from its name
        col = tuple(int(c) for c in _rng(disease).integers(30, 220, 3))
        for x, y in _inside(rng, mask, rng.integers(6, 14)):
            r = rng.uniform(3, 6) * s
            _ellipse(draw, x, y, r, r, _jitter(rng, col, 8))


def leaf_image(crop: str, disease: str, index: int, seed: int = 0, size: int = 144) -> Image.Image:
    """Image `index` of class `disease` of `crop`; deterministic in all arguments."""
    rng = _rng(seed, crop, disease, index)
    colour, kind = LEAF.get(crop, DEFAULT_LEAF)
    img = _background(rng, size)
    pts, (cx, cy, angle, length) = _leaf_polygon(rng, size, kind)
    shade = rng.uniform(0.94, 1.06)
    leaf_col = tuple(int(np.clip(c * shade, 0, 255)) for c in _jitter(rng, colour, 10))
    mask_img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask_img).polygon(pts, fill=255)
    leaf = Image.new("RGB", (size, size), leaf_col)
    draw = ImageDraw.Draw(leaf)
    vein = tuple(min(255, int(c * 1.25)) for c in leaf_col)
    dx, dy = math.cos(angle), math.sin(angle)
    if kind == "blade":  # parallel veins
        for off in np.linspace(-0.1, 0.1, 5) * size:
            draw.line((cx - dx * size - dy * off, cy - dy * size + dx * off,
                       cx + dx * size - dy * off, cy + dy * size + dx * off), fill=vein, width=1)
    else:  # a midrib and side veins
        draw.line((cx - dx * length, cy - dy * length, cx + dx * length, cy + dy * length), fill=vein, width=2)
        for t in np.linspace(-0.7, 0.7, 6):
            bx, by = cx + dx * length * t, cy + dy * length * t
            for sgn in (-1, 1):
                draw.line((bx, by, bx + (dx * 0.3 - sgn * dy) * length * 0.5,
                           by + (dy * 0.3 + sgn * dx) * length * 0.5), fill=vein, width=1)
    mask = np.asarray(mask_img) > 0
    _lesions(rng, draw, mask, disease, angle, size)
    img.paste(leaf, (0, 0), mask_img.filter(ImageFilter.GaussianBlur(0.8)))
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.95, 1.05) + rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def ood_image(kind: str, index: int, seed: int = 0, size: int = 144) -> Image.Image:
    """An image no crop adapter should accept: noise, unseen patterns, or a leaf in unnatural colours."""
    rng = _rng(seed, "ood", kind, index)
    if kind == "noise":
        flavour = index % 3
        if flavour == 0:
            arr = rng.integers(0, 256, (size, size, 3))
        elif flavour == 1:
            arr = rng.normal(rng.uniform(60, 200), rng.uniform(20, 70), (size, size, 3))
        else:
            small = rng.integers(0, 256, (size // 8, size // 8, 3)).astype(np.uint8)
            arr = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if kind == "pattern":
        a, b = (tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(2))
        img = Image.new("RGB", (size, size), a)
        draw = ImageDraw.Draw(img)
        flavour = index % 4
        step = int(rng.integers(8, 28))
        if flavour == 0:  # checkerboard
            for y in range(0, size, step):
                for x in range(0, size, step):
                    if (x // step + y // step) % 2:
                        draw.rectangle((x, y, x + step - 1, y + step - 1), fill=b)
        elif flavour == 1:  # stripes
            for x in range(0, 2 * size, 2 * step):
                draw.polygon([(x, 0), (x + step, 0), (x + step - size, size), (x - size, size)], fill=b)
        elif flavour == 2:  # concentric circles
            for r in range(size, 0, -step):
                draw.ellipse((size / 2 - r, size / 2 - r, size / 2 + r, size / 2 + r), fill=b if (r // step) % 2 else a)
        else:  # random polygons
            for _ in range(int(rng.integers(4, 10))):
                pts = [tuple(rng.uniform(0, size, 2)) for _ in range(int(rng.integers(3, 6)))]
                draw.polygon(pts, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        return img
    if kind == "unseen_leaf":  # the leaf shape in a colour no plant here has, on a flat background
        img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(150, 256, 3)))
        pts, _ = _leaf_polygon(rng, size, ("serrated", "smooth", "blade")[index % 3])
        colour = [(60, 60, 200), (150, 40, 170), (210, 40, 40), (30, 170, 200)][int(rng.integers(0, 4))]
        ImageDraw.Draw(img).polygon(pts, fill=_jitter(rng, colour, 20))
        return img
    raise ValueError(f"unknown OOD kind {kind!r}: choose from {', '.join(OOD_KINDS)}")


def generate(out: str | Path, crops: dict[str, list[str]], per_class: int, seed: int = 0, size: int = 144,
             ood_per_kind: int = 0, progress=None) -> Path:
    """Write the ImageFolder tree; returns `out`. `progress(done, total)` is called as it goes."""
    out = Path(out)
    jobs = [(c, d, i) for c, ds in crops.items() for d in ds for i in range(per_class)]
    jobs += [(OOD_DIR, k, i) for k in OOD_KINDS for i in range(ood_per_kind)]
    for n, (crop, cls, i) in enumerate(jobs, 1):
        folder = out / crop / cls
        folder.mkdir(parents=True, exist_ok=True)
        img = ood_image(cls, i, seed, size) if crop == OOD_DIR else leaf_image(crop, cls, i, seed, size)
        img.save(folder / f"{cls}_{i:04d}.png", optimize=False, compress_level=1)
        if progress:
            progress(n, len(jobs))
    return out
