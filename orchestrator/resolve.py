"""From a version name to the exact image a backend deploys: `repo@sha256:...`.

Shared by every backend (compose, kubernetes) and by verify: a version's variant (cuda or cpu, the
target's choice) must be built and pushed, and that variant's registry tag must still resolve to
the digest the ledger recorded. A moved tag is refused as possible tampering.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.context import Context
from orchestrator.errors import TamperError, UsageError
from orchestrator.ledger import Build, Push
from orchestrator.registry import RegistryClient
from orchestrator.variants import refuse_suffixed_name
from aads_manifest import validate_version_name


@dataclass(frozen=True)
class Deployable:
    version: str
    variant: str         # cuda | cpu
    digest: str          # registry manifest digest, sha256:...
    image_ref: str       # repo@sha256:...
    build: Build
    push: Push


def valid_name(version: str) -> str:
    """Refuse a malformed version name (vMAJOR.MINOR.PATCH-OPTIMIZATION) with one clear line."""
    try:
        validate_version_name(version)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return version


def known_version(ctx: Context, version: str) -> str:
    """Refuse a malformed or undefined version name with one clear line."""
    valid_name(version)
    refuse_suffixed_name(version)
    if not (ctx.config.versions_path / version).is_dir():
        raise UsageError(f"unknown version {version}: no folder {ctx.config.versions_path / version}")
    return version


def resolve(ctx: Context, version: str, *, variant: str | None = None, check_registry: bool = True) -> Deployable:
    """The pushed image of `version`'s `variant`, after checking its registry tag still points at it.

    variant None: the latest push of any variant (verify's default; a switch always names one).
    """
    known_version(ctx, version)
    push = ctx.ledger.latest_push(version, variant)
    if push is None:
        what = f"the {variant} variant of {version}" if variant else f"version {version}"
        flag = f" --variant {variant}" if variant else ""
        build = ctx.ledger.latest_build(version, variant)
        if build is None:
            raise UsageError(f"{what} is not built: run `orchestrator build {version}{flag}` "
                             f"then `orchestrator push {version}{flag}`")
        raise UsageError(f"{what} is built but not pushed: run `orchestrator push {version}{flag}`")
    build = ctx.ledger.build(push.build_id)
    if check_registry and push.origin != "restore-local":
        current = RegistryClient(push.repository, config=ctx.config).tag_digest(push.tag)
        if current is None:
            raise TamperError(
                f"registry tag {push.repository}:{push.tag} is gone (recorded {push.digest}): refusing to deploy"
            )
        if current != push.digest:
            raise TamperError(
                f"registry tag {push.repository}:{push.tag} moved to {current}, but the ledger recorded "
                f"{push.digest}: possible tampering, refusing to deploy (make a new version instead)"
            )
    return Deployable(version=version, variant=push.variant, digest=push.digest, image_ref=push.image_ref,
                      build=build, push=push)
