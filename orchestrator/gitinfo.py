"""The one way the orchestrator runs git: `run` (a finished git, or GitUnavailable), `output_or_none`
for facts that may be missing (labels of a build outside a checkout), and `git_facts` for the image
labels. Callers that must stop on a git failure (release) turn the result into their own error."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterable


class GitUnavailable(Exception):
    """git could not be run at all (not installed, timed out)."""


def run(repo: Path | str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`git -C repo ARGS`, output captured as text; a nonzero exit is returned, not raised.

    Raises:
        GitUnavailable: git is missing or ran past `timeout` seconds.
    """
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        raise GitUnavailable(str(e)) from None


def output_or_none(repo: Path | str, *args: str, timeout: float = 10) -> str | None:
    """git's stripped stdout, or None when git is missing, times out or exits nonzero."""
    try:
        out = run(repo, *args, timeout=timeout)
    except GitUnavailable:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_facts(root: Path, paths: Iterable[Path]) -> tuple[str, str, str]:
    """(revision, created, source) of what an image bakes.

    revision: the last commit that changed any of `paths` (+ `-dirty` for uncommitted changes in
    them); created: that commit's time. Commits elsewhere (docs, tests) leave the labels, and so
    the image id, unchanged: a rebuild of the same code is a cache hit.
    """
    spec = [str(p) for p in paths]
    commit = output_or_none(root, "log", "-1", "--format=%H", "--", *spec)
    if not commit:
        return "unknown", "1970-01-01T00:00:00Z", f"file://{root}"
    dirty = output_or_none(root, "status", "--porcelain", "--", *spec)
    revision = commit + ("-dirty" if dirty else "")
    created = output_or_none(root, "log", "-1", "--format=%cI", commit) or "unknown"
    source = output_or_none(root, "config", "--get", "remote.origin.url") or f"file://{root}"
    return revision, created, source
