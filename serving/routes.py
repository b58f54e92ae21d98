"""The endpoints. Each reads the per-app `Runtime` from `request.app.state.runtime`.

Diagnose requests are read here (JSON base64 or multipart), their images decoded and checked
in a worker thread (serving.images), then queued on the micro-batcher; a bad image is refused
before it can reach a batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from types import SimpleNamespace
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from serving.errors import (
    BadInput,
    BodyTimeout,
    EmptyBody,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServingError,
    UnsupportedMedia,
)
from serving.images import DecodeGate, check_content_type, decode_base64, open_image
from serving.response_cache import cache_key
from serving.runtime import DiagnoseItem, Runtime
from serving.schemas import (
    BatchRequest,
    BatchResponse,
    CropsResponse,
    DiagnoseRequest,
    DiagnoseResponse,
    ErrorResponse,
    HealthResponse,
    ReadyResponse,
    VersionResponse,
)

router = APIRouter()
log = logging.getLogger("serving.routes")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "empty body or malformed JSON",
        401: "API key missing or invalid",
        408: "the body did not arrive in time (AADS_BODY_TIMEOUT_S)",
        413: "image or batch over its limit",
        415: "wrong content type",
        422: "bad image, bad base64, unknown crop_hint, invalid fields",
        429: "rate limit or failed-key limit exceeded (Retry-After)",
        503: "not ready, shutting down, or queue full (Retry-After)",
    }.items()
}
_JSON_OR_MULTIPART = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": DiagnoseRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "crop_hint": {"type": "string"},
                    },
                }
            },
        },
    }
}

_BATCH_SCHEMA = {
    "type": "object",
    "required": ["images"],
    "properties": {"images": {"type": "array", "items": DiagnoseRequest.model_json_schema()}},
}


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


# -- probes and facts --------------------------------------------------------------------------


@router.get("/health", response_model=HealthResponse, tags=["probes"])
async def health(request: Request) -> HealthResponse:
    """Liveness: 200 while the process runs, with the state (starting, ready, failed, stopping)."""
    rt = _runtime(request)
    return HealthResponse(
        state=rt.state.value,
        version=rt.manifest.version if rt.manifest else None,
        error=rt.public_error,
        uptime_s=round(time.time() - rt.started_at, 3),
        load_seconds=round(rt.load_seconds, 3) if rt.load_seconds is not None else None,
    )


@router.get("/ready", response_model=ReadyResponse, responses={503: _ERRORS[503]}, tags=["probes"])
async def ready(request: Request) -> ReadyResponse:
    """Readiness: 200 only once weights are loaded, hashes verified and a warm-up pass ran."""
    rt = _runtime(request)
    rt.require_ready()
    assert rt.manifest is not None
    return ReadyResponse(ready=True, state=rt.state.value, version=rt.manifest.version)


@router.get("/metrics", tags=["probes"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    body, content_type = _runtime(request).metrics.render()
    return Response(body, media_type=content_type)


@router.get("/v1/version", response_model=VersionResponse, responses={503: _ERRORS[503]}, tags=["model"])
async def version(request: Request) -> VersionResponse:
    """What this image serves: manifest facts, its hash, build labels, and whether weights are random."""
    rt = _runtime(request)
    manifest = rt.require_manifest()
    info = rt.pipeline.info if rt.pipeline is not None else None
    return VersionResponse(
        version=manifest.version,
        description=manifest.description,
        created=manifest.created.isoformat(),
        fallback=manifest.fallback,
        backbone={"family": manifest.backbone.family, "model_id": manifest.backbone.model_id},
        manifest_sha256=rt.manifest_sha256 or "",
        random_init=bool(info.get("random_init")) if info is not None else None,
        synthetic=bool(info.get("synthetic")) if info is not None else None,
        model=_jsonable(info) if info is not None else None,
        dynamic_blocks=manifest.dynamic_blocks.model_dump(),
        build=dict(rt.settings.build_labels),
    )


@router.get("/v1/crops", response_model=CropsResponse, responses={503: _ERRORS[503]}, tags=["model"])
async def crops(request: Request) -> CropsResponse:
    """The crops this version diagnoses and their disease classes."""
    return CropsResponse(crops=_runtime(request).require_ready().crops)


@router.get("/v1/adapters/{crop}", responses={404: {"model": ErrorResponse, "description": "unknown crop"}, 503: _ERRORS[503]}, tags=["model"])
async def adapter(request: Request, crop: str) -> JSONResponse:
    """One crop adapter: LoRA rank/alpha/targets, classes, thresholds, file hashes."""
    pipeline = _runtime(request).require_ready()
    if crop not in pipeline.crops:
        raise NotFound(f"no adapter for crop {crop!r}; crops: {', '.join(sorted(pipeline.crops))}", code="unknown_crop")
    return JSONResponse({"crop": crop, **_jsonable(pipeline.adapter_info(crop))})


# -- diagnosis ---------------------------------------------------------------------------------


@router.post(
    "/v1/diagnose",
    response_model=DiagnoseResponse,
    responses=_ERRORS,
    openapi_extra=_JSON_OR_MULTIPART,
    tags=["diagnosis"],
)
async def diagnose(request: Request) -> JSONResponse:
    """Diagnose one image: JSON `{"image": <base64>, "crop_hint"?}` or multipart (`image` file, `crop_hint`)."""
    rt = _runtime(request)
    rt.require_ready()
    settings = rt.settings
    media = _media_type(request)
    if media == "multipart/form-data":
        data, crop_hint, content_type = await _read_multipart(request, _image_body_limit(settings, encoded=False))
        check_content_type(content_type)
        crop_hint = _check_crop_hint(rt, crop_hint)
    elif media == "application/json":
        body = await _read_json(request, _image_body_limit(settings, encoded=True), DiagnoseRequest)
        crop_hint = _check_crop_hint(rt, body.crop_hint)
        data = await run_in_threadpool(decode_base64, body.image, max_bytes=settings.max_upload_bytes)
    else:
        raise _wrong_media(media, "application/json or multipart/form-data")
    result, cache = await _diagnose_upload(request, data, crop_hint)
    return JSONResponse(result, headers={"X-Cache": cache} if cache else None)


@router.post(
    "/v1/diagnose/batch",
    response_model=BatchResponse,
    responses=_ERRORS,
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _BATCH_SCHEMA}}}},
    tags=["diagnosis"],
)
async def diagnose_batch(request: Request) -> JSONResponse:
    """Diagnose several images in one request; a bad item gets its own error inside a 200."""
    rt = _runtime(request)
    rt.require_ready()
    settings = rt.settings
    media = _media_type(request)
    if media != "application/json":
        raise _wrong_media(media, "application/json")
    batch = await _read_json(request, _batch_body_limit(settings), BatchRequest)
    n = len(batch.images)
    if n == 0:
        raise BadInput("images is empty: send at least one item", code="empty_batch")
    if n > settings.max_batch_items:
        raise PayloadTooLarge(
            f"batch has {n} items, over the limit of {settings.max_batch_items} (AADS_MAX_BATCH_ITEMS)",
            code="batch_too_large",
        )
    assert rt.batcher is not None
    if rt.batcher.queue_size - rt.batcher.queue_depth < n:
        raise Overloaded(f"the request queue has no room for {n} items; retry shortly", retry_after=1)

    async def one(entry: DiagnoseRequest) -> tuple[dict, str | None]:
        crop_hint = _check_crop_hint(rt, entry.crop_hint)
        data = await run_in_threadpool(decode_base64, entry.image, max_bytes=settings.max_upload_bytes)
        return await _diagnose_upload(request, data, crop_hint)

    outcomes = await asyncio.gather(*(one(e) for e in batch.images), return_exceptions=True)
    results: list[dict] = []
    failed, hits = 0, 0
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, ServingError):
            failed += 1
            results.append({"index": index, "result": None, "error": outcome.to_dict()["error"]})
        elif isinstance(outcome, BaseException):
            raise outcome  # unexpected: the error handler answers 500 without a traceback
        else:
            results.append({"index": index, "result": outcome[0], "error": None})
            hits += outcome[1] == "hit"
    # A batch is a hit only when every item came from the cache.
    headers = {"X-Cache": "hit" if hits == n else "miss"} if rt.cache.enabled else None
    return JSONResponse({"count": n, "failed": failed, "results": results}, headers=headers)


async def _diagnose_upload(request: Request, data: bytes, crop_hint: str | None) -> tuple[dict, str | None]:
    """(result, "hit" | "miss" | None when the cache is off) for one upload's bytes."""
    rt = _runtime(request)
    assert rt.manifest is not None
    started = time.perf_counter()
    key = None
    if rt.cache.enabled:
        key = await run_in_threadpool(cache_key, data, crop_hint, rt.manifest.version)
        cached = rt.cache.get(key)
        rt.metrics.observe_cache("hit" if cached is not None else "miss")
        if cached is not None:
            rt.metrics.observe_diagnosis(cached["decision"], cached["reason"])
            # A hit is a decision served like any other: the canary analysis counts it in the mix.
            rt.metrics.observe_model_output(SimpleNamespace(**cached), computed=False)
            # No decode, no queue, no forward pass (their timings are 0): only the lookup, hashing included.
            timings = dict.fromkeys(cached.pop("model_timings"), 0.0)
            timings["cache"] = round((time.perf_counter() - started) * 1000.0, 3)
            cached.update(batch_size=0, timings=timings)
            return cached, "hit"
    image = await _decode(request, open_image, data)
    decode_ms = (time.perf_counter() - started) * 1000.0
    result = await _diagnose_one(rt, DiagnoseItem(image, crop_hint), decode_ms)
    if key is not None:
        stored = {k: v for k, v in result.items() if k not in ("timings", "batch_size")}
        rt.cache.put(key, {**stored, "model_timings": list(result["timings"])})
    return result, "miss" if key is not None else None


async def _decode(request: Request, decode, payload):
    """Decode one upload in a worker thread, at most AADS_DECODE_CONCURRENCY at once, shrunk at once
    to a short side between 1x and 2x the model's resize size (serving.images)."""
    rt = _runtime(request)
    settings = rt.settings
    gate: DecodeGate = request.app.state.decode_gate
    shorter_side = rt.manifest.backbone.resize_size if rt.manifest is not None else None
    async with gate:
        return await run_in_threadpool(decode, payload, max_bytes=settings.max_upload_bytes,
                                       max_pixels=settings.max_pixels, shorter_side=shorter_side)


async def _diagnose_one(rt: Runtime, item: DiagnoseItem, decode_ms: float) -> dict:
    assert rt.batcher is not None and rt.manifest is not None and rt.pipeline is not None
    try:
        batched = await rt.batcher.submit(item)
    except ServingError:
        raise
    except Exception as e:
        # The pipeline refused this one image (its batch-mates were retried without it). The
        # exception's text may name files or internals: it goes to the log, not to the client.
        log.warning("the model could not process an image: %s: %s", type(e).__name__, e)
        raise BadInput("the model could not process this image; the service log has the details",
                       code="model_error") from None
    d = batched.result
    rt.metrics.observe_diagnosis(d.decision, d.reason)
    rt.metrics.observe_model_output(d)
    timings = {k: round(float(v), 3) for k, v in (d.timings_ms or {}).items()}
    timings.update(decode=round(decode_ms, 3), queue=round(batched.queue_ms, 3), batch=round(batched.run_ms, 3))
    return {
        "decision": d.decision,
        "reason": d.reason,
        "crop": d.crop,
        "crop_confidence": _num(d.crop_confidence),
        "disease": d.disease,
        "confidence": _num(d.confidence),
        "ood_score": _num(d.ood_score),
        "router_ood_score": _num(d.router_ood_score),
        # The checkpoint served (the manifest's model_id or one of its variants), as the model set records it.
        "backbone": {"family": rt.manifest.backbone.family,
                     "model_id": rt.pipeline.info.get("model_id", rt.manifest.backbone.model_id)},
        "version": rt.manifest.version,
        "blocks_used": int(d.blocks_used),
        "batch_size": batched.batch_size,
        "timings": timings,
        "model_note": model_note(rt.pipeline.info, rt.manifest.backbone.model_id),
    }


def model_note(info: dict, model_id: str) -> str | None:
    """The sentence every answer of a stand-in model carries."""
    if info.get("random_init"):
        if info.get("notice"):
            return str(info["notice"])
        return (
            f"The backbone is randomly initialized (a stand-in with the architecture of {model_id}, "
            "not its trained weights); adapters were trained on synthetic images. "
            "Results show the service working, not a real diagnosis."
        )
    if info.get("synthetic"):
        return "The adapters were trained on synthetic images; results are not a real diagnosis."
    return None


# -- request reading ---------------------------------------------------------------------------


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _wrong_media(media: str, expected: str) -> UnsupportedMedia:
    shown = media or "none"
    return UnsupportedMedia(f"content type {shown!r} is not accepted here; send {expected}", code="wrong_content_type")


def _base64_len(n: int) -> int:
    return 4 * math.ceil(n / 3)


@dataclass(frozen=True)
class BodyLimit:
    """How many bytes a route reads, and how to say no: the error names the setting that limits it."""

    max_bytes: int
    code: str
    explanation: str

    def refuse(self, size: int | None = None) -> PayloadTooLarge:
        sent = f"{size:,} bytes" if size is not None else f"over {self.max_bytes:,} bytes"
        return PayloadTooLarge(f"request body is {sent}, over the limit: {self.explanation}", code=self.code)


def _image_body_limit(settings, encoded: bool) -> BodyLimit:
    size = _base64_len(settings.max_upload_bytes) if encoded else settings.max_upload_bytes
    return BodyLimit(
        size + 64 * 1024,
        "image_too_large",
        f"an image may be at most {settings.max_upload_bytes:,} bytes (AADS_MAX_UPLOAD_BYTES)",
    )


def _batch_body_limit(settings) -> BodyLimit:
    return BodyLimit(
        settings.max_batch_body_bytes,
        "body_too_large",
        f"a batch request may be at most {settings.max_batch_body_bytes:,} bytes (AADS_MAX_BATCH_BODY_BYTES)",
    )


def _check_declared_length(request: Request, limit: BodyLimit) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) == 0:
            raise EmptyBody("the request body is empty")
        if int(declared) > limit.max_bytes:
            raise limit.refuse(int(declared))


async def _within_body_timeout(request: Request, reading):
    """Await `reading` (the body) for at most AADS_BODY_TIMEOUT_S: a trickled body holds no slot for long."""
    timeout_s = _runtime(request).settings.body_timeout_s
    try:
        return await asyncio.wait_for(reading, timeout_s)
    except asyncio.TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {timeout_s:g}s (AADS_BODY_TIMEOUT_S)") from None


async def _read_body(request: Request, limit: BodyLimit) -> bytes:
    """The whole body, refusing it as soon as it passes the limit (also without Content-Length)."""
    _check_declared_length(request, limit)

    async def read() -> list[bytes]:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit.max_bytes:
                raise limit.refuse()
            chunks.append(chunk)
        return chunks

    body = b"".join(await _within_body_timeout(request, read()))
    if not body.strip():
        raise EmptyBody("the request body is empty")
    return body


async def _read_json(request: Request, limit: BodyLimit, model: type):
    body = await _read_body(request, limit)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise BadInput(f"the body is not valid JSON (line {e.lineno}, column {e.colno})", code="invalid_json") from None
    except UnicodeDecodeError:
        raise BadInput("the body is not valid JSON (not UTF-8 text)", code="invalid_json") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()
        )
        raise BadInput(f"invalid request: {problems}", code="invalid_request") from None


async def _read_multipart(request: Request, limit: BodyLimit) -> tuple[bytes, str | None, str | None]:
    """(image bytes, crop_hint, the part's declared content type) from a multipart body."""
    _check_declared_length(request, limit)
    capped = Request(request.scope, _capped_receive(request.receive, limit))
    try:
        form = await _within_body_timeout(request, capped.form(max_files=1, max_fields=4, max_part_size=64 * 1024))
    except ServingError:
        raise
    except Exception as e:  # the multipart parser's own errors (malformed body, too many parts)
        log.info("unreadable multipart body: %s: %s", type(e).__name__, e)
        raise BadInput("the multipart body cannot be read (malformed, or too many or too large parts)",
                       code="invalid_multipart") from None
    try:
        upload = form.get("image")
        if upload is None:
            raise BadInput("multipart body has no field 'image'", code="missing_image")
        if not isinstance(upload, UploadFile):
            raise BadInput("field 'image' must be a file upload, not a text field", code="missing_image")
        hint = form.get("crop_hint")
        if hint is not None and not isinstance(hint, str):
            raise BadInput("field 'crop_hint' must be text", code="invalid_request")
        data = await upload.read()
        return data, hint, upload.content_type
    finally:
        await form.close()


def _capped_receive(receive, limit: BodyLimit):
    seen = 0

    async def receive_capped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit.max_bytes:
                raise limit.refuse()
        return message

    return receive_capped


def _check_crop_hint(rt: Runtime, crop_hint: str | None) -> str | None:
    if crop_hint is None or not crop_hint.strip():
        return None
    assert rt.pipeline is not None
    hint = crop_hint.strip().lower()
    if hint not in rt.pipeline.crops:
        raise BadInput(
            f"unknown crop_hint {crop_hint!r}; valid crops: {', '.join(sorted(rt.pipeline.crops))}",
            code="unknown_crop",
        )
    return hint


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    """Plain JSON types from pipeline info dicts (numpy/torch scalars, paths, tuples)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return str(value)

