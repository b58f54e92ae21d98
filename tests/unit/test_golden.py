"""The golden set: shipped PNGs, their fingerprint, and how outputs are compared."""

import io

from PIL import Image

from orchestrator import golden


def _row(name, sha, **kw):
    base = {"image": name, "sha256": sha, "decision": "accept", "reason": None, "crop": "corn", "disease": "healthy"}
    return {**base, **kw}


def test_shipped_golden_images_are_what_the_generator_draws_today():
    # A golden set drawn by an older generator would be judged by models trained on today's.
    import scripts.make_golden as make

    shipped = dict(golden.golden_images())
    expected = {f"{c}-{d}.png": make.leaf_image(c, d, make.INDEX + n) for n, (c, d) in enumerate(make.LEAVES)}
    expected |= {f"ood-{k}.png": make.ood_image(k, make.INDEX + n) for n, k in enumerate(make.OOD)}
    assert sorted(shipped) == sorted(expected)
    for name, img in expected.items():
        assert Image.open(io.BytesIO(shipped[name])).convert("RGB").tobytes() == img.convert("RGB").tobytes(), name


def test_compare_passes_on_equal_outputs_and_names_each_difference():
    rec = [_row("a.png", "1"), _row("b.png", "2")]
    assert golden.compare(rec, [dict(r, confidence=0.5) for r in rec]) == []
    got = [_row("a.png", "1", disease="common_rust"), _row("c.png", "3")]
    problems = golden.compare(rec, got)
    assert "a.png: disease 'healthy' -> 'common_rust'" in problems
    assert "b.png: no answer" in problems
    assert "c.png: not in the recorded set" in problems


def test_compare_tells_a_changed_golden_image_from_a_changed_model():
    problems = golden.compare([_row("a.png", "old")], [_row("a.png", "new", disease="x")])
    assert problems == ["a.png: the golden image changed since this build recorded it (rebuild to re-record)"]


def test_fingerprint_covers_every_shipped_image():
    names = [n for n, _ in golden.golden_images()]
    fp = golden.fingerprint()
    assert [n for n, _ in fp] == names and all(len(sha) == 64 for _, sha in fp)
