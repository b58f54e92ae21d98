"""The variants of a version's image and the registry tag of each.

A version is one immutable CUDA image: `<registry>:<version>` is always the CUDA variant. The
CPU variant (torch's CPU build: CI, tests, CPU-only hosts) is `<registry>:<version>-cpu`. A tag
suffix rather than a second repository keeps one repository to back up, sign and clean; the
plain tag can never name a CPU image, because nothing but a CUDA build is pushed under it.
Version names may not end in a variant suffix, so `<version>-cpu` never collides with a version.

Which variant a target deploys:
  compose     `variant: auto|cuda|cpu` (auto: CUDA when the GPU check sees a GPU, else CPU)
  kubernetes  `variant: auto|cuda|cpu` (auto: the Deployment's overlay — a container that asks
              for `nvidia.com/gpu` (overlays/gpu) runs CUDA, otherwise (overlays/cpu) CPU)
"""

from __future__ import annotations

from typing import Any

from orchestrator.errors import UsageError

VARIANTS = ("cuda", "cpu")
# The tag suffix of each variant; CUDA, the version's image, has none.
SUFFIX = {"cuda": "", "cpu": "-cpu"}
GPU_RESOURCE = "nvidia.com/gpu"


def registry_tag(version: str, variant: str) -> str:
    """The registry tag of `version`'s `variant`: `v5.5.4-dinov3` (cuda), `v5.5.4-dinov3-cpu` (cpu)."""
    if variant not in SUFFIX:
        raise UsageError(f"unknown variant {variant!r}: choose cuda or cpu")
    return version + SUFFIX[variant]


def staging_tag(version: str, variant: str) -> str:
    """Where a push first lands to learn its digest (never deployed)."""
    return f"staging-{registry_tag(version, variant)}"


def refuse_suffixed_name(version: str) -> None:
    """A version named like another version's variant tag (`...-cpu`) would share its tag."""
    for variant, suffix in SUFFIX.items():
        if suffix and version.endswith(suffix):
            raise UsageError(f"version name {version!r} ends in {suffix!r}, the tag suffix of the {variant} variant: "
                             f"choose another name")


def compose_variant(setting: str, gpu_seen: bool) -> tuple[str, str]:
    """(variant, why) for a compose target's `variant` setting."""
    if setting != "auto":
        return setting, f"variant: {setting} in the target's config"
    if gpu_seen:
        return "cuda", "variant: auto, a GPU is visible"
    return "cpu", "variant: auto, no GPU visible"


def deployment_variant(setting: str, deployment: dict[str, Any], container: str) -> tuple[str, str]:
    """(variant, why) for a Kubernetes target: its setting, or (auto) the overlay's GPU request."""
    if setting != "auto":
        return setting, f"variant: {setting} in the target's config"
    containers = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    for c in containers:
        if c.get("name") != container:
            continue
        resources = c.get("resources") or {}
        if any(GPU_RESOURCE in (resources.get(k) or {}) for k in ("limits", "requests")):
            return "cuda", f"variant: auto, container {container} requests {GPU_RESOURCE} (the gpu overlay)"
    return "cpu", f"variant: auto, container {container} requests no {GPU_RESOURCE} (the cpu overlay)"
