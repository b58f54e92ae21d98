"""Bounded memory per upload (serving/images.py, serving/settings.py): shrink right after decode,
a phone-photo pixel cap, decoder text never in an error."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from serving.errors import ImageError, PayloadTooLarge
from serving.images import held_pixels, open_image, shrink_factor
from serving.settings import Settings

MB = 1024 * 1024
LIMITS = {"max_bytes": 32 * MB, "max_pixels": 40_000_000}


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_a_large_photo_is_shrunk_to_between_one_and_two_times_the_model_side(fmt):
    data = encode(Image.new("RGB", (3000, 2000), (30, 160, 40)), fmt)
    image = open_image(data, **LIMITS, shorter_side=224)
    assert image.mode == "RGB"
    assert 224 <= min(image.size) < 2 * 224, image.size
    assert abs(image.width / image.height - 1.5) < 0.02  # the aspect ratio stays


def test_a_jpeg_is_decoded_at_a_reduced_scale(monkeypatch):
    from PIL import JpegImagePlugin

    seen = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def draft(self, mode, size):
        seen.append(size)
        return real_draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    image = open_image(encode(Image.new("RGB", (4000, 3000)), "JPEG"), **LIMITS, shorter_side=256)
    assert seen and seen[0][1] <= 3000 // 8 + 1, seen  # asked for about 1/11 of the size: the DCT gives 1/8
    assert 256 <= min(image.size) < 512


def test_small_images_are_kept_as_they_are():
    image = open_image(encode(Image.new("RGB", (300, 200))), **LIMITS, shorter_side=224)
    assert image.size == (300, 200)


def test_a_long_thin_image_keeps_at_most_held_pixels():
    image = open_image(encode(Image.new("L", (30_000, 300))), **LIMITS, shorter_side=64)
    assert image.width * image.height <= held_pixels(64)


def test_exif_orientation_is_applied_after_the_shrink():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    image = open_image(encode(Image.new("RGB", (2000, 1000)), "JPEG", exif=exif), **LIMITS, shorter_side=100)
    assert image.height > image.width and 100 <= image.width < 200


@pytest.mark.parametrize("mode", ["P", "1", "I;16", "CMYK", "RGBA", "LA"])
def test_every_mode_shrinks_and_ends_rgb(mode):
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    image = open_image(encode(Image.new(mode, (1000, 800)), fmt), **LIMITS, shorter_side=100)
    assert image.mode == "RGB" and 100 <= min(image.size) < 200


def test_shrink_factor_is_an_integer_that_keeps_the_short_side():
    assert shrink_factor(4000, 3000, 256) == 11
    assert shrink_factor(511, 511, 256) == 1
    assert shrink_factor(100, 100, 256) == 1


def test_the_default_pixel_cap_fits_a_phone_photo_and_no_more():
    settings = Settings.from_env({})
    assert 4608 * 3456 <= settings.max_pixels <= 16_000_000  # a 16 MP phone photo passes
    with pytest.raises(PayloadTooLarge):
        open_image(encode(Image.new("L", (4100, 4100))), max_bytes=32 * MB, max_pixels=settings.max_pixels)


def test_limits_settings_from_the_environment():
    s = Settings.from_env({"AADS_DECODE_CONCURRENCY": "3", "AADS_MAX_CONNECTIONS": "20", "AADS_BODY_TIMEOUT_S": "5",
                           "AADS_AUTH_FAILURE_LIMIT": "off", "AADS_TRUSTED_PROXIES": "edge, 10.0.0.0/8"})
    assert (s.decode_concurrency, s.max_connections, s.body_timeout_s) == (3, 20, 5.0)
    assert s.auth_failure_limit is None and s.trusted_proxies == ("edge", "10.0.0.0/8")
    default = Settings.from_env({})
    assert default.auth_failure_limit is not None and default.decode_concurrency >= 1


def test_corrupt_images_never_carry_the_decoders_text():
    import os

    good = encode(Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)), "PNG")
    for bad in (good[: len(good) // 2], good[:100] + b"\x00" * 200):
        with pytest.raises(ImageError) as err:
            open_image(bad, **LIMITS)
        assert err.value.code == "corrupt_image"
        assert "(" not in err.value.message, err.value.message  # no "(<the decoder's exception>)" tail
