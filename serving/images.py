"""Turning uploaded bytes into a checked, downscaled RGB image, or one clear error.

Every check happens before the model sees anything: empty input, size over the byte limit,
bad base64, bytes that are no image (or a format we do not decode), too many pixels (a
decompression bomb is refused from its header, before its pixels are decoded), and a
truncated or corrupt file (found when the pixels are decoded). Errors are `ImageError`
(422), `PayloadTooLarge` (413) or `UnsupportedMedia` (415), each naming the problem; their
messages are ours, never the decoder's exception text.

Memory: a decoded image is shrunk at once to about twice the model's input (`shorter_side`),
JPEGs already while decoding (`Image.draft`, a DCT-domain 1/2, 1/4 or 1/8 scale), other formats
right after (`Image.reduce`, an integer box filter). What waits in the batch queue is then
at most `held_pixels(shorter_side)` pixels, whatever was uploaded; the full-size buffer lives
only while one decode runs, and `DecodeGate` bounds how many run at once (docs/security.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import math
import re
import struct
import warnings

from PIL import Image, UnidentifiedImageError

from serving.errors import ImageError, PayloadTooLarge, UnsupportedMedia

# Decoders we let near untrusted bytes: the formats cameras and browsers produce (those this PIL has).
Image.init()
ALLOWED_FORMATS = tuple(f for f in ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO") if f in Image.OPEN)
ALLOWED_CONTENT_TYPES = (
    "image/jpeg",
    "image/jpg",
    "image/png",
    "image/webp",
    "image/bmp",
    "image/x-ms-bmp",
    "image/gif",
    "image/tiff",
    "application/octet-stream",  # what many clients send for a file of unknown type
)
# PIL warns past its own pixel limit (and raises past twice that); we refuse from our own limit
# (`max_pixels`) before decoding, so the warning is noise. A filter, not catch_warnings: that is not thread-safe.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)


def _human(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB"
    if n >= 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n} bytes"


def check_content_type(content_type: str | None, field: str = "image") -> None:
    """Refuse an uploaded part whose declared type is not an image (an absent type is allowed)."""
    if not content_type:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in ALLOWED_CONTENT_TYPES:
        raise UnsupportedMedia(
            f"field {field!r} has content type {media!r}; send an image (JPEG, PNG, WebP, BMP, GIF or TIFF)",
            code="wrong_content_type",
        )


def decode_base64(text: str, *, max_bytes: int) -> bytes:
    """Decode a base64 string (plain or a `data:image/...;base64,` URL) into bytes.

    Raises:
        ImageError: empty string (`empty_image`) or not valid base64 (`invalid_base64`).
        PayloadTooLarge: the decoded bytes would exceed `max_bytes` (`image_too_large`).
    """
    if not isinstance(text, str):
        raise ImageError("image must be a base64 string", code="invalid_base64")
    text = _DATA_URL.sub("", text.strip(), count=1)
    compact = "".join(text.split())
    if not compact:
        raise ImageError("image is empty: expected base64-encoded image bytes", code="empty_image")
    # Refuse from the encoded length, before allocating the decoded bytes.
    if len(compact) * 3 // 4 - compact.count("=") > max_bytes:
        raise PayloadTooLarge(
            f"image is about {_human(len(compact) * 3 // 4)}, over the {_human(max_bytes)} limit",
            code="image_too_large",
        )
    # Accept the URL-safe alphabet too; validate=True rejects any other character.
    if "-" in compact or "_" in compact:
        compact = compact.replace("-", "+").replace("_", "/")
    if len(compact) % 4:
        compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("image is not valid base64", code="invalid_base64") from None


# The EXIF orientation tag and the transpose that shows the image upright (what ImageOps.exif_transpose does).
_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Modes Image.reduce works on; others (palette, 1-bit, 16-bit, CMYK) become RGB first.
_REDUCIBLE = ("L", "LA", "RGB", "RGBA", "RGBa", "La")
# A held image keeps at most this many times shorter_side² pixels (a very long, thin upload is
# shrunk below shorter_side on its short side rather than held at full length).
HELD_ASPECT = 4


def held_pixels(shorter_side: int) -> int:
    """The most pixels an image keeps after `open_image(..., shorter_side=...)` (x 3 bytes as RGB)."""
    return HELD_ASPECT * 4 * shorter_side * shorter_side  # (2s)² for the short side, x HELD_ASPECT for the aspect


def shrink_factor(width: int, height: int, shorter_side: int) -> int:
    """The integer factor that keeps the short side >= `shorter_side` and the area <= `held_pixels`."""
    by_side = max(1, min(width, height) // shorter_side)
    by_area = math.ceil(math.sqrt(width * height / held_pixels(shorter_side)))
    return max(1, by_side, by_area)


def open_image(data: bytes, *, max_bytes: int, max_pixels: int, shorter_side: int | None = None) -> Image.Image:
    """Decode image bytes into a fully loaded RGB `PIL.Image` (EXIF orientation applied).

    With `shorter_side`, an image whose short side is at least twice that is shrunk by an integer
    factor, keeping its short side at `shorter_side` or more (JPEG: during the decode).

    Raises:
        ImageError: `empty_image`, `not_an_image` (unknown or unsupported format), `corrupt_image`
            (truncated or damaged data).
        PayloadTooLarge: `image_too_large` (bytes over `max_bytes`), `too_many_pixels` (width x
            height over `max_pixels`: a decompression bomb is refused before it is decoded).
    """
    if not data:
        raise ImageError("image is empty (0 bytes)", code="empty_image")
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"image is {_human(len(data))}, over the {_human(max_bytes)} limit", code="image_too_large"
        )
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # a warning when made an error
        raise PayloadTooLarge("image has too many pixels", code="too_many_pixels") from None
    except UnidentifiedImageError:
        raise ImageError(
            "data is not an image in a supported format (JPEG, PNG, WebP, BMP, GIF, TIFF)", code="not_an_image"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error):
        raise ImageError("image header is corrupt or truncated", code="corrupt_image") from None

    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})", code="corrupt_image")
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height:,} pixels, over the {max_pixels:,} pixel limit",
            code="too_many_pixels",
        )
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
        if shorter_side and image.format in ("JPEG", "MPO"):
            factor = shrink_factor(width, height, shorter_side)
            if factor > 1:  # the decoder picks the largest 1/2^k scale still at least this size
                image.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
        image.load()
        if shorter_side:
            image = _shrink(image, shorter_side)
        image = image.convert("RGB")
        if orientation in _TRANSPOSE:
            image = image.transpose(_TRANSPOSE[orientation])
        return image
    except Image.DecompressionBombError:
        raise PayloadTooLarge("image has too many pixels", code="too_many_pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error):
        raise ImageError("image data is truncated or corrupt", code="corrupt_image") from None


def _shrink(image: Image.Image, shorter_side: int) -> Image.Image:
    factor = shrink_factor(image.width, image.height, shorter_side)
    if factor <= 1:
        return image
    if image.mode not in _REDUCIBLE:
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    return image.reduce(factor)


class DecodeGate:
    """At most `limit` decodes at once, so full-size pixel buffers in memory are at most `limit`."""

    def __init__(self, limit: int):
        self.limit = limit
        self._semaphore = asyncio.Semaphore(limit)
        self.running = 0
        self.peak = 0  # the most decodes seen at once (tests, metrics)

    async def __aenter__(self) -> "DecodeGate":
        await self._semaphore.acquire()
        self.running += 1
        self.peak = max(self.peak, self.running)
        return self

    async def __aexit__(self, *exc) -> None:
        self.running -= 1
        self._semaphore.release()


def image_from_base64(text: str, *, max_bytes: int, max_pixels: int, shorter_side: int | None = None) -> Image.Image:
    """`decode_base64` then `open_image`."""
    return open_image(decode_base64(text, max_bytes=max_bytes), max_bytes=max_bytes, max_pixels=max_pixels,
                      shorter_side=shorter_side)
