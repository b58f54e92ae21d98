"""The ledger: what was built, pushed and deployed, in SQLite under the state dir.

Every write is one transaction (BEGIN IMMEDIATE ... COMMIT), so a process killed mid-way leaves
either the whole record or none of it. Manifests are never written back: the ledger is the only
place that says what happened to a version.

The schema carries its version in `PRAGMA user_version` (0: a ledger written before schema
versions, the same tables as schema 1). Opening an older ledger runs the missing steps of
MIGRATIONS, each in its own transaction with its version bump; a newer one is refused. A ledger
that is gone while the compose state of a target says a version was live is reported, never
recreated empty; a row that cannot be read back is a LedgerError naming it.

Over 400 lines on purpose: the schema, its migrations and every query that reads or writes it
stay in one file, so a schema change is made and reviewed in one place (docs/architecture.md
lists which switch step writes which record).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
import sqlite3
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from orchestrator.errors import LedgerError
from orchestrator.variants import VARIANTS

LEDGER_FILE = "ledger.sqlite3"
SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS builds (
    id INTEGER PRIMARY KEY,
    version TEXT NOT NULL,
    variant TEXT NOT NULL,              -- cpu | cuda
    image_id TEXT NOT NULL,             -- sha256:... (the image config digest)
    manifest_sha256 TEXT NOT NULL,
    git_commit TEXT,
    built_at TEXT NOT NULL,
    build_seconds REAL,
    size_bytes INTEGER,
    golden TEXT NOT NULL DEFAULT '[]',  -- JSON: [{"image": name, "decision": ..., "crop": ..., "disease": ...}]
    origin TEXT NOT NULL DEFAULT 'build' -- build | restore:<archive name>
);
CREATE TABLE IF NOT EXISTS pushes (
    id INTEGER PRIMARY KEY,
    version TEXT NOT NULL,
    build_id INTEGER NOT NULL REFERENCES builds(id),
    repository TEXT NOT NULL,           -- e.g. 127.0.0.1:5000/aads-ulora
    tag TEXT NOT NULL,                  -- <version> (cuda) or <version>-cpu, see orchestrator/variants.py
    digest TEXT NOT NULL,               -- sha256:... (registry manifest digest)
    pushed_at TEXT NOT NULL,
    origin TEXT NOT NULL DEFAULT 'push',
    variant TEXT NOT NULL               -- cpu | cuda: the variant of the build pushed (schema 2)
);
CREATE TABLE IF NOT EXISTS live (
    target TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    image_ref TEXT NOT NULL,
    slot TEXT,                          -- compose: blue | green; kubernetes: revision number
    since TEXT NOT NULL,
    previous_version TEXT,
    previous_digest TEXT,
    previous_image_ref TEXT,
    previous_slot TEXT
);
CREATE TABLE IF NOT EXISTS switches (
    id INTEGER PRIMARY KEY,
    target TEXT NOT NULL,
    action TEXT NOT NULL,               -- up | switch | rollback | repair
    from_version TEXT,
    to_version TEXT NOT NULL,
    digest TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    outcome TEXT NOT NULL DEFAULT 'running', -- running | succeeded | failed | reverted | noop | interrupted
    reason TEXT,
    phases TEXT NOT NULL DEFAULT '{}',  -- JSON: {"start": 1.2, "ready": 3.4, ...} seconds
    step TEXT,                          -- the phase in progress (crash recovery reads it)
    data TEXT NOT NULL DEFAULT '{}',    -- JSON: backend facts needed to repair (slots, ports)
    user TEXT NOT NULL,
    command TEXT
);
CREATE TABLE IF NOT EXISTS failed_digests (
    digest TEXT NOT NULL,
    version TEXT NOT NULL,
    target TEXT NOT NULL,
    at TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (digest, target)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    target TEXT,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
"""


def _migrate_2(db: sqlite3.Connection) -> None:
    """Schema 2: a push records its variant (one tag per variant); old pushes take their build's."""
    db.execute("ALTER TABLE pushes ADD COLUMN variant TEXT NOT NULL DEFAULT ''")
    db.execute("UPDATE pushes SET variant = (SELECT variant FROM builds WHERE builds.id = pushes.build_id)")


# MIGRATIONS[n] takes a schema n-1 ledger to schema n (inside a transaction the caller holds).
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {2: _migrate_2}

# Files of the compose backend that exist only once a version went live on a target.
LIVE_EVIDENCE = ("compose/*/compose.env", "compose/*/edge/haproxy.cfg")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def who() -> str:
    """The operator, as history shows it: user@host."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in a container
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Build:
    id: int
    version: str
    variant: str
    image_id: str
    manifest_sha256: str
    git_commit: str | None
    built_at: str
    build_seconds: float | None
    size_bytes: int | None
    golden: list[dict[str, Any]]
    origin: str


@dataclass(frozen=True)
class Push:
    id: int
    version: str
    build_id: int
    repository: str
    tag: str
    digest: str
    pushed_at: str
    origin: str
    variant: str

    @property
    def image_ref(self) -> str:
        return f"{self.repository}@{self.digest}"


@dataclass(frozen=True)
class Live:
    target: str
    version: str
    digest: str
    image_ref: str
    slot: str | None
    since: str
    previous_version: str | None
    previous_digest: str | None
    previous_image_ref: str | None
    previous_slot: str | None


@dataclass(frozen=True)
class Switch:
    id: int
    target: str
    action: str
    from_version: str | None
    to_version: str
    digest: str | None
    started_at: str
    finished_at: str | None
    outcome: str
    reason: str | None
    phases: dict[str, float]
    step: str | None
    data: dict[str, Any]
    user: str
    command: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_JSON_COLUMNS = {"golden", "phases", "data"}
_TABLES = {Build: "builds", Push: "pushes", Live: "live", Switch: "switches"}


def _row(cls: type, row: sqlite3.Row | None):
    if row is None:
        return None
    keys = row.keys()
    where = f"{_TABLES.get(cls, cls.__name__)} row {row['id'] if 'id' in keys else row[keys[0]]}"
    values: dict[str, Any] = {}
    for k in keys:
        try:
            values[k] = json.loads(row[k]) if k in _JSON_COLUMNS else row[k]
        except (TypeError, ValueError) as e:
            raise LedgerError(f"ledger {where} is damaged ({k}: {e}): repair the row or put the ledger "
                              f"file back from a backup of the state dir") from None
    if "variant" in values and values["variant"] not in VARIANTS:
        raise LedgerError(f"ledger {where} is damaged (variant {values['variant']!r}, expected cuda or cpu): "
                          f"repair the row or put the ledger file back from a backup of the state dir")
    try:
        return cls(**values)
    except TypeError as e:
        raise LedgerError(f"ledger {where} does not fit this orchestrator ({e})") from None


def refuse_lost_ledger(state_dir: Path, path: Path) -> None:
    """A missing ledger is created only where nothing says a version was ever live."""
    for pattern in LIVE_EVIDENCE:
        for found in sorted(state_dir.glob(pattern)):
            target = found.relative_to(state_dir).parts[1]
            raise LedgerError(
                f"the ledger {path} is missing, but {found} says target {target} had a live version: "
                f"put the ledger file back from your backups of {state_dir}; to start a new, empty ledger "
                f"instead, stop that target's stack and remove {state_dir / 'compose' / target}"
            )


class Ledger:
    """Open (and create) the ledger in `state_dir`, migrating an older schema."""

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / LEDGER_FILE
        if not self.path.exists():
            refuse_lost_ledger(Path(state_dir), self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except (OSError, sqlite3.Error) as e:
            raise LedgerError(f"cannot open the ledger at {self.path}: {e}") from None
        try:
            self._upgrade()
        except BaseException:
            self._db.close()
            raise

    def _upgrade(self) -> None:
        """Create the schema in an empty ledger, or migrate an older one step by step."""
        try:
            found = self._db.execute("PRAGMA user_version").fetchone()[0]
            empty = self._db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] == 0
            if empty:  # CREATE ... IF NOT EXISTS: two processes creating it at once agree
                self._db.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
                return
        except sqlite3.Error as e:
            raise LedgerError(f"cannot open the ledger at {self.path}: {e}") from None
        current = max(found, 1)  # 0: written before schema versions, the tables of schema 1
        if current > SCHEMA_VERSION:
            raise LedgerError(f"the ledger at {self.path} has schema {current}, newer than this orchestrator's "
                              f"{SCHEMA_VERSION}: upgrade the orchestrator (an older one must not write to it)")
        self._migrate_from(current)

    def _migrate_from(self, current: int) -> None:
        """Run MIGRATIONS after schema `current` (as read before taking the write lock)."""
        for target in range(current + 1, SCHEMA_VERSION + 1):
            try:
                with self.transaction() as db:
                    if db.execute("PRAGMA user_version").fetchone()[0] >= target:
                        continue  # another process migrated it while this one waited for the lock
                    MIGRATIONS[target](db)
                    db.execute(f"PRAGMA user_version = {target}")
            except sqlite3.Error as e:
                raise LedgerError(f"migrating the ledger at {self.path} from schema {target - 1} to {target} "
                                  f"failed ({e}); it is left at schema {target - 1}") from None

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All-or-nothing: BEGIN IMMEDIATE takes the write lock up front."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple) -> list[sqlite3.Row]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"the ledger at {self.path} cannot be read ({e}): restore it from a backup") from None

    def _one(self, cls: type, sql: str, *args: Any):
        rows = self._query(sql, args)
        return _row(cls, rows[0] if rows else None)

    def _all(self, cls: type, sql: str, *args: Any) -> list:
        return [_row(cls, r) for r in self._query(sql, args)]

    # builds -----------------------------------------------------------------------------------
    def record_build(self, *, version: str, variant: str, image_id: str, manifest_sha256: str,
                     git_commit: str | None, size_bytes: int | None, golden: list[dict[str, Any]],
                     build_seconds: float | None = None, origin: str = "build",
                     built_at: str | None = None) -> Build:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO builds (version, variant, image_id, manifest_sha256, git_commit, built_at,"
                " build_seconds, size_bytes, golden, origin) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (version, variant, image_id, manifest_sha256, git_commit, built_at or now(),
                 build_seconds, size_bytes, json.dumps(golden), origin),
            )
            build_id = cur.lastrowid
        return self.build(build_id)

    def build(self, build_id: int) -> Build | None:
        return self._one(Build, "SELECT * FROM builds WHERE id = ?", build_id)

    def latest_build(self, version: str, variant: str | None = None) -> Build | None:
        if variant:
            return self._one(Build, "SELECT * FROM builds WHERE version = ? AND variant = ? ORDER BY id DESC LIMIT 1",
                             version, variant)
        return self._one(Build, "SELECT * FROM builds WHERE version = ? ORDER BY id DESC LIMIT 1", version)

    def builds(self, version: str | None = None) -> list[Build]:
        if version:
            return self._all(Build, "SELECT * FROM builds WHERE version = ? ORDER BY id", version)
        return self._all(Build, "SELECT * FROM builds ORDER BY id")

    # pushes -----------------------------------------------------------------------------------
    def record_push(self, *, version: str, build_id: int, repository: str, tag: str, digest: str,
                    origin: str = "push") -> Push:
        """The push of build `build_id` under `tag`; its variant is the build's."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO pushes (version, build_id, repository, tag, digest, pushed_at, origin, variant)"
                " SELECT ?,?,?,?,?,?,?, variant FROM builds WHERE id = ?",
                (version, build_id, repository, tag, digest, now(), origin, build_id),
            )
            if cur.rowcount != 1:
                raise sqlite3.IntegrityError(f"no build {build_id} to push")
            push_id = cur.lastrowid
        return self._one(Push, "SELECT * FROM pushes WHERE id = ?", push_id)

    def record_restore(self, *, build: dict[str, Any], push: dict[str, Any] | None) -> tuple[Build, Push | None]:
        """A build (and its push) re-created from a backup archive, both or neither (one transaction).

        `build` holds the Build fields but id; `push` the Push fields but id, build_id, pushed_at.
        """
        cols = ("version", "variant", "image_id", "manifest_sha256", "git_commit", "built_at", "build_seconds",
                "size_bytes", "golden", "origin")
        with self.transaction() as db:
            row = {**build, "golden": json.dumps(build.get("golden") or [])}
            cur = db.execute(f"INSERT INTO builds ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                             tuple(row.get(c) for c in cols))
            build_id = cur.lastrowid
            push_id = None
            if push is not None:
                cur = db.execute(
                    "INSERT INTO pushes (version, build_id, repository, tag, digest, pushed_at, origin, variant)"
                    " VALUES (?,?,?,?,?,?,?,?)",
                    (push["version"], build_id, push["repository"], push["tag"], push["digest"], now(),
                     push["origin"], row.get("variant")),
                )
                push_id = cur.lastrowid
        recorded_push = self._one(Push, "SELECT * FROM pushes WHERE id = ?", push_id) if push_id else None
        return self.build(build_id), recorded_push

    def latest_push(self, version: str, variant: str | None = None) -> Push | None:
        if variant:
            return self._one(Push, "SELECT * FROM pushes WHERE version = ? AND variant = ? ORDER BY id DESC LIMIT 1",
                             version, variant)
        return self._one(Push, "SELECT * FROM pushes WHERE version = ? ORDER BY id DESC LIMIT 1", version)

    def variant_of_digest(self, digest: str | None) -> str | None:
        """The variant of the image pushed as `digest` (None: a digest the ledger never pushed)."""
        if not digest:
            return None
        row = self._db.execute("SELECT variant FROM pushes WHERE digest = ? ORDER BY id DESC LIMIT 1",
                               (digest,)).fetchone()
        return row["variant"] if row else None

    def pushes(self, version: str | None = None) -> list[Push]:
        if version:
            return self._all(Push, "SELECT * FROM pushes WHERE version = ? ORDER BY id", version)
        return self._all(Push, "SELECT * FROM pushes ORDER BY id")

    def version_for_digest(self, digest: str) -> str | None:
        row = self._db.execute("SELECT version FROM pushes WHERE digest = ? ORDER BY id DESC LIMIT 1",
                               (digest,)).fetchone()
        return row["version"] if row else None

    # live state -------------------------------------------------------------------------------
    def live(self, target: str) -> Live | None:
        return self._one(Live, "SELECT * FROM live WHERE target = ?", target)

    def all_live(self) -> list[Live]:
        return self._all(Live, "SELECT * FROM live ORDER BY target")

    def set_live(self, target: str, *, version: str, digest: str, image_ref: str, slot: str | None,
                 db: sqlite3.Connection | None = None) -> None:
        """Make `version` live on `target`; the one live before becomes `previous_*`.

        Pass `db` to join a transaction the caller already holds (e.g. with finish_switch).
        """
        def write(conn: sqlite3.Connection) -> None:
            old = conn.execute("SELECT * FROM live WHERE target = ?", (target,)).fetchone()
            prev = (old["version"], old["digest"], old["image_ref"], old["slot"]) if old else (None,) * 4
            if old and old["digest"] == digest:  # same image again (repair): keep the older previous
                prev = (old["previous_version"], old["previous_digest"], old["previous_image_ref"],
                        old["previous_slot"])
            conn.execute(
                "INSERT OR REPLACE INTO live (target, version, digest, image_ref, slot, since, previous_version,"
                " previous_digest, previous_image_ref, previous_slot) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (target, version, digest, image_ref, slot, now(), *prev),
            )

        if db is not None:
            write(db)
        else:
            with self.transaction() as conn:
                write(conn)

    # switches ---------------------------------------------------------------------------------
    def begin_switch(self, *, target: str, action: str, to_version: str, from_version: str | None,
                     digest: str | None, command: str | None, data: dict[str, Any] | None = None) -> Switch:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO switches (target, action, from_version, to_version, digest, started_at, user,"
                " command, data) VALUES (?,?,?,?,?,?,?,?,?)",
                (target, action, from_version, to_version, digest, now(), who(), command,
                 json.dumps(data or {})),
            )
            switch_id = cur.lastrowid
        return self.switch(switch_id)

    def switch(self, switch_id: int) -> Switch | None:
        return self._one(Switch, "SELECT * FROM switches WHERE id = ?", switch_id)

    def enter_step(self, switch_id: int, step: str, **data: Any) -> None:
        """Record the phase now running (and facts a repair needs) before doing it."""
        with self.transaction() as db:
            row = db.execute("SELECT data FROM switches WHERE id = ?", (switch_id,)).fetchone()
            merged = {**json.loads(row["data"]), **data}
            db.execute("UPDATE switches SET step = ?, data = ? WHERE id = ?", (step, json.dumps(merged), switch_id))

    def record_phase(self, switch_id: int, phase: str, seconds: float) -> None:
        with self.transaction() as db:
            row = db.execute("SELECT phases FROM switches WHERE id = ?", (switch_id,)).fetchone()
            phases = json.loads(row["phases"])
            phases[phase] = round(phases.get(phase, 0.0) + seconds, 3)
            db.execute("UPDATE switches SET phases = ? WHERE id = ?", (json.dumps(phases), switch_id))

    def finish_switch(self, switch_id: int, outcome: str, reason: str | None = None,
                      db: sqlite3.Connection | None = None) -> None:
        sql = "UPDATE switches SET outcome = ?, reason = ?, finished_at = ?, step = NULL WHERE id = ?"
        if db is not None:
            db.execute(sql, (outcome, reason, now(), switch_id))
        else:
            with self.transaction() as conn:
                conn.execute(sql, (outcome, reason, now(), switch_id))

    def unfinished_switches(self, target: str) -> list[Switch]:
        return self._all(Switch, "SELECT * FROM switches WHERE target = ? AND outcome = 'running' ORDER BY id", target)

    def history(self, target: str | None = None, limit: int | None = None) -> list[Switch]:
        sql = "SELECT * FROM switches"
        args: list[Any] = []
        if target:
            sql += " WHERE target = ?"
            args.append(target)
        sql += " ORDER BY id DESC"
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        return list(reversed(self._all(Switch, sql, *args)))

    # failed digests ---------------------------------------------------------------------------
    def mark_failed_digest(self, *, digest: str, version: str, target: str, reason: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO failed_digests (digest, version, target, at, reason) VALUES (?,?,?,?,?)",
                       (digest, version, target, now(), reason))

    def failed_digests(self) -> dict[str, list[dict[str, str]]]:
        out: dict[str, list[dict[str, str]]] = {}
        for r in self._db.execute("SELECT * FROM failed_digests ORDER BY at").fetchall():
            out.setdefault(r["digest"], []).append(dict(r))
        return out

    # events -----------------------------------------------------------------------------------
    def add_event(self, kind: str, message: str, target: str | None = None, **data: Any) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO events (at, target, kind, message, data) VALUES (?,?,?,?,?)",
                       (now(), target, kind, message, json.dumps(data)))

    def events(self, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM events", []
        if target:
            sql, args = sql + " WHERE target = ?", [target]
        rows = self._db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [{**dict(r), "data": json.loads(r["data"])} for r in reversed(rows)]
