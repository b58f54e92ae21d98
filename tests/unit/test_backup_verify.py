"""`backup verify`'s own record: the report it returns and the sidecar `backup list` reads.

The archives are the synthetic ones of tests/unit/test_backup_archive.py (a real docker save tar).
"""

from __future__ import annotations

import json

import pytest

from orchestrator.backup.catalog import read_sidecar, sidecar_path
from orchestrator.backup.reader import ArchiveError
from orchestrator.backup.verify import verify_archive
from tests.unit.test_backup_archive import VERSION, copy_with, make_archive

KEY = b"k" * 32  # this host's sidecar key (catalog.host_key makes a random one in the state dir)


def test_the_report_names_the_archive_and_its_recorded_facts(tmp_path):
    path = make_archive(tmp_path)
    report = verify_archive(path)
    assert report["archive"] == str(path)
    assert report["registry_digest"] == "sha256:" + "ab" * 32
    assert report["version"] == VERSION and report["compressed"] is False
    assert report["note"] == "unit test" and report["created_at"] == "2026-11-24T20:00:00+00:00"
    assert report["size"] == path.stat().st_size


def test_verify_reports_progress_while_it_reads_the_image(tmp_path):
    path = make_archive(tmp_path)
    seen: list[tuple[str, int, int | None]] = []
    verify_archive(path, progress=lambda phase, done, total: seen.append((phase, done, total)))
    assert seen and seen[-1][1] == seen[-1][2]  # the last call has read the whole member


def test_a_good_verify_records_the_descriptors_facts_beside_the_archive(tmp_path):
    path = make_archive(tmp_path)
    verify_archive(path, host_key=KEY)
    side = read_sidecar(path, KEY)
    assert side["archive"] == path.name and side["version"] == VERSION
    assert side["registry_digest"] == "sha256:" + "ab" * 32
    assert set(side["verified"]) == {"at", "ok", "problem"}
    assert side["verified"]["ok"] is True and side["verified"]["problem"] is None


def test_a_failed_verify_keeps_the_known_facts_and_records_the_problem(tmp_path):
    path = make_archive(tmp_path)
    verify_archive(path, host_key=KEY)
    size = path.stat().st_size
    copy_with(path, path, flip=size // 2)  # the same file, now damaged
    with pytest.raises(ArchiveError) as err:
        verify_archive(path, host_key=KEY)
    side = read_sidecar(path, KEY)
    assert side["verified"]["ok"] is False and side["verified"]["problem"] == str(err.value)
    assert set(side["verified"]) == {"at", "ok", "problem"}
    assert side["archive"] == path.name and side["version"] == VERSION  # from the earlier good verify


def test_a_failed_first_verify_records_at_least_the_archive_name(tmp_path):
    good = make_archive(tmp_path)
    bad = copy_with(good, tmp_path / "bad.aads-backup.tar", cut=good.stat().st_size // 2)
    with pytest.raises(ArchiveError):
        verify_archive(bad, host_key=KEY)
    side = json.loads(sidecar_path(bad).read_text())
    assert side["archive"] == bad.name and side["verified"]["ok"] is False
    assert "version" not in side


def test_the_report_lists_each_checked_member_with_its_size_and_checksum(tmp_path):
    from orchestrator.backup.archive import open_archive
    from orchestrator.backup.reader import scan

    path = make_archive(tmp_path)
    report = verify_archive(path)
    sums = open_archive(path).sums.entries
    sizes = {m.name: m.size for m in scan(path)}
    assert report["members"] == [{"name": name, "size": sizes[name], "sha256": sums[name]}
                                 for name in sizes if name in sums]
    assert len(report["members"]) >= 3 and all(len(m["sha256"]) == 64 for m in report["members"])


def test_an_archive_removed_while_a_failing_verify_reads_it_is_still_the_archive_error(tmp_path):
    # The reader holds the file open; a removal mid-read must not turn the named problem into a traceback,
    # nor leave a sidecar for an archive that is gone.
    path = make_archive(tmp_path)
    copy_with(path, path, flip=path.stat().st_size // 2)
    removed = []

    def remove_it(phase, done, total):
        if not removed:
            path.unlink()
            removed.append(phase)

    with pytest.raises(ArchiveError):
        verify_archive(path, progress=remove_it, host_key=KEY)
    assert removed and not path.exists() and not sidecar_path(path).exists()
