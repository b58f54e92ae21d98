"""The contracts the serving and release planes share (docs/architecture.md): the version
manifest schema (`aads_manifest.schema`, re-exported here) and the API-keys format
(`aads_manifest.api_keys`).

Needs only pydantic and pyyaml; imports neither `serving` nor `orchestrator` (the import contract
in pyproject.toml checks it), so the orchestrator never pulls in torch through them.
"""

from aads_manifest.schema import (
                                  ADAPTER_SPEC_FILE,
                                  HASHED_FILES,
                                  MANIFEST_FILE,
                                  VERSION_RE,
                                  AdapterSpec,
                                  Backbone,
                                  BackboneRef,
                                  Change,
                                  DynamicBlocks,
                                  LoRA,
                                  Manifest,
                                  ManifestError,
                                  Training,
                                  load_manifest,
                                  manifest_sha256,
                                  validate_version_name,
                                  version_key,
)

__all__ = [
    "ADAPTER_SPEC_FILE", "HASHED_FILES", "MANIFEST_FILE", "VERSION_RE", "AdapterSpec", "Backbone", "BackboneRef",
    "Change", "DynamicBlocks", "LoRA", "Manifest", "ManifestError", "Training", "load_manifest", "manifest_sha256",
    "validate_version_name", "version_key",
]
