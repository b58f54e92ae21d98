"""Turning uploaded bytes into a checked RGB image, or one clear error.

Every check happens before the model sees anything: empty input, size over the byte limit,
bad base64, bytes that are no image (or a format we do not decode), too many pixels (a
decompression bomb is refused from its header, before its pixels are decoded), and a
truncated or corrupt file (found when the pixels are decoded). Errors are `ImageError`
(422), `PayloadTooLarge` (413) or `UnsupportedMedia` (415), each naming the problem.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

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


def open_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode image bytes into a fully loaded RGB `PIL.Image` (EXIF orientation applied).

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
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # a warning when made an error
        raise PayloadTooLarge(f"image has too many pixels ({e})", code="too_many_pixels") from None
    except UnidentifiedImageError:
        raise ImageError(
            "data is not an image in a supported format (JPEG, PNG, WebP, BMP, GIF, TIFF)", code="not_an_image"
        ) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"image header is corrupt ({e})", code="corrupt_image") from None

    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})", code="corrupt_image")
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height:,} pixels, over the {max_pixels:,} pixel limit",
            code="too_many_pixels",
        )
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
        return image.convert("RGB")
    except Image.DecompressionBombError as e:
        raise PayloadTooLarge(f"image has too many pixels ({e})", code="too_many_pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error) as e:
        detail = str(e) or type(e).__name__
        raise ImageError(f"image data is truncated or corrupt ({detail})", code="corrupt_image") from None


def image_from_base64(text: str, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """`decode_base64` then `open_image`."""
    return open_image(decode_base64(text, max_bytes=max_bytes), max_bytes=max_bytes, max_pixels=max_pixels)
