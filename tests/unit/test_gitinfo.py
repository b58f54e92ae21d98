"""orchestrator/gitinfo.py: the build labels' git facts, in a scratch repository."""

import subprocess

import pytest

from orchestrator import gitinfo


@pytest.fixture()
def repo(tmp_path):
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.py").write_text("x = 1\n")
    (tmp_path / "docs.md").write_text("d\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    (tmp_path / "docs.md").write_text("d2\n")
    subprocess.run([*git, "commit", "-qam", "docs only"], check=True)
    return tmp_path


def test_revision_is_the_last_commit_of_the_baked_paths(repo):
    first = gitinfo.output_or_none(repo, "rev-list", "--max-parents=0", "HEAD")
    revision, created, source = gitinfo.git_facts(repo, [repo / "code"])
    assert revision == first                      # the docs commit does not move it
    assert created.startswith("20") and source == f"file://{repo}"


def test_dirty_baked_paths_mark_the_revision(repo):
    (repo / "code" / "a.py").write_text("x = 2\n")
    assert gitinfo.git_facts(repo, [repo / "code"])[0].endswith("-dirty")


def test_outside_a_checkout_the_facts_are_unknown(tmp_path):
    assert gitinfo.git_facts(tmp_path, [tmp_path])[0] == "unknown"
    assert gitinfo.output_or_none(tmp_path, "rev-parse", "HEAD") is None


def test_missing_git_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(gitinfo.GitUnavailable):
        gitinfo.run(tmp_path, "status")
    assert gitinfo.output_or_none(tmp_path, "status") is None
