"""`orchestrator push <version>`: put the latest build of a variant in the registry and record its digest.

Each variant has its own tag (orchestrator/variants.py): `<version>` for the CUDA image, the
version's image, and `<version>-cpu` for the CPU one. A pushed tag never moves. The image goes up
first under a staging tag (`staging-<tag>`), which tells the digest the registry gives it; the
real tag is set only when it does not exist yet or already names that digest. The ledger gets the push record only after
the registry confirms the tag, in one transaction: a push killed midway records nothing.
"""

from __future__ import annotations

from typing import Any

from docker.errors import APIError, DockerException, ImageNotFound
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.context import Context
from orchestrator.engine import docker_client
from orchestrator.errors import EngineError, RegistryError, TagMovedError, UsageError
from orchestrator.ledger import Build, Push
from orchestrator.registry import RegistryClient, engine_auth_config
from orchestrator.resolve import known_version
from orchestrator.variants import registry_tag, staging_tag


def push_stream(client, repository: str, tag: str, console: Console, label: str,
                auth_config: dict[str, str] | None = None) -> str:
    """`docker push repository:tag` with a byte progress bar; returns the registry digest."""
    layers: dict[str, tuple[int, int]] = {}
    digest = None
    with Progress(TextColumn(f"[bold]push[/] {label}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console) as bar:
        task = bar.add_task("", total=None)
        try:
            for event in client.api.push(repository, tag=tag, stream=True, decode=True,
                                         auth_config=auth_config):
                if "error" in event:
                    detail = (event.get("errorDetail") or {}).get("message") or event["error"]
                    raise RegistryError(f"push of {repository}:{tag} failed: {detail.strip()}")
                aux = event.get("aux") or {}
                if aux.get("Digest"):
                    digest = aux["Digest"]
                layer, status = event.get("id"), event.get("status", "")
                progress = event.get("progressDetail") or {}
                if layer and progress.get("total"):
                    layers[layer] = (progress.get("current", 0), progress["total"])
                elif layer and status.startswith(("Pushed", "Layer already exists", "Mounted from")):
                    done = layers.get(layer, (0, 0))[1]
                    layers[layer] = (done, done)
                    if not console.is_terminal:  # CI logs: one line per layer instead of a live bar
                        console.print(f"{label}: layer {layer} {status.lower()}", markup=False)
                total = sum(t for _, t in layers.values())
                bar.update(task, completed=sum(c for c, _ in layers.values()), total=total or None,
                           description=f"{len(layers)} layers" if layers else status[:40])
        except APIError as e:
            raise RegistryError(f"push of {repository}:{tag} refused: {e.explanation or e}") from None
    if not digest:
        raise RegistryError(f"push of {repository}:{tag} ended without a digest")
    return digest


def push(ctx: Context, version: str, *, variant: str | None = None) -> tuple[Push, bool]:
    """Push the latest build of `version`'s `variant` (default: of the latest build) under that
    variant's tag; returns (push record, whether anything new was recorded)."""
    known_version(ctx, version)
    build: Build | None = ctx.ledger.latest_build(version, variant)
    if build is None:
        what = f"{variant} build" if variant else "build"
        flag = f" --variant {variant}" if variant else ""
        raise UsageError(f"version {version} has no {what}: run `orchestrator build {version}{flag}` first")
    tag = registry_tag(version, build.variant)
    repository = ctx.config.registry
    registry = RegistryClient(repository, config=ctx.config)
    auth = engine_auth_config(ctx.config, repository)
    registry.ping()
    client = docker_client(timeout=3600)
    try:
        image = client.images.get(build.image_id)
    except ImageNotFound:
        raise EngineError(f"the image of build {build.id} ({build.image_id[:19]}) is no longer on this engine: "
                          f"rebuild with `orchestrator build {version} --variant {build.variant}`") from None

    existing = registry.tag_digest(tag)
    last = ctx.ledger.latest_push(version, build.variant)
    if existing and last and last.digest == existing and last.build_id == build.id and last.repository == repository:
        ctx.note(f"{repository}:{tag} already is {existing} (build {build.id}, {build.variant}); nothing to push")
        return last, False

    # 1. up under the staging tag: the registry says which digest this image gets
    stage = staging_tag(version, build.variant)
    _tag(image, repository, stage)
    digest = push_stream(client, repository, stage, ctx.stderr, f"{tag} (staging)", auth)

    # 2. the real tag only when absent or already the same image
    existing = registry.tag_digest(tag)
    if existing and existing != digest:
        raise TagMovedError(
            f"{repository}:{tag} already names {existing}; this {build.variant} build ({build.image_id[:19]}) is "
            f"{digest}: refusing to move a pushed tag (make a new version with `orchestrator new-version`)"
        )
    if existing is None:
        _tag(image, repository, tag)
        final = push_stream(client, repository, tag, ctx.stderr, tag, auth)
        if final != digest:
            raise RegistryError(f"{repository}:{tag} was pushed as {final}, the staging push as {digest}")
    now = registry.tag_digest(tag)
    if now != digest:
        raise TagMovedError(f"{repository}:{tag} names {now} right after the push of {digest}: "
                            f"someone else pushed it at the same time; not recorded")
    _untag(client, repository, stage)
    record = ctx.ledger.record_push(version=version, build_id=build.id, repository=repository, tag=tag,
                                    digest=digest)
    return record, True


def _tag(image: Any, repository: str, tag: str) -> None:
    try:
        image.tag(repository, tag=tag)
    except DockerException as e:
        raise EngineError(f"cannot tag {image.id[:19]} as {repository}:{tag}: {e}") from None


def _untag(client, repository: str, tag: str) -> None:
    """Drop the engine-local staging tag (the registry keeps it: the v2 API cannot delete a tag alone)."""
    try:
        client.api.remove_image(f"{repository}:{tag}", noprune=True)
    except DockerException:
        pass
