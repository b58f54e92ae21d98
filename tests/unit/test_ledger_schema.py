"""The ledger's schema version and migrations, a deleted ledger, damaged rows.

A ledger written by an older orchestrator (schema 1, `PRAGMA user_version` 0: the releases before
schema versions) is migrated in place, its records kept; one newer than this orchestrator is
refused. A ledger that is gone while the compose state says a version was live is reported, not
recreated empty. A damaged row is one clear error naming it, not a traceback.
"""

from __future__ import annotations

import sqlite3

import pytest

from orchestrator.errors import LedgerError
from orchestrator.ledger import LEDGER_FILE, SCHEMA_VERSION, Ledger

# The schema as the releases before schema versions wrote it (pushes without a variant).
SCHEMA_1 = """
CREATE TABLE builds (id INTEGER PRIMARY KEY, version TEXT NOT NULL, variant TEXT NOT NULL,
    image_id TEXT NOT NULL, manifest_sha256 TEXT NOT NULL, git_commit TEXT, built_at TEXT NOT NULL,
    build_seconds REAL, size_bytes INTEGER, golden TEXT NOT NULL DEFAULT '[]', origin TEXT NOT NULL DEFAULT 'build');
CREATE TABLE pushes (id INTEGER PRIMARY KEY, version TEXT NOT NULL, build_id INTEGER NOT NULL REFERENCES builds(id),
    repository TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL, pushed_at TEXT NOT NULL,
    origin TEXT NOT NULL DEFAULT 'push');
CREATE TABLE live (target TEXT PRIMARY KEY, version TEXT NOT NULL, digest TEXT NOT NULL, image_ref TEXT NOT NULL,
    slot TEXT, since TEXT NOT NULL, previous_version TEXT, previous_digest TEXT, previous_image_ref TEXT,
    previous_slot TEXT);
CREATE TABLE switches (id INTEGER PRIMARY KEY, target TEXT NOT NULL, action TEXT NOT NULL, from_version TEXT,
    to_version TEXT NOT NULL, digest TEXT, started_at TEXT NOT NULL, finished_at TEXT,
    outcome TEXT NOT NULL DEFAULT 'running', reason TEXT, phases TEXT NOT NULL DEFAULT '{}', step TEXT,
    data TEXT NOT NULL DEFAULT '{}', user TEXT NOT NULL, command TEXT);
CREATE TABLE failed_digests (digest TEXT NOT NULL, version TEXT NOT NULL, target TEXT NOT NULL, at TEXT NOT NULL,
    reason TEXT NOT NULL, PRIMARY KEY (digest, target));
CREATE TABLE events (id INTEGER PRIMARY KEY, at TEXT NOT NULL, target TEXT, kind TEXT NOT NULL,
    message TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}');
"""
V = "v5.5.4-dinov3"
CPU_DIGEST, CUDA_DIGEST = "sha256:" + "c" * 64, "sha256:" + "d" * 64


def old_ledger(state) -> None:
    """A schema-1 ledger with a CPU and a CUDA build, each pushed, and the CPU image live."""
    state.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(state / LEDGER_FILE)
    db.executescript(SCHEMA_1)
    for i, variant in ((1, "cpu"), (2, "cuda")):
        db.execute("INSERT INTO builds (id, version, variant, image_id, manifest_sha256, built_at, golden)"
                   " VALUES (?,?,?,?,?,?,?)", (i, V, variant, f"sha256:{i}", "m" * 64, "2026-01-01", "[]"))
    db.execute("INSERT INTO pushes (version, build_id, repository, tag, digest, pushed_at) VALUES (?,?,?,?,?,?)",
               (V, 1, "127.0.0.1:5000/aads-ulora", V, CPU_DIGEST, "2026-01-02"))
    db.execute("INSERT INTO pushes (version, build_id, repository, tag, digest, pushed_at) VALUES (?,?,?,?,?,?)",
               (V, 2, "127.0.0.1:5000/aads-ulora", V, CUDA_DIGEST, "2026-01-03"))
    db.execute("INSERT INTO live (target, version, digest, image_ref, slot, since) VALUES (?,?,?,?,?,?)",
               ("local", V, CPU_DIGEST, f"127.0.0.1:5000/aads-ulora@{CPU_DIGEST}", "blue", "2026-01-04"))
    db.commit()
    db.close()


def user_version(state) -> int:
    db = sqlite3.connect(state / LEDGER_FILE)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_a_new_ledger_carries_the_schema_version(tmp_path):
    Ledger(tmp_path / "state").close()
    assert SCHEMA_VERSION >= 2
    assert user_version(tmp_path / "state") == SCHEMA_VERSION


def test_an_old_ledger_is_migrated_keeping_its_records(tmp_path):
    state = tmp_path / "state"
    old_ledger(state)
    led = Ledger(state)
    try:
        assert user_version(state) == SCHEMA_VERSION
        pushes = led.pushes(V)
        assert [(p.variant, p.digest) for p in pushes] == [("cpu", CPU_DIGEST), ("cuda", CUDA_DIGEST)]
        assert led.latest_push(V, "cpu").digest == CPU_DIGEST
        assert led.latest_push(V, "cuda").digest == CUDA_DIGEST
        assert led.variant_of_digest(CPU_DIGEST) == "cpu"
        assert led.live("local").digest == CPU_DIGEST
    finally:
        led.close()
    Ledger(state).close()  # a second open changes nothing
    assert user_version(state) == SCHEMA_VERSION


def test_a_ledger_from_a_newer_orchestrator_is_refused(tmp_path):
    state = tmp_path / "state"
    Ledger(state).close()
    db = sqlite3.connect(state / LEDGER_FILE)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match=f"schema {SCHEMA_VERSION + 1}.*upgrade the orchestrator"):
        Ledger(state)


def test_a_failed_migration_leaves_the_old_ledger(tmp_path, monkeypatch):
    state = tmp_path / "state"
    old_ledger(state)
    import orchestrator.ledger as ledger_mod

    def broken(db):
        db.execute("ALTER TABLE pushes ADD COLUMN variant TEXT")
        raise sqlite3.OperationalError("disk I/O error")
    monkeypatch.setitem(ledger_mod.MIGRATIONS, 2, broken)
    with pytest.raises(LedgerError, match="migrating the ledger .* schema 1 to 2"):
        Ledger(state)
    assert user_version(state) == 0
    cols = [r[1] for r in sqlite3.connect(state / LEDGER_FILE).execute("PRAGMA table_info(pushes)")]
    assert "variant" not in cols


@pytest.mark.parametrize("evidence", ["compose.env", "edge/haproxy.cfg"])
def test_a_deleted_ledger_is_reported_when_a_version_was_live(tmp_path, evidence):
    state = tmp_path / "state"
    Ledger(state).close()
    marker = state / "compose" / "local" / evidence
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("BLUE_IMAGE=127.0.0.1:5000/aads-ulora@sha256:" + "1" * 64 + "\n")
    (state / LEDGER_FILE).unlink()
    with pytest.raises(LedgerError, match=r"ledger .* is missing.*target local.*from your backups.*remove .*compose/local"):
        Ledger(state)
    assert not (state / LEDGER_FILE).exists(), "no empty ledger may be created in its place"


def test_a_fresh_state_dir_still_gets_a_new_ledger(tmp_path):
    state = tmp_path / "state"
    (state / "locks").mkdir(parents=True)  # a lock file alone says nothing was live
    Ledger(state).close()
    assert (state / LEDGER_FILE).is_file()


def test_a_damaged_row_is_one_clear_error(tmp_path):
    state = tmp_path / "state"
    led = Ledger(state)
    b = led.record_build(version=V, variant="cpu", image_id="sha256:1", manifest_sha256="m" * 64, git_commit=None,
                         size_bytes=1, golden=[])
    with led.transaction() as db:
        db.execute("UPDATE builds SET golden = '[{\"image\": ' WHERE id = ?", (b.id,))
    with pytest.raises(LedgerError, match=rf"builds row {b.id} is damaged \(golden"):
        led.builds(V)
    led.close()


def test_a_row_with_an_unknown_variant_is_damaged(tmp_path):
    led = Ledger(tmp_path / "state")
    b = led.record_build(version=V, variant="cpu", image_id="sha256:1", manifest_sha256="m" * 64, git_commit=None,
                         size_bytes=1, golden=[])
    with led.transaction() as db:
        db.execute("UPDATE builds SET variant = 'tpu' WHERE id = ?", (b.id,))
    with pytest.raises(LedgerError, match=rf"builds row {b.id} is damaged \(variant 'tpu'"):
        led.latest_build(V)
    led.close()


def test_two_processes_opening_an_old_ledger_at_once_migrate_it_once(tmp_path):
    """Both read schema 1 before either took the write lock: the one that comes second skips the step."""
    state = tmp_path / "state"
    old_ledger(state)
    led = Ledger(state)  # the first process migrated it
    try:
        led._migrate_from(1)  # the second still believes it saw schema 1
        assert user_version(state) == SCHEMA_VERSION
        assert [p.variant for p in led.pushes(V)] == ["cpu", "cuda"]
    finally:
        led.close()
