"""Every bad input from the issue gets a 4xx JSON error naming the problem; then the service still serves.

Not an image, truncated file, corrupt file, invalid base64, empty body, over the size limit,
decompression bomb (pixel limit), unknown crop_hint, a batch over the limit, wrong content type
(and a few more: malformed JSON, missing fields, multipart without the file).
"""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from .conftest import FAMILIES, b64, png_bytes, serve

UPLOAD_LIMIT = 200_000  # bytes; small so "over the limit" is cheap to send
PIXEL_LIMIT = 4_000_000


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG whose header claims width x height: a decompression bomb's header."""
    data = bytearray(png_bytes(Image.new("L", (8, 8))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def noisy_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((96, 96), 60).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def too_big_bmp() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), "green").save(buf, "BMP")  # 270 KB, under the pixel limit
    assert len(buf.getvalue()) > UPLOAD_LIMIT
    return buf.getvalue()


def cases(leaf: bytes) -> list[tuple[str, dict, int, str, str]]:
    """(name, request kwargs, status, error code, a word the message must contain)."""
    jpeg = noisy_jpeg()
    corrupt = bytearray(png_bytes(Image.effect_noise((64, 64), 60).convert("RGB")))
    corrupt[60:400] = b"\0" * 340
    text = b"just some text, certainly not a picture"
    big = too_big_bmp()
    bomb = png_claiming(100_000, 100_000)
    over_pixels = png_claiming(3_000, 3_000)  # 9 Mpx: under PIL's own limit, over ours
    return [
        ("not an image (json)", {"json": {"image": b64(text)}}, 422, "not_an_image", "not an image"),
        ("not an image (upload)", {"files": {"image": ("x.png", text, "image/png")}}, 422, "not_an_image", "not an image"),
        ("truncated file", {"json": {"image": b64(jpeg[: len(jpeg) // 2])}}, 422, "corrupt_image", "truncated"),
        ("truncated upload", {"files": {"image": ("x.jpg", jpeg[:300], "image/jpeg")}}, 422, "corrupt_image", "truncated"),
        ("corrupt file", {"json": {"image": b64(bytes(corrupt))}}, 422, "corrupt_image", "corrupt"),
        ("invalid base64", {"json": {"image": "this is *not* base64!"}}, 422, "invalid_base64", "base64"),
        ("empty body (json)", {"content": b"", "headers": {"content-type": "application/json"}}, 400, "empty_body", "empty"),
        ("empty image string", {"json": {"image": ""}}, 422, "empty_image", "empty"),
        ("empty upload", {"files": {"image": ("x.png", b"", "image/png")}}, 422, "empty_image", "empty"),
        ("over the size limit (json)", {"json": {"image": b64(big)}}, 413, "image_too_large", "limit"),
        ("over the size limit (upload)", {"files": {"image": ("x.bmp", big, "image/bmp")}}, 413, "image_too_large", "AADS_MAX_UPLOAD_BYTES"),
        ("decompression bomb", {"json": {"image": b64(bomb)}}, 413, "too_many_pixels", "pixels"),
        ("over the pixel limit", {"files": {"image": ("x.png", over_pixels, "image/png")}}, 413, "too_many_pixels", "pixel limit"),
        ("unknown crop_hint", {"json": {"image": b64(leaf), "crop_hint": "banana"}}, 422, "unknown_crop", "banana"),
        ("unknown crop_hint (upload)", {"files": {"image": ("x.png", leaf, "image/png")}, "data": {"crop_hint": "rice"}},
         422, "unknown_crop", "tomato"),
        ("wrong content type", {"content": b64(leaf).encode(), "headers": {"content-type": "text/plain"}}, 415,
         "wrong_content_type", "text/plain"),
        ("no content type", {"content": b"xyz"}, 415, "wrong_content_type", "content type"),
        ("upload part of the wrong type", {"files": {"image": ("x.txt", leaf, "text/plain")}}, 415,
         "wrong_content_type", "text/plain"),
        ("malformed json", {"content": b'{"image": ', "headers": {"content-type": "application/json"}}, 422,
         "invalid_json", "JSON"),
        ("missing image field", {"json": {"crop_hint": "tomato"}}, 422, "invalid_request", "image"),
        ("unknown field", {"json": {"image": b64(leaf), "crop": "tomato"}}, 422, "invalid_request", "crop"),
        ("image is not a string", {"json": {"image": 12345}}, 422, "invalid_request", "image"),
        ("multipart without the file", {"files": {"other": ("x.png", leaf, "image/png")}}, 422, "missing_image", "image"),
        ("json array body", {"json": [1, 2]}, 422, "invalid_request", "body"),
    ] + [(name, dict(kw, _path="/v1/diagnose/batch"), st, code, word) for name, kw, st, code, word in [
        ("batch over the limit", {"json": {"images": [{"image": b64(leaf)}] * 5}}, 413, "batch_too_large", "limit of 4"),
        ("empty batch", {"json": {"images": []}}, 422, "empty_batch", "empty"),
        ("batch of the wrong type", {"files": {"image": ("x.png", leaf, "image/png")}}, 415, "wrong_content_type", "json"),
        ("batch not a list", {"json": {"images": "nope"}}, 422, "invalid_request", "images"),
    ]]


@pytest.fixture(scope="module", params=FAMILIES)
def strict_service(request, tiny_model_set):
    with serve(tiny_model_set(request.param), max_upload_bytes=UPLOAD_LIMIT, max_pixels=PIXEL_LIMIT,
               max_batch_items=4, max_wait_ms=5) as svc:
        yield svc


def test_every_bad_input_gets_a_4xx_json_error_naming_it_then_the_service_still_serves(strict_service, leaf_png):
    client = strict_service.client
    seen = []
    for name, kwargs, status, code, word in cases(leaf_png):
        kwargs = dict(kwargs)
        path = kwargs.pop("_path", "/v1/diagnose")
        response = client.post(path, **kwargs)
        assert response.status_code == status, f"{name}: {response.status_code} {response.text[:300]}"
        assert response.headers["content-type"].startswith("application/json"), name
        error = response.json()["error"]
        assert set(error) == {"code", "message"}, name
        if code:
            assert error["code"] == code, f"{name}: {error}"
        assert word.lower() in error["message"].lower(), f"{name}: {error['message']!r} lacks {word!r}"
        assert "Traceback" not in response.text
        seen.append(name)
    assert len(seen) == len(cases(leaf_png))

    # Still serving, and still ready.
    good = client.post("/v1/diagnose", json={"image": b64(leaf_png)})
    assert good.status_code == 200 and good.json()["decision"] in ("accept", "review")
    assert client.get("/ready").status_code == 200
    metrics = client.get("/metrics").text
    assert 'status="500"' not in metrics


def test_bad_items_inside_a_batch_fail_alone(strict_service, leaf_png):
    items = [
        {"image": b64(leaf_png)},
        {"image": "%%% not base64"},
        {"image": b64(b"plain text")},
        {"image": b64(leaf_png), "crop_hint": "banana"},
    ]
    response = strict_service.client.post("/v1/diagnose/batch", json={"images": items})
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 4 and body["failed"] == 3
    results = body["results"]
    assert results[0]["error"] is None and results[0]["result"]["decision"] in ("accept", "review")
    assert [r["error"]["code"] for r in results[1:]] == ["invalid_base64", "not_an_image", "unknown_crop"]
    assert all(r["result"] is None for r in results[1:])


def test_unknown_routes_and_methods_answer_json(strict_service):
    missing = strict_service.client.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = strict_service.client.get("/v1/diagnose")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
