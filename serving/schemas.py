"""Request and response bodies of the HTTP API (they are also the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiagnoseRequest(_Body):
    image: str = Field(description="the image file's bytes, base64 (a data: URL is accepted too)")
    crop_hint: str | None = Field(default=None, description="a crop from /v1/crops; skips the crop router")


class BatchRequest(_Body):
    images: list[DiagnoseRequest] = Field(description="up to AADS_MAX_BATCH_ITEMS items")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class BackboneFacts(BaseModel):
    family: str
    model_id: str


class DiagnoseResponse(BaseModel):
    decision: Literal["accept", "review"]
    reason: str | None = Field(description="why review: not_a_supported_crop | unfamiliar_for_crop | low_confidence")
    crop: str | None
    crop_confidence: float | None
    disease: str | None
    confidence: float | None
    ood_score: float | None = Field(description="adapter Mahalanobis distance / its threshold; > 1 is unfamiliar")
    router_ood_score: float | None
    backbone: BackboneFacts
    version: str
    blocks_used: int
    batch_size: int = Field(description="images in the forward pass this one was part of")
    timings: dict[str, float] = Field(description="milliseconds: decode, queue, batch, and the pipeline's own")
    model_note: str | None = Field(description="set when the backbone is randomly initialized or adapters are synthetic")


class BatchItemResult(BaseModel):
    index: int
    result: DiagnoseResponse | None = None
    error: ErrorDetail | None = None


class BatchResponse(BaseModel):
    count: int
    failed: int
    results: list[BatchItemResult]


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    state: str
    version: str | None
    error: str | None
    uptime_s: float
    load_seconds: float | None


class ReadyResponse(BaseModel):
    ready: bool
    state: str
    version: str


class VersionResponse(BaseModel):
    version: str
    description: str
    created: str
    fallback: str | None
    backbone: BackboneFacts
    manifest_sha256: str
    random_init: bool | None = Field(description="null until the model set is loaded")
    synthetic: bool | None
    model: dict | None = Field(description="device, dtype, blocks, dynamic depth, load time (once loaded)")
    dynamic_blocks: dict
    build: dict[str, str] = Field(description="labels from AADS_BUILD_* / AADS_IMAGE_DIGEST")


class CropsResponse(BaseModel):
    crops: dict[str, list[str]]
