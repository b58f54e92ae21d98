"""Write the golden image set, orchestrator/golden/*.png (run once; the files are committed).

Eight small PNGs drawn by serving/synthetic.py: two in-distribution leaves of each crop (a healthy
one and a diseased one) and two out-of-distribution images. They use image indices far beyond
any training set, so no golden image was seen in training. Deterministic: rerunning gives the
same bytes.

    .venv/bin/python scripts/make_golden.py
"""

from __future__ import annotations

from pathlib import Path

from serving.synthetic import leaf_image, ood_image

OUT = Path(__file__).resolve().parent.parent / "orchestrator" / "golden"
INDEX = 90_000  # far beyond any per-class training count
LEAVES = [("tomato", "healthy"), ("tomato", "early_blight"), ("pepper", "healthy"),
          ("pepper", "bell_pepper_bacterial_spot"), ("corn", "healthy"), ("corn", "common_rust")]
OOD = ["noise", "pattern"]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.png"):
        old.unlink()
    for n, (crop, disease) in enumerate(LEAVES):
        leaf_image(crop, disease, INDEX + n).save(OUT / f"{crop}-{disease}.png", optimize=True)
    for n, kind in enumerate(OOD):
        ood_image(kind, INDEX + n).save(OUT / f"ood-{kind}.png", optimize=True)
    print(f"wrote {len(LEAVES) + len(OOD)} images to {OUT}")


if __name__ == "__main__":
    main()
