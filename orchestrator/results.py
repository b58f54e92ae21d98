"""The typed results the deploy commands print: the one `--json` contract for every backend.

Backends return plain dicts (their own words); the commands turn them into these dataclasses with
`from_backend(data, kind)` and print `to_dict()`. docs/cli-json.md documents each field, and
tests/unit/test_cli_results.py runs real outputs of both backends through them.

Where the backends differ:
- `slot` is compose's blue/green slot; `revision` is the Kubernetes Deployment revision. Each is
  null on the other backend (schema 1 put the revision into `slot` as text on Kubernetes).
- fields only one backend has (compose's `edge`, `warm`; Kubernetes' `namespace`, `replicas`, ...)
  are null on the other.
Adding a field is compatible (schema_version stays); renaming or removing one bumps it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 2  # 1: before the typed results (Kubernetes' revision in `slot`, no schema_version)


def _take(cls: type, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split `data` into `cls`'s fields and what is left over (kept in `extra`, never dropped)."""
    names = {f.name for f in fields(cls)}
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names}
    return known, extra


def _revision(value: Any) -> int | None:
    """Kubernetes backends wrote the revision into `slot` as "3" or "revision 3"."""
    if isinstance(value, int) or value is None:
        return value
    m = re.fullmatch(r"(?:revision )?(\d+)", str(value))
    return int(m.group(1)) if m else None


def _split_slot(data: dict[str, Any], kind: str) -> dict[str, Any]:
    """On Kubernetes, `slot` held the revision: move it to `revision` and leave `slot` null."""
    if kind != "kubernetes" or data.get("slot") is None:
        return data
    out = dict(data)
    out["revision"] = out.get("revision") if out.get("revision") is not None else _revision(out["slot"])
    out["slot"] = None
    return out


def _dump(obj: Any) -> dict[str, Any]:
    d = asdict(obj)
    extra = d.pop("extra", None) or {}
    return {**d, **extra}  # a backend's newer field still reaches the JSON (and the contract test flags it)


# ---- switch, rollback, up --------------------------------------------------------------------
@dataclass
class SwitchResult:
    outcome: str                      # succeeded | noop (failures exit nonzero with one error line)
    target: str
    kind: str                         # compose | kubernetes
    from_version: str | None
    to_version: str | None
    digest: str | None
    slot: str | None = None           # compose: blue | green
    revision: int | None = None       # kubernetes: the Deployment revision now live
    reason: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    interrupted: list[dict[str, Any]] = field(default_factory=list)  # switches left half-done, repaired first
    repaired: list[str] = field(default_factory=list)                # drift repaired before the switch
    edge: str | None = None           # compose: the edge URL (up)
    warm: bool | None = None          # compose: the previous slot was still running (instant flip)
    kept_previous: bool | None = None  # compose: --keep-previous
    traffic_switched_s: float | None = None  # compose: seconds from flip start to the old slot drained
    image: str | None = None          # kubernetes: the image the pod template now names
    canary: list[dict[str, Any]] | None = None  # compose --canary: each step's share, weights, verdict, figures
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_backend(cls, data: dict[str, Any], kind: str) -> SwitchResult:
        known, extra = _take(cls, _split_slot(data, kind))
        return cls(**{**known, "kind": kind, "schema_version": SCHEMA_VERSION}, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return _dump(self)


# ---- switch --dry-run ------------------------------------------------------------------------
@dataclass
class SwitchPlan:
    """What `switch --dry-run` would do; nothing was started, locked or recorded."""

    action: str                       # switch | rollback
    target: str
    kind: str
    from_version: str | None
    to_version: str
    variant: str | None
    digest: str | None
    image: str | None                 # repo@sha256:... the candidate runs
    slot: str | None = None           # compose: the idle slot the candidate would start in
    from_slot: str | None = None      # compose: the live slot
    revision: int | None = None       # kubernetes: the live revision the patch would follow
    noop: bool = False                # the version is already live: a switch would do nothing
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- status and repair -----------------------------------------------------------------------
@dataclass
class LiveVersion:
    version: str | None
    digest: str | None
    image: str | None
    variant: str | None = None
    slot: str | None = None           # compose
    revision: int | None = None       # kubernetes
    since: str | None = None
    health: str | None = None
    annotated_version: str | None = None  # kubernetes: the pod template's version annotation
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_backend(cls, data: dict[str, Any] | None, kind: str) -> LiveVersion | None:
        if data is None:
            return None
        known, extra = _take(cls, _split_slot(data, kind))
        return cls(**known, extra=extra)


@dataclass
class PreviousVersion:
    version: str | None
    digest: str | None = None
    variant: str | None = None
    image: str | None = None
    slot: str | None = None           # compose
    revision: int | None = None       # kubernetes
    warm: bool | None = None          # compose: its slot still runs it (a rollback is a flip)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_backend(cls, data: dict[str, Any] | None, kind: str) -> PreviousVersion | None:
        if not data:
            return None
        known, extra = _take(cls, _split_slot(data, kind))
        return cls(**known, extra=extra)


@dataclass
class SlotState:
    """Compose: one row per slot (blue, green). Kubernetes: one row per kept revision."""

    slot: str | None = None
    revision: int | None = None
    state: str | None = None
    health: str | None = None
    version: str | None = None
    image: str | None = None
    edge: str | None = None           # compose: serving | draining | maint | ...
    port: int | None = None           # compose
    restarts: int | None = None       # compose
    oom_killed: bool | None = None    # compose
    weight: int | None = None         # compose: the slot's weight in the edge (canary shares)
    failed: str | None = None         # kubernetes: why the revision was marked failed
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_backend(cls, data: dict[str, Any]) -> SlotState:
        known, extra = _take(cls, data)
        return cls(**known, extra=extra)


@dataclass
class Status:
    target: str
    kind: str
    live: LiveVersion | None
    previous: PreviousVersion | None
    slots: list[SlotState] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    interrupted: list[dict[str, Any]] = field(default_factory=list)     # repaired (by `repair`)
    switch_running: list[dict[str, Any]] = field(default_factory=list)  # a switch holds the lock now
    unfinished: list[dict[str, Any]] = field(default_factory=list)      # left by a dead run: `repair` it
    repairs: list[str] = field(default_factory=list)                    # `repair` only: what it changed
    # compose
    project: str | None = None
    compose: str | None = None
    edge: str | None = None
    last_analysis: dict[str, Any] | None = None  # compose: the newest canary verdict with its figures
    # kubernetes
    namespace: str | None = None
    deployment: str | None = None
    server: str | None = None
    replicas: dict[str, int] | None = None
    rollout: str | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_backend(cls, data: dict[str, Any], kind: str) -> Status:
        known, extra = _take(cls, data)
        known.update(
            kind=kind, schema_version=SCHEMA_VERSION,
            live=LiveVersion.from_backend(data.get("live"), kind),
            previous=PreviousVersion.from_backend(data.get("previous"), kind),
            slots=[SlotState.from_backend(s) for s in data.get("slots") or []],
            drift=list(data.get("drift") or []), interrupted=list(data.get("interrupted") or []),
            switch_running=list(data.get("switch_running") or []), unfinished=list(data.get("unfinished") or []),
            repairs=list(data.get("repairs") or []),
        )
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        d = _dump(self)
        for key in ("live", "previous"):
            if d[key] is not None:
                d[key] = {**d[key], **(d[key].pop("extra") or {})}
        d["slots"] = [{**s, **(s.pop("extra") or {})} for s in d["slots"]]
        return d


# ---- history ---------------------------------------------------------------------------------
@dataclass
class HistoryEntry:
    """One switch, rollback or up (compose: one per ledger record; Kubernetes: one per kept
    revision, plus attempts that left no revision)."""

    action: str | None
    outcome: str
    at: str | None
    from_version: str | None
    to_version: str | None
    variant: str | None = None
    reason: str | None = None
    user: str | None = None
    id: int | None = None             # compose: the ledger's switch id
    finished_at: str | None = None    # compose
    digest: str | None = None         # compose
    phases: dict[str, float] = field(default_factory=dict)  # compose: seconds per step
    step: str | None = None           # compose: the last step entered
    failed_digest: bool = False       # compose: the digest is marked failed on this target
    revision: int | None = None       # kubernetes (null: an attempt that left no revision)
    removed_revision: int | None = None  # kubernetes: the failed revision the undo replaced
    change_cause: str | None = None   # kubernetes: the revision's kubernetes.io/change-cause
    version: str | None = None        # kubernetes: the version the revision's image is
    image: str | None = None          # kubernetes
    live: bool | None = None          # kubernetes: the revision the Deployment runs now
    revision_history: str | None = None  # kubernetes: earlier revisions this template had
    canary: list[dict[str, Any]] | None = None  # compose: the canary steps and their analyses
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_backend(cls, data: dict[str, Any]) -> HistoryEntry:
        known, extra = _take(cls, data)
        known["phases"] = known.get("phases") or {}
        return cls(**known, extra=extra)


@dataclass
class History:
    target: str
    kind: str
    entries: list[HistoryEntry]
    success_rate: float | None        # succeeded / counted over the shown range; null: none counted
    counted: int
    succeeded: int
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_backend(cls, data: dict[str, Any], kind: str) -> History:
        known, extra = _take(cls, data)
        known.update(kind=kind, schema_version=SCHEMA_VERSION,
                     entries=[HistoryEntry.from_backend(e) for e in data.get("entries") or []])
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        d = _dump(self)
        d["entries"] = [{**e, **(e.pop("extra") or {})} for e in d["entries"]]
        return d
