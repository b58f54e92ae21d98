"""Fixtures of the API suites: the real app (serving.app.create_app) on a real tiny model set.

`serve(model_set, **settings)` starts an app through its lifespan (the model loads in the
background, as in production), waits until it is ready and yields an httpx-based TestClient.
`service` is that, parametrized over the DINOv2 and the DINOv3 tiny model sets.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from serving.app import create_app
from serving.audit import AUDIT_LOGGER
from serving.runtime import Health, PipelineLoader, load_pipeline
from serving.settings import Settings
from serving.synthetic import leaf_image, ood_image

FAMILIES = ("dinov2", "dinov3")


@dataclass
class Service:
    client: TestClient
    app: FastAPI
    model_set: object  # tests/conftest.py ModelSet

    @property
    def runtime(self):
        return self.app.state.runtime


def settings_for(model_set, **overrides) -> Settings:
    values = {"model_dir": Path(model_set.path), "manifest_dir": Path(model_set.version_dir), **overrides}
    return Settings(**values)


@contextlib.contextmanager
def serve(model_set, loader: PipelineLoader = load_pipeline, wait: bool = True, **overrides) -> Iterator[Service]:
    app = create_app(settings_for(model_set, **overrides), pipeline_loader=loader)
    with TestClient(app, raise_server_exceptions=False) as client:
        service = Service(client, app, model_set)
        if wait:
            state = service.runtime.wait_loaded(timeout=120)
            assert state is Health.READY, f"service did not get ready: {state} {service.runtime.error}"
        yield service


@pytest.fixture(scope="module", params=FAMILIES)
def service(request, tiny_model_set) -> Iterator[Service]:
    """The app on a tiny model set of each family, with a short batching wait."""
    # The response cache is off here: these tests send the same images again and mean the model path
    # (batching, decoding, the queue); tests/api/test_cache.py covers the cache.
    with serve(tiny_model_set(request.param), max_wait_ms=30, max_batch_size=8, max_batch_items=8, cache_entries=0,
               build_labels={"version": "test-build", "revision": "0123abc"}) as svc:
        yield svc


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="session")
def leaf_png() -> bytes:
    return png_bytes(leaf_image("tomato", "early_blight", 0, seed=123))


@pytest.fixture(scope="session")
def sample_pngs() -> list[bytes]:
    """Six different images: leaves of three crops and two out-of-distribution patterns."""
    images = [
        leaf_image("tomato", "late_blight", 1, seed=7),
        leaf_image("pepper", "healthy", 2, seed=7),
        leaf_image("corn", "common_rust", 3, seed=7),
        leaf_image("tomato", "healthy", 4, seed=7),
        ood_image("noise", 0, seed=7),
        ood_image("pattern", 1, seed=7),
    ]
    return [png_bytes(im) for im in images]


class AuditCapture(logging.Handler):
    """Collects the JSON audit lines the app writes."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[dict] = []
        self.raw: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.raw.append(message)
        self.lines.append(json.loads(message))


@pytest.fixture
def audit_lines() -> Iterator[AuditCapture]:
    logger = logging.getLogger(AUDIT_LOGGER)
    handler = AuditCapture()
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
