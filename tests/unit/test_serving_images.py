"""serving/images.py: every way an upload can be wrong gets its own error; good images come out RGB."""

from __future__ import annotations

import base64
import io
import struct
import warnings
import zlib

import pytest
from PIL import Image

from serving.errors import ImageError, PayloadTooLarge, UnsupportedMedia
from serving.images import check_content_type, decode_base64, image_from_base64, open_image

MB = 1024 * 1024
LIMITS = {"max_bytes": 10 * MB, "max_pixels": 40_000_000}


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A real PNG whose header claims `width` x `height` (a decompression bomb's header)."""
    data = bytearray(encode(Image.new("L", (8, 8))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_common_formats_decode_to_rgb(fmt):
    image = open_image(encode(Image.new("RGB", (40, 30), (10, 200, 30)), fmt), **LIMITS)
    assert image.mode == "RGB" and image.size == (40, 30)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1", "I;16", "CMYK"])
def test_other_modes_become_rgb(mode):
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    image = open_image(encode(Image.new(mode, (16, 16)), fmt), **LIMITS)
    assert image.mode == "RGB"


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    image = open_image(encode(Image.new("RGB", (40, 20)), "JPEG", exif=exif), **LIMITS)
    assert image.size == (20, 40)


def test_empty_bytes():
    with pytest.raises(ImageError) as err:
        open_image(b"", **LIMITS)
    assert err.value.code == "empty_image"


def test_not_an_image():
    with pytest.raises(ImageError) as err:
        open_image(b"%PDF-1.4 this is a pdf, honestly" * 10, **LIMITS)
    assert err.value.code == "not_an_image" and err.value.status_code == 422


def test_a_format_outside_the_allowed_list_is_not_an_image():
    ppm = encode(Image.new("RGB", (8, 8)), "PPM")  # PIL can read it; we do not let that decoder near uploads
    with pytest.raises(ImageError) as err:
        open_image(ppm, **LIMITS)
    assert err.value.code == "not_an_image"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(fmt):
    noisy = Image.effect_noise((128, 128), 60).convert("RGB")
    data = encode(noisy, fmt)
    with pytest.raises(ImageError) as err:
        open_image(data[: len(data) // 2], **LIMITS)
    assert err.value.code == "corrupt_image"
    assert "truncated or corrupt" in err.value.message


def test_corrupt_data_after_a_valid_header():
    data = bytearray(encode(Image.effect_noise((64, 64), 60).convert("RGB"), "PNG"))
    data[60:400] = b"\x00" * 340  # header intact, compressed pixels destroyed
    with pytest.raises(ImageError) as err:
        open_image(bytes(data), **LIMITS)
    assert err.value.code == "corrupt_image"


def test_over_the_byte_limit():
    data = encode(Image.new("RGB", (64, 64)), "BMP")
    with pytest.raises(PayloadTooLarge) as err:
        open_image(data, max_bytes=len(data) - 1, max_pixels=10**9)
    assert err.value.code == "image_too_large" and err.value.status_code == 413


def test_over_the_pixel_limit_is_refused_from_the_header():
    with pytest.raises(PayloadTooLarge) as err:
        open_image(encode(Image.new("RGB", (100, 100))), max_bytes=MB, max_pixels=9_999)
    assert err.value.code == "too_many_pixels"
    assert "100x100" in err.value.message


def test_decompression_bomb_past_pils_own_limit():
    # 100000 x 100000 claimed: PIL itself raises DecompressionBombError while opening.
    with pytest.raises(PayloadTooLarge) as err:
        open_image(png_claiming(100_000, 100_000), **LIMITS)
    assert err.value.code == "too_many_pixels"


def test_decompression_bomb_warning_even_when_warnings_are_errors():
    # 10000 x 10000 = 1e8 pixels: between PIL's warning and error limits, and over ours.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(PayloadTooLarge) as err:
            open_image(png_claiming(10_000, 10_000), **LIMITS)
    assert err.value.code == "too_many_pixels"


def test_decompression_bomb_under_our_limit_check():
    with pytest.raises(PayloadTooLarge):
        open_image(png_claiming(8_000, 8_000), max_bytes=MB, max_pixels=1_000_000)


def test_base64_plain_data_url_and_urlsafe():
    raw = encode(Image.new("RGB", (8, 8), "red"))
    plain = base64.b64encode(raw).decode()
    assert decode_base64(plain, max_bytes=MB) == raw
    assert decode_base64(f"data:image/png;base64,{plain}", max_bytes=MB) == raw
    assert decode_base64(base64.urlsafe_b64encode(raw).decode().rstrip("="), max_bytes=MB) == raw
    assert decode_base64(plain[:20] + "\n" + plain[20:], max_bytes=MB) == raw  # line-wrapped


@pytest.mark.parametrize("text", ["not base64 at all!", "abc$def", "====", "QUJD\x00"])
def test_invalid_base64(text):
    with pytest.raises(ImageError) as err:
        decode_base64(text, max_bytes=MB)
    assert err.value.code == "invalid_base64"


@pytest.mark.parametrize("text", ["", "   ", "data:image/png;base64,"])
def test_empty_base64(text):
    with pytest.raises(ImageError) as err:
        decode_base64(text, max_bytes=MB)
    assert err.value.code == "empty_image"


def test_base64_over_the_limit_is_refused_before_decoding():
    with pytest.raises(PayloadTooLarge) as err:
        decode_base64("A" * 4000, max_bytes=1000)
    assert err.value.code == "image_too_large"


def test_image_from_base64_end_to_end():
    raw = encode(Image.new("RGB", (12, 9), "blue"), "JPEG")
    assert image_from_base64(base64.b64encode(raw).decode(), **LIMITS).size == (12, 9)


@pytest.mark.parametrize("content_type", [None, "", "image/png", "image/jpeg; charset=binary", "application/octet-stream"])
def test_image_content_types_pass(content_type):
    check_content_type(content_type)


@pytest.mark.parametrize("content_type", ["text/plain", "application/pdf", "video/mp4"])
def test_wrong_content_type(content_type):
    with pytest.raises(UnsupportedMedia) as err:
        check_content_type(content_type)
    assert err.value.status_code == 415 and content_type in err.value.message
