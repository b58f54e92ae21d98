"""atomic_write: temp beside the target, fsync, rename, fsync dir; mode from creation; no debris."""

import os
import stat

import pytest

from orchestrator import fsutil
from orchestrator.fsutil import atomic_write


def test_writes_text_and_bytes_and_replaces(tmp_path):
    p = tmp_path / "sub" / "f.cfg"
    atomic_write(p, "one\n")
    assert p.read_text() == "one\n"
    atomic_write(p, b"\x00two")
    assert p.read_bytes() == b"\x00two"
    assert sorted(os.listdir(p.parent)) == ["f.cfg"]


def test_mode_is_exact_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "edge.cfg", "x", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "edge.cfg").stat().st_mode) == 0o644


def test_secret_mode_is_never_wider_while_written(tmp_path, monkeypatch):
    seen = []
    real_write = os.write

    def spy(fd, data):
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)
    monkeypatch.setattr(fsutil.os, "write", spy)
    atomic_write(tmp_path / "keys.env", "K=v\n", mode=0o600)
    assert seen and all(m == 0o600 for m in seen)


def test_default_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_fsyncs_file_then_directory(tmp_path, monkeypatch):
    kinds = []
    real = os.fsync

    def spy(fd):
        kinds.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return real(fd)
    monkeypatch.setattr(fsutil.os, "fsync", spy)
    atomic_write(tmp_path / "f", "x")
    assert kinds == ["file", "dir"]


def test_failed_write_leaves_target_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "f"
    p.write_text("old")

    def boom(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(fsutil.os, "fsync", boom)
    with pytest.raises(OSError, match="No space"):
        atomic_write(p, "new")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["f"]


def test_planted_symlink_at_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "f"
    link.symlink_to(victim)
    atomic_write(link, "new")
    assert victim.read_text() == "keep"
    assert not link.is_symlink() and link.read_text() == "new"
