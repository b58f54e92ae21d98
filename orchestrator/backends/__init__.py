"""Pick the backend for a target by its kind."""

from __future__ import annotations

from orchestrator.backends.base import Backend
from orchestrator.context import Context


def get_backend(ctx: Context, target: str | None) -> Backend:
    name, spec = ctx.config.target(target)
    if spec.kind == "kubernetes":
        from orchestrator.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(ctx, name, spec)
    from orchestrator.backends.compose import ComposeBackend

    return ComposeBackend(ctx, name, spec)
