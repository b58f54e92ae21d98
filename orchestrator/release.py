"""`orchestrator release <version>`: the annotated git tag that starts the CI release workflow.

Only a version that builds and verifies gets a tag, and only from a commit that holds its folder
exactly as built: the tag message carries the manifest's description and sha256. A tag is never
moved: one that exists on another commit is refused, one on this commit is reported as done.
Pushing the tag (`git push origin <version>`, or --push) starts .github/workflows/release.yml.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator import gitinfo
from orchestrator.context import Context
from orchestrator.errors import GitError, UsageError
from orchestrator.resolve import known_version
from orchestrator.verify import Report, verify
from aads_manifest import load_manifest, manifest_sha256


@dataclass(frozen=True)
class Release:
    version: str
    tag: str
    commit: str
    created: bool        # False: the tag already named this commit
    pushed: bool
    message: str


def git(repo: Path, *args: str, check: bool = True) -> str:
    try:
        out = gitinfo.run(repo, *args, timeout=120)
    except gitinfo.GitUnavailable as e:
        raise GitError(f"git {' '.join(args[:2])} failed to run: {e}") from None
    if check and out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise GitError(f"git {' '.join(args[:2])} failed: {last}")
    return out.stdout.strip() if out.returncode == 0 else ""


def tag_message(version: str, description: str, sha: str) -> str:
    return f"{version}: {' '.join(description.split())}\n\nmanifest-sha256: {sha}\n"


def release(ctx: Context, version: str, *, push: bool = False, remote: str = "origin",
            skip_verify: bool = False) -> tuple[Release, Report | None]:
    known_version(ctx, version)
    version_dir = ctx.config.versions_path / version
    manifest = load_manifest(version_dir)
    sha = manifest_sha256(version_dir)
    repo = Path(git(version_dir, "rev-parse", "--show-toplevel"))
    head = git(repo, "rev-parse", "HEAD")
    if git(repo, "status", "--porcelain", "--", str(version_dir)):
        raise UsageError(f"versions/{version} has uncommitted changes: commit them, so the tag holds what was built")

    existing = git(repo, "rev-parse", "-q", "--verify", f"refs/tags/{version}^{{commit}}", check=False)
    if existing and existing != head:
        raise UsageError(f"tag {version} already exists on commit {existing[:12]} (HEAD is {head[:12]}): "
                         f"refusing to move a release tag; make a new version instead")

    build = ctx.ledger.latest_build(version)
    if build is None:
        raise UsageError(f"version {version} is not built: run `orchestrator build {version}` first")
    if build.manifest_sha256 != sha:
        raise UsageError(f"versions/{version} changed since its last build ({build.manifest_sha256[:12]} -> "
                         f"{sha[:12]}): build and verify it again")
    report = None
    if not skip_verify:
        # The variant built here (an operator's laptop builds cpu; CI builds and verifies both).
        report = verify(ctx, version, variant=build.variant)
        if not report.ok:
            raise report.error(f"{version} does not verify, no tag made")

    message = tag_message(version, manifest.description, sha)
    created = not existing
    if created:
        git(repo, "tag", "-a", version, "-m", message, head)
    pushed = False
    if push:
        git(repo, "push", remote, f"refs/tags/{version}")
        pushed = True
    return Release(version=version, tag=version, commit=head, created=created, pushed=pushed, message=message), report
