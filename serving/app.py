"""`create_app(settings)`: the FastAPI service every image runs.

The model loads in the background from `lifespan` (serving.runtime), so `/health` answers at
once and `/ready` turns 200 when weights are loaded, verified and warmed up. Middleware, outermost
first: the real client behind a trusted edge (X-Forwarded-For), request recording (audit line +
metrics), CORS, gzip, API keys + rate limits.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from serving.audit import AuditLog, RequestRecorder
from serving.errors import install_error_handlers
from serving.metrics import ServiceMetrics
from serving.routes import router
from serving.runtime import PipelineLoader, Runtime, load_pipeline
from serving.images import DecodeGate
from serving.security import add_forwarded_client, add_security_middleware
from serving.settings import Settings

log = logging.getLogger("serving.app")

API_DESCRIPTION = """Crop-disease diagnosis: a crop router, per-crop LoRA adapters on a frozen DINO backbone,
and an out-of-distribution check that sends unfamiliar images to `review`.
Every error answers `{"error": {"code", "message"}}`. See docs/api.md."""


def create_app(
    settings: Settings | None = None,
    pipeline_loader: PipelineLoader = load_pipeline,
    *,
    audit: AuditLog | None = None,
) -> FastAPI:
    """Build the app. Nothing loads until the app starts (lifespan).

    Args:
        settings: runtime settings (default: `Settings.from_env()`).
        pipeline_loader: `(settings, manifest) -> pipeline`; the default loads `serving.pipeline.Pipeline`
            from `settings.model_dir`. The runtime runs the warm-up pass itself.
        audit: where audit lines go (default: the `aads.audit` logger).
    """
    settings = settings or Settings.from_env()
    metrics = ServiceMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime: Runtime = app.state.runtime
        runtime.start_loading()
        try:
            yield
        finally:
            runtime.stop()

    app = FastAPI(
        title="AADS-ULoRA diagnosis service",
        description=API_DESCRIPTION,
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.runtime = Runtime(settings, pipeline_loader, metrics)
    app.state.decode_gate = DecodeGate(settings.decode_concurrency)
    install_error_handlers(app)
    app.include_router(router)
    add_security_middleware(app, settings)
    app.add_middleware(RequestRecorder, audit=audit or AuditLog(), metrics=metrics, routes=router.routes)
    add_forwarded_client(app, settings)
    return app
