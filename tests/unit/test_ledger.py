"""The SQLite ledger: records, live state with its previous, switches, failed digests, and
all-or-nothing writes (also when the writing process is killed)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from orchestrator.errors import LedgerError
from orchestrator.ledger import LEDGER_FILE, Ledger


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "state")
    yield led
    led.close()


def add_build(ledger, version="v5.5.3-performance", image="sha256:" + "a" * 64):
    return ledger.record_build(version=version, variant="cpu", image_id=image, manifest_sha256="m" * 64,
                               git_commit="abc", size_bytes=123, golden=[{"image": "x.png", "decision": "accept"}],
                               build_seconds=1.5)


def test_build_and_push_records(ledger):
    b = add_build(ledger)
    assert b.id == 1 and b.golden == [{"image": "x.png", "decision": "accept"}]
    assert ledger.latest_build("v5.5.3-performance", "cpu") == b
    assert ledger.latest_build("v5.5.3-performance", "cuda") is None
    p = ledger.record_push(version=b.version, build_id=b.id, repository="r:5000/x", tag=b.version,
                           digest="sha256:" + "d" * 64)
    assert p.image_ref == "r:5000/x@sha256:" + "d" * 64
    assert ledger.latest_push(b.version) == p
    assert ledger.version_for_digest(p.digest) == b.version
    assert [x.id for x in ledger.pushes()] == [p.id]


def test_push_needs_an_existing_build(ledger):
    with pytest.raises(sqlite3.IntegrityError):
        ledger.record_push(version="v", build_id=99, repository="r/x", tag="v", digest="sha256:1")
    assert ledger.pushes() == []


def test_live_keeps_the_previous_version(ledger):
    ledger.set_live("local", version="v1.0.0-a", digest="sha256:1", image_ref="r@sha256:1", slot="blue")
    ledger.set_live("local", version="v1.0.1-b", digest="sha256:2", image_ref="r@sha256:2", slot="green")
    live = ledger.live("local")
    assert (live.version, live.previous_version, live.previous_slot) == ("v1.0.1-b", "v1.0.0-a", "blue")
    # the same image again (a repair) keeps the older previous
    ledger.set_live("local", version="v1.0.1-b", digest="sha256:2", image_ref="r@sha256:2", slot="green")
    assert ledger.live("local").previous_version == "v1.0.0-a"
    assert [lv.target for lv in ledger.all_live()] == ["local"]


def test_switch_lifecycle(ledger):
    s = ledger.begin_switch(target="local", action="switch", to_version="v2.0.0-x", from_version="v1.0.0-a",
                            digest="sha256:2", command="orchestrator switch v2.0.0-x", data={"slot": "green"})
    assert s.outcome == "running" and ledger.unfinished_switches("local") == [s]
    ledger.enter_step(s.id, "smoke", port=1234)
    ledger.record_phase(s.id, "ready", 1.25)
    ledger.record_phase(s.id, "ready", 0.5)
    mid = ledger.switch(s.id)
    assert mid.step == "smoke" and mid.data == {"slot": "green", "port": 1234} and mid.phases == {"ready": 1.75}
    ledger.finish_switch(s.id, "failed", "smoke: golden mismatch")
    done = ledger.switch(s.id)
    assert (done.outcome, done.step, done.reason) == ("failed", None, "smoke: golden mismatch")
    assert ledger.unfinished_switches("local") == []
    assert [h.id for h in ledger.history("local")] == [s.id]


def test_failed_digests_and_events(ledger):
    ledger.mark_failed_digest(digest="sha256:2", version="v2.0.0-x", target="local", reason="5xx after flip")
    ledger.mark_failed_digest(digest="sha256:2", version="v2.0.0-x", target="k8s", reason="not ready")
    marks = ledger.failed_digests()
    assert sorted(m["target"] for m in marks["sha256:2"]) == ["k8s", "local"]
    ledger.add_event("note", "hello", target="local", n=1)
    assert ledger.events("local")[-1]["data"] == {"n": 1}


def test_transaction_is_all_or_nothing(ledger):
    add_build(ledger)
    with pytest.raises(RuntimeError):
        with ledger.transaction() as db:
            db.execute("DELETE FROM builds")
            raise RuntimeError("boom")
    assert len(ledger.builds()) == 1


def test_a_writer_killed_mid_transaction_leaves_nothing(tmp_path, ledger):
    """SIGKILL between INSERT and COMMIT: the next reader sees the ledger as it was."""
    add_build(ledger)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from orchestrator.ledger import Ledger
        led = Ledger({str(tmp_path / "state")!r})
        with led.transaction() as db:
            db.execute("INSERT INTO builds (version, variant, image_id, manifest_sha256, built_at)"
                       " VALUES ('v9.9.9-half', 'cpu', 'sha256:x', 'm', 'now')")
            print("inserted", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "inserted"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    fresh = Ledger(tmp_path / "state")
    try:
        assert [b.version for b in fresh.builds()] == ["v5.5.3-performance"]
        add_build(fresh, version="v5.5.4-dinov3")  # and the write lock is free again
    finally:
        fresh.close()


def test_unopenable_ledger_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(LedgerError, match="cannot open the ledger"):
        Ledger(blocker / "state")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / LEDGER_FILE).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError):
        Ledger(bad)
