"""The compose switch and the image variant its target deploys (cpu or cuda): a push of the other
variant neither makes the live version look changed nor stands in for a variant never pushed.
Same doubles as tests/unit/test_compose_switch_flow.py.
"""

from __future__ import annotations

import pytest

from orchestrator.errors import SwitchFailed
from tests.unit.test_compose_switch_flow import NEW, OLD, REPO, digest, project  # noqa: F401 - the fixture


def deploys(backend, variant: str):
    backend.stack.spec = backend.stack.spec.model_copy(update={"variant": variant})
    return backend


def push_variant(backend, version: str, variant: str) -> str:
    ledger = backend.ctx.ledger
    build = ledger.record_build(version=version, variant=variant, image_id=digest(f"image {version} {variant}"),
                                manifest_sha256="0" * 64, git_commit=None, size_bytes=None, golden=[])
    ledger.record_push(version=version, build_id=build.id, repository=REPO, tag=f"{version}-{variant}",
                       digest=digest(f"{version} {variant}"))
    return digest(f"{version} {variant}")


def test_a_newer_push_of_the_other_variant_leaves_the_live_version_a_noop(project):
    backend = deploys(project(), "cpu")
    push_variant(backend, OLD, "cuda")  # pushed after the cpu image that is live
    out = backend.switch(OLD)
    assert out["outcome"] == "noop" and out["digest"] == digest(OLD), out
    assert backend.events == []  # nothing started, nothing touched


def test_a_variant_that_was_never_pushed_is_refused_naming_it(project):
    backend = deploys(project(), "cuda")  # only cpu images of NEW exist
    with pytest.raises(SwitchFailed) as err:
        backend.switch(NEW)
    assert f"the cuda variant of {NEW} is not built" in str(err.value)
    sw = backend.ctx.ledger.history("local")[-1]
    assert sw.outcome == "failed" and sw.digest is None
    assert backend.ctx.ledger.live("local").version == OLD


def test_the_live_version_asked_again_is_a_noop_recorded_with_the_live_digest(project):
    # Even when the target's variant has no push of it (live runs the cpu image, the target now says cuda).
    backend = deploys(project(), "cuda")
    out = backend.switch(OLD)
    assert out["outcome"] == "noop"
    sw = backend.ctx.ledger.history("local")[-1]
    assert (sw.outcome, sw.digest) == ("noop", digest(OLD))
