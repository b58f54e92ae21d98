"""The --json contract (orchestrator/results.py, docs/cli-json.md) against the Compose backend's
real outputs: the switch flow of tests/unit/test_compose_switch_flow.py (engine calls recorded),
with its real ledger. tests/integration/test_cli_json_k8s.py does the same for Kubernetes.

Each output must convert with nothing left over (every field the backend writes is declared and
documented), keep every field it had (the JSON only grows), and carry schema_version."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from orchestrator import results
from orchestrator.backends.compose import compose_cli
from orchestrator.cli import main
from orchestrator.commands import deploy
from orchestrator.results import (
    SCHEMA_VERSION,
    History,
    Status,
    SwitchPlan,
    SwitchResult,
)
from tests.unit.test_compose_switch_flow import NEW, OLD, digest, project  # noqa: F401  (project: a fixture)

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {
    "SwitchResult": [results.SwitchResult], "SwitchPlan": [results.SwitchPlan],
    "Status": [results.Status, results.LiveVersion, results.PreviousVersion, results.SlotState],
    "History": [results.History, results.HistoryEntry],
}


def documented_fields() -> dict[str, set[str]]:
    """Section (`## Name — ...`) -> the backticked names in the first column of its tables."""
    out: dict[str, set[str]] = {}
    section = None
    for line in (ROOT / "docs" / "cli-json.md").read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].split()[0]
            out[section] = set()
        elif section and line.startswith("| `"):
            out[section] |= set(re.findall(r"`(\w+)`", line.split("|")[1]))
    return out


def test_the_doc_lists_every_field_of_every_result():
    doc = documented_fields()
    for section, classes in SECTIONS.items():
        for cls in classes:
            missing = {f.name for f in fields(cls)} - {"extra"} - doc[section]
            assert not missing, f"docs/cli-json.md, {section}: {cls.__name__} fields {missing} not documented"


def no_extra(obj) -> list[str]:
    """Fields a backend wrote that the dataclasses do not declare (anywhere inside)."""
    found = [f"{type(obj).__name__}.{k}" for k in getattr(obj, "extra", {})]
    for f in fields(obj):
        v = getattr(obj, f.name)
        for item in v if isinstance(v, list) else [v]:
            if hasattr(item, "__dataclass_fields__"):
                found += no_extra(item)
    return found


def assert_contract(obj, backend_out: dict, kind: str) -> dict:
    """`obj` converted from `backend_out`: nothing undeclared, nothing lost, slot/revision split."""
    assert no_extra(obj) == [], no_extra(obj)
    d = obj.to_dict()
    json.dumps(d)
    assert d["schema_version"] == SCHEMA_VERSION and d["kind"] == kind
    lost = set(backend_out) - set(d)
    assert not lost, f"fields dropped from the JSON: {lost}"
    for k, v in backend_out.items():
        if k in ("slot", "kind", "live", "previous", "slots", "entries"):
            continue
        assert d[k] == v, k
    return d


def test_compose_switch_rollback_and_noop_results(project):
    backend = project()
    for out in (backend.switch(NEW), backend.rollback(), backend.switch(OLD)):
        d = assert_contract(SwitchResult.from_backend(out, "compose"), out, "compose")
        assert d["slot"] == out["slot"] in ("blue", "green") and d["revision"] is None
    assert d["outcome"] == "noop"


def test_compose_history(project):
    backend = project()
    backend.switch(NEW)
    out = backend.history()
    d = assert_contract(History.from_backend(out, "compose"), out, "compose")
    assert [e["to_version"] for e in d["entries"]] == [NEW]
    for entry, orig in zip(d["entries"], out["entries"]):
        assert {k: entry[k] for k in orig} == orig  # every entry field kept as it was
        assert entry["revision"] is None


class StatusReadable:
    """What status reads from the engine, answered without one: no containers, a ready edge."""

    @staticmethod
    def patch(backend, monkeypatch):
        monkeypatch.setattr(compose_cli, "detect", lambda forced=None: compose_cli.V2)
        monkeypatch.setattr(backend.stack, "containers", dict)
        monkeypatch.setattr(backend.stack, "edge_health", lambda: "ready")
        monkeypatch.setattr(backend.stack, "gpu_enabled", lambda: False)


def test_compose_status(project, monkeypatch):
    backend = project()
    backend.switch(NEW, keep_previous=True)
    StatusReadable.patch(backend, monkeypatch)
    out = backend.status()
    d = assert_contract(Status.from_backend(out, "compose"), out, "compose")
    assert d["live"]["slot"] == "green" and d["live"]["revision"] is None
    assert {k: d["live"][k] for k in out["live"]} == out["live"]
    assert {k: d["previous"][k] for k in out["previous"]} == out["previous"]
    assert [{k: s[k] for k in o} for s, o in zip(d["slots"], out["slots"])] == out["slots"]
    assert d["repairs"] == []


def test_compose_dry_run_plans_without_starting_or_recording(project, monkeypatch, capsys):
    backend = project()
    ctx = backend.ctx
    before = len(ctx.ledger.history("local"))
    monkeypatch.setattr(deploy, "get_backend", lambda c, target: backend)
    monkeypatch.setattr(backend.stack, "variant_choice", lambda: ("cpu", "variant: cpu (test)"))
    # the registry tag check of the real switch: still made by the plan, against recorded pushes
    monkeypatch.setattr("orchestrator.plan.resolve",
                        lambda c, v, *, variant=None: __import__("orchestrator.resolve").resolve.resolve(
                            c, v, variant=variant, check_registry=False))
    monkeypatch.setenv("AADS_CONFIG", ctx.config_path)
    code = main(["switch", NEW, "--dry-run", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    plan = json.loads(out)
    assert plan == SwitchPlan(action="switch", target="local", kind="compose", from_version=OLD, to_version=NEW,
                              variant="cpu", digest=digest(NEW), image=f"127.0.0.1:1/aads-ulora@{digest(NEW)}",
                              slot="green", from_slot="blue",
                              steps=["resolve", "start", "ready", "smoke", "flip", "confirm", "watch", "drain",
                                     "stop", "finish"],
                              notes=["target local deploys the cpu variant (variant: cpu (test))"]).to_dict()
    assert backend.events == [] and len(ctx.ledger.history("local")) == before
    assert not (ctx.config.state_path / "locks" / "local.lock").exists()
    code = main(["switch", OLD, "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0 and "none (no-op)" in out and "already live" in out


def test_a_dry_run_names_a_held_lock_and_never_takes_it(project, monkeypatch, capsys):
    from orchestrator.lock import target_lock
    from orchestrator.lock import holder as lock_holder

    backend = project()
    state = backend.ctx.config.state_path
    monkeypatch.setattr(deploy, "get_backend", lambda c, target: backend)
    monkeypatch.setattr(backend.stack, "variant_choice", lambda: ("cpu", "test"))
    monkeypatch.setattr("orchestrator.plan.resolve",
                        lambda c, v, *, variant=None: __import__("orchestrator.resolve").resolve.resolve(
                            c, v, variant=variant, check_registry=False))
    monkeypatch.setenv("AADS_CONFIG", backend.ctx.config_path)
    assert lock_holder(state, "local") is None
    with target_lock(state, "local"):
        assert lock_holder(state, "local") == f"pid {__import__('os').getpid()}"
        code = main(["switch", NEW, "--dry-run", "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert any("lock is held by pid" in n for n in json.loads(out)["notes"])
    assert lock_holder(state, "local") is None


@pytest.mark.parametrize("slot, revision", [("2", 2), ("revision 7", 7)])
def test_kubernetes_slot_text_becomes_the_revision_field(slot, revision):
    out = {"outcome": "noop", "target": "k", "from_version": OLD, "to_version": OLD, "digest": None,
           "slot": slot, "reason": None, "phases": {}}
    d = SwitchResult.from_backend(out, "kubernetes").to_dict()
    assert (d["slot"], d["revision"]) == (None, revision)


def test_the_tables_render_the_converted_results(project, monkeypatch, capsys):
    from orchestrator.commands import render

    backend = project()
    sw = SwitchResult.from_backend(backend.switch(NEW), "compose")
    StatusReadable.patch(backend, monkeypatch)
    st = Status.from_backend(backend.status(), "compose").to_dict()
    h = History.from_backend(backend.history(), "compose").to_dict()
    capsys.readouterr()
    render.print_result(backend.ctx, sw, as_json=False)
    render.print_status(backend.ctx, st)
    render.print_history(backend.ctx, h)
    out = capsys.readouterr().out
    assert f"{OLD} → {NEW}" in out and "slot green" in out and f"previous {OLD}" in " ".join(out.split())
    assert "success rate: 100%" in out
