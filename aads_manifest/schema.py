"""The version manifest: `versions/<v>/version.yaml` + `adapter_spec.json`.

One pydantic schema, used by the serving runtime (what backbone, which crops, dynamic
blocks, training defaults) and by the orchestrator (validation, hashing, labels). It lives in its
own package, outside both, so the orchestrator never reaches torch through `serving/`; the import
contract in pyproject.toml ([tool.importlinter]) keeps it importing neither side.

The manifest is input, written and reviewed by people. What happened to it (builds, pushes,
digests) lives in the orchestrator's ledger, never here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MANIFEST_FILE = "version.yaml"
ADAPTER_SPEC_FILE = "adapter_spec.json"
# Files whose bytes define a version; their hash is the image label `aads.manifest-sha256`.
HASHED_FILES = (MANIFEST_FILE, ADAPTER_SPEC_FILE)

# \Z, not $: "$" also matches before a trailing newline, and version names become paths and tags.
VERSION_RE = re.compile(r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)-([a-z0-9]+(?:-[a-z0-9]+)*)\Z")


class ManifestError(Exception):
    """A manifest that cannot be read or does not match the schema.

    `errors` holds one "field.path: message" string per problem, so a reader sees all of them.
    """

    def __init__(self, source: str | Path, errors: list[str]):
        self.source = str(source)
        self.errors = errors
        super().__init__(f"{self.source}: " + "; ".join(errors))


def validate_version_name(name: str) -> str:
    """Return `name` if it reads vMAJOR.MINOR.PATCH-OPTIMIZATION, else raise ValueError."""
    if not VERSION_RE.match(name or ""):
        raise ValueError(
            f"invalid version name {name!r}: expected vMAJOR.MINOR.PATCH-OPTIMIZATION, e.g. v5.5.4-dinov3"
        )
    return name


def version_key(name: str) -> tuple[int, int, int, str]:
    """Sort key for version names (numeric, then the optimization word)."""
    m = VERSION_RE.match(name)
    if not m:
        return (-1, -1, -1, name)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackboneRef(_Strict):
    family: Literal["dinov2", "dinov3"]
    model_id: str


class Backbone(_Strict):
    family: Literal["dinov2", "dinov3"]
    model_id: str = Field(description="production weights (Hugging Face id), baked into the image")
    variants: list[str] = Field(default_factory=list, description="larger/smaller selectable weights")
    image_size: int = Field(ge=32, le=1024, description="square input size after resize + centre crop")
    resize_size: int = Field(ge=32, le=2048, description="shorter side before the centre crop")
    patch_size: Literal[14, 16]
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    previous: BackboneRef | None = None
    rationale: str = ""

    @model_validator(mode="after")
    def _ensure_patch_matches_family(self) -> "Backbone":
        expected = {"dinov2": 14, "dinov3": 16}[self.family]
        if self.patch_size != expected:
            raise ValueError(f"patch_size {self.patch_size} does not match family {self.family} ({expected})")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.resize_size < self.image_size:
            raise ValueError("resize_size must be >= image_size")
        return self


class LoRA(_Strict):
    rank: int = Field(ge=1, le=256)
    alpha: float = Field(gt=0)
    dropout: float = Field(ge=0, lt=1, default=0.05)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)

    @field_validator("target_modules")
    @classmethod
    def _known_projection(cls, v: list[str]) -> list[str]:
        allowed = {"q_proj", "k_proj", "v_proj", "o_proj"}
        bad = [m for m in v if m not in allowed]
        if bad:
            raise ValueError(f"unknown target modules {bad}: choose from {sorted(allowed)}")
        return v


_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class AdapterSpec(_Strict):
    """`adapter_spec.json`: the crops, their disease classes, and the LoRA/decision settings."""

    crops: dict[str, list[str]] = Field(min_length=1)
    lora: LoRA
    confidence_threshold: float = Field(gt=0, lt=1, default=0.6)
    ood_acceptance_rate: float = Field(gt=0.5, lt=1, default=0.95)
    router_acceptance_rate: float = Field(gt=0.5, lt=1, default=0.95)

    @field_validator("crops")
    @classmethod
    def _valid_classes(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for crop, classes in v.items():
            if not _NAME_RE.match(crop):
                raise ValueError(f"crop name {crop!r} must be lower_snake_case")
            if len(classes) < 2:
                raise ValueError(f"crop {crop!r} needs at least 2 classes")
            if len(set(classes)) != len(classes):
                raise ValueError(f"crop {crop!r} lists a class twice")
            for c in classes:
                if not _NAME_RE.match(c):
                    raise ValueError(f"class name {c!r} of crop {crop!r} must be lower_snake_case")
        return v


class DynamicBlocks(_Strict):
    enabled: bool = False
    min_blocks_fraction: float = Field(gt=0, le=1, default=0.5, description="never exit before this share of blocks")
    threshold: float = Field(gt=0, le=1, default=0.995, description="CLS cosine similarity between blocks to exit")
    target_agreement: float = Field(gt=0.5, le=1, default=0.99, description="calibration: agree with full depth")
    claimed_latency_reduction: str = ""


class Training(_Strict):
    learning_rate: float = Field(gt=0, default=5e-4)
    batch_size: int = Field(ge=1, default=32)
    epochs: int = Field(ge=1, default=15)
    holdout_fraction: float = Field(gt=0, lt=0.9, default=0.2)
    seed: int = 0


class Change(_Strict):
    what: str
    rationale: str


class Manifest(_Strict):
    version: str
    description: str = Field(min_length=1)
    created: dt.datetime
    fallback: str | None = None
    backbone: Backbone
    dynamic_blocks: DynamicBlocks = DynamicBlocks()
    training: Training = Training()
    changes: list[Change] = Field(default_factory=list)
    files_changed: list[str] = Field(default_factory=list)
    breaking_changes: list[str] = Field(default_factory=list)
    backward_compatibility: str = Field(min_length=1)
    testing: list[str] = Field(min_length=1)
    adapter_spec: AdapterSpec

    @field_validator("version", "fallback")
    @classmethod
    def _version_name(cls, v: str | None) -> str | None:
        return None if v is None else validate_version_name(v)

    @model_validator(mode="after")
    def _ensure_fallback_differs(self) -> "Manifest":
        if self.fallback == self.version:
            raise ValueError("fallback must name another version")
        return self

    @property
    def crops(self) -> dict[str, list[str]]:
        return self.adapter_spec.crops


def _format_errors(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        out.append(f"{path}: {msg}")
    return out


def manifest_sha256(version_dir: str | Path) -> str:
    """SHA-256 over the files that define a version (name + bytes, in a fixed order)."""
    h = hashlib.sha256()
    root = Path(version_dir)
    for name in HASHED_FILES:
        data = (root / name).read_bytes()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def load_manifest(version_dir: str | Path) -> Manifest:
    """Read and validate `version.yaml` + `adapter_spec.json` from a version folder.

    Raises ManifestError listing every problem by field path (`adapter_spec.` prefixes the spec).
    """
    root = Path(version_dir)
    yaml_path, spec_path = root / MANIFEST_FILE, root / ADAPTER_SPEC_FILE
    problems: list[str] = []
    data: object = None
    spec: object = None
    try:
        data = yaml.safe_load(yaml_path.read_text())
    except FileNotFoundError:
        problems.append(f"{MANIFEST_FILE}: file not found in {root}")
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        problems.append(f"{MANIFEST_FILE}: cannot be read as YAML ({str(e).splitlines()[0]})")
    try:
        spec = json.loads(spec_path.read_text())
    except FileNotFoundError:
        problems.append(f"{ADAPTER_SPEC_FILE}: file not found in {root}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"{ADAPTER_SPEC_FILE}: cannot be read as JSON ({e})")
    if problems:
        raise ManifestError(root, problems)
    if not isinstance(data, dict):
        raise ManifestError(root, [f"{MANIFEST_FILE}: expected a mapping at the top level"])
    if "adapter_spec" in data:
        raise ManifestError(root, [f"adapter_spec: belongs in {ADAPTER_SPEC_FILE}, not in {MANIFEST_FILE}"])
    try:
        manifest = Manifest.model_validate({**data, "adapter_spec": spec})
    except ValidationError as e:
        raise ManifestError(root, _format_errors(e)) from None
    if manifest.version != root.name:
        raise ManifestError(root, [f"version: {manifest.version!r} does not match its folder name {root.name!r}"])
    return manifest
