"""Shared pytest fixtures.

`tiny_model_set(family)` builds (once per session) a seconds-sized demo model set of the version
that runs that backbone family, through the real code path (serving.demo_models.build_model_set
with tiny=True): a randomly initialized DINOv2/DINOv3 backbone, router and three LoRA adapters.
Its decisions are not meaningful; use the demo sets (make models) for figures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
VERSIONS_DIR = REPO_ROOT / "versions"
VERSION_OF_FAMILY = {"dinov2": "v5.5.3-performance", "dinov3": "v5.5.4-dinov3"}


@dataclass(frozen=True)
class ModelSet:
    family: str
    version: str
    version_dir: Path   # versions/<v>: pass to serving.manifest.load_manifest
    path: Path          # the model set: pass to Pipeline.load / AADS_MODEL_DIR

    def __fspath__(self) -> str:
        return str(self.path)

    def manifest(self):
        from serving.manifest import load_manifest

        return load_manifest(self.version_dir)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_model_set(tmp_path_factory):
    """Callable: tiny_model_set("dinov2" | "dinov3" | version name) -> ModelSet (built once per session)."""
    built: dict[str, ModelSet] = {}

    def get(family_or_version: str) -> ModelSet:
        version = VERSION_OF_FAMILY.get(family_or_version, family_or_version)
        if version not in built:
            from serving.demo_models import build_model_set

            version_dir = VERSIONS_DIR / version
            out = tmp_path_factory.mktemp(f"tiny-{version}") / "models"
            build_model_set(version_dir, out, tiny=True)
            family = next(f for f, v in VERSION_OF_FAMILY.items() if v == version) if version in \
                VERSION_OF_FAMILY.values() else "unknown"
            built[version] = ModelSet(family, version, version_dir, out)
        return built[version]

    return get


@pytest.fixture(scope="session", params=sorted(VERSION_OF_FAMILY))
def any_tiny_model_set(request, tiny_model_set) -> ModelSet:
    """Parametrized over both families: a test using it runs once against DINOv2, once against DINOv3."""
    return tiny_model_set(request.param)
