"""The CLI's contract, without an engine: one error module and one exit-code table (in --help and
the README), the shared options (--lock-timeout and its deprecated --wait), one-line usage errors,
a read-only `status` and a `repair` verb (a fake backend records what each asks of it), `logs`."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from pathlib import Path

import pytest
import yaml

import orchestrator
from orchestrator import errors
from orchestrator.backends.compose import compose_cli
from orchestrator.commands import deploy
from orchestrator.errors import (
    EXIT_CODES,
    NoSpaceError,
    OrchestratorError,
    VerifyFailed,
)
from orchestrator.ledger import Ledger
from tests.unit.test_versions_cli import assert_one_error, project, run  # noqa: F401  (project: a fixture)

ROOT = Path(__file__).resolve().parents[2]
OLD, NEW = "v5.5.3-performance", "v5.5.4-dinov3"

# Every error class is defined in orchestrator/errors.py (modules raising them import it).
NOT_YET_IMPORTED_FROM_ERRORS: set[str] = set()


def all_error_classes() -> list[type[OrchestratorError]]:
    for mod in pkgutil.walk_packages(orchestrator.__path__, "orchestrator."):
        if mod.name != "orchestrator.__main__":  # it runs the CLI
            importlib.import_module(mod.name)
    seen, todo = [], [OrchestratorError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo += cls.__subclasses__()
    return seen


def row_code(cls: type) -> int:
    """The table's code for `cls`: the row of its nearest ancestor the table lists."""
    for ancestor in cls.__mro__:
        for code, _, classes in EXIT_CODES:
            if ancestor in classes:
                return code
    raise AssertionError(f"{cls.__name__} has no row in the exit-code table")


# ---- one error module, one table ---------------------------------------------------------------
def test_every_orchestrator_error_is_defined_in_the_errors_module():
    for cls in all_error_classes():
        where = f"{cls.__module__}.{cls.__qualname__}"
        if cls.__module__ == "orchestrator.errors":
            continue
        if cls.__module__.startswith("tests."):
            continue
        assert where in NOT_YET_IMPORTED_FROM_ERRORS, f"{where} is defined outside orchestrator/errors.py"
        twin = getattr(errors, cls.__name__, None)
        assert twin is not None, f"orchestrator/errors.py has no {cls.__name__} for {where} to import"
        assert twin.exit_code == cls.exit_code, (where, cls.exit_code, twin.exit_code)


def test_every_error_exits_with_its_rows_code_and_rows_have_distinct_codes():
    codes = [code for code, _, _ in EXIT_CODES]
    assert len(codes) == len(set(codes))
    for cls in all_error_classes():
        if cls.__module__ == "orchestrator.errors":
            assert cls.exit_code == row_code(cls), cls.__name__


def test_no_space_and_a_failed_verify_no_longer_share_an_exit_code():
    assert NoSpaceError.exit_code != VerifyFailed.exit_code
    assert {NoSpaceError.exit_code, VerifyFailed.exit_code}.isdisjoint({1, 2, 3, 4, 5})


def test_a_moved_tag_in_verify_is_tampering_exit_4_as_the_release_docs_say():
    from orchestrator.verify import Report

    report = Report(version=OLD, variant="cpu")
    report.add("registry", False, "registry tag x:y moved to sha256:b")
    report.tampered = True
    assert report.error("v failed verification").exit_code == 4
    report.tampered = False
    assert report.error("v failed verification").exit_code == VerifyFailed.exit_code
    releasing = (ROOT / "docs" / "releasing.md").read_text()
    assert f"({VerifyFailed.exit_code} otherwise; 4 for a moved tag," in releasing


def test_the_readme_and_help_show_the_table_from_the_code(capsys):
    readme = (ROOT / "README.md").read_text()
    assert errors.exit_code_markdown() in readme
    code, out, _ = run(capsys, "--help")
    assert code == 0
    flat = " ".join(out.split())
    for code_, meaning in errors.exit_code_rows():
        assert f"{code_} {meaning}" in flat, (code_, meaning)


def test_no_decision_reads_an_errors_message_text():
    offenders = []
    for path in (ROOT / "orchestrator").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bin str\((e|err|exc|error)\)", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


# ---- usage errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["switch"], "Missing argument 'VERSION'"),
    (["switch", NEW, "--bogus"], "No such option '--bogus'"),
    (["history", "--limit", "0"], "--limit"),
    (["nope"], "No such command 'nope'"),
])
def test_usage_errors_are_one_error_line_exit_2(project, capsys, args, needle):
    code, _, err = run(capsys, *args)
    assert code == 2
    line = assert_one_error(code, err, needle)
    assert "Usage:" not in err and "Try " not in err and "--help" in line


def test_the_bare_command_still_prints_the_help(capsys):
    code, out, err = run(capsys)
    assert code == 2 and err.startswith("Usage: orchestrator") and "Exit codes:" in err and "error:" not in err


# ---- shared options, status, repair with a fake backend ------------------------------------------
class FakeBackend:
    """Records what the commands ask; answers like the compose backend does."""

    def __init__(self, with_repair: bool = True):
        self.calls: list[tuple[str, dict]] = []
        if not with_repair:
            self.repair = None  # type: ignore[assignment]

    def _status(self, interrupted=()):
        return {"target": "local", "kind": "compose", "project": "aads", "compose": "docker compose 2",
                "edge": "http://127.0.0.1:8080", "live": None, "previous": None, "slots": [], "drift": [],
                "interrupted": list(interrupted), "switch_running": []}

    def status(self):
        self.calls.append(("status", {}))
        return self._status()

    def repair(self):
        self.calls.append(("repair", {}))
        return {**self._status([{"id": 7, "action": "switch", "to_version": NEW, "step": "flip",
                                 "repair": "flipped back to blue"}]),
                "repairs": ["switch #7 (switch → v5.5.4-dinov3, step flip): flipped back to blue"]}

    def switch(self, version, **kw):
        self.calls.append(("switch", {"version": version, **kw}))
        return {"outcome": "noop", "target": "local", "from_version": version, "to_version": version,
                "digest": None, "slot": "blue", "reason": "already live", "phases": {}}

    def rollback(self, to_version=None, **kw):
        self.calls.append(("rollback", {"to_version": to_version, **kw}))
        return {"outcome": "noop", "target": "local", "from_version": OLD, "to_version": OLD,
                "digest": None, "slot": "blue", "reason": "already live", "phases": {}}


@pytest.fixture
def fake(project, monkeypatch):
    backend = FakeBackend()
    monkeypatch.setattr(deploy, "get_backend", lambda ctx, target: backend)
    return backend


def test_lock_timeout_reaches_the_backend_and_wait_is_a_warned_alias(fake, capsys):
    code, out, err = run(capsys, "switch", NEW, "--lock-timeout", "12", "--json")
    assert code == 0, err
    assert fake.calls[-1] == ("switch", {"version": NEW, "keep_previous": False, "wait_lock_s": 12.0})
    assert "deprecated" not in err
    code, out, err = run(capsys, "rollback", "--wait", "7")
    assert code == 0, err
    assert fake.calls[-1] == ("rollback", {"to_version": None, "wait_lock_s": 7.0})
    assert [ln for ln in err.splitlines() if "warning" in ln] == [
        "warning: --wait is deprecated and will be removed; use --lock-timeout SECONDS (same meaning)"]
    code, out, err = run(capsys, "switch", NEW, "--wait", "-1")
    assert_one_error(code, err, "--wait")
    code, out, _ = run(capsys, "switch", "--help")
    assert "--lock-timeout SECONDS" in out and "--wait" not in out


def test_the_shared_options_have_one_help_text_each(capsys):
    from orchestrator.cli import cli
    from orchestrator.options import JSON_HELP, TARGET_HELP

    for name, command in cli.commands.items():
        for sub in getattr(command, "commands", {name: command}).values():
            for p in sub.params:
                if "--json" in getattr(p, "opts", []):
                    assert p.help == JSON_HELP, f"{sub.name}: --json"
                if "--target" in getattr(p, "opts", []):
                    assert p.help == TARGET_HELP, f"{sub.name}: --target"


def test_status_only_reads_and_repair_repairs(fake, capsys):
    code, out, err = run(capsys, "status", "--json")
    assert code == 0, err
    assert [c for c, _ in fake.calls] == ["status"]
    st = json.loads(out)
    assert st["repairs"] == [] and st["schema_version"] >= 2
    code, out, err = run(capsys, "repair", "--json")
    assert code == 0, err
    assert [c for c, _ in fake.calls] == ["status", "repair"]
    assert json.loads(out)["repairs"] == ["switch #7 (switch → v5.5.4-dinov3, step flip): flipped back to blue"]
    code, out, err = run(capsys, "repair")
    assert code == 0 and "repaired switch #7" in out


def test_repair_on_a_backend_without_repair_uses_the_status_that_repairs(project, monkeypatch, capsys):
    backend = FakeBackend(with_repair=False)
    backend.status = lambda: {**FakeBackend._status(backend, [{"id": 3, "action": "rollback", "to_version": OLD,
                                                               "step": "start", "repair": "stopped green"}])}
    monkeypatch.setattr(deploy, "get_backend", lambda ctx, target: backend)
    code, out, err = run(capsys, "repair", "--json")
    assert code == 0, err
    assert json.loads(out)["repairs"] == [f"interrupted switch #3 (rollback → {OLD}, step start): stopped green"]


def test_keep_previous_on_a_kubernetes_rollback_is_refused_by_kind(project, monkeypatch, capsys):
    cfg = project / "orchestrator.yaml"
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()),
                                   "targets": {"k": {"kind": "kubernetes"}}}))
    monkeypatch.setattr(deploy, "get_backend", lambda ctx, target: FakeBackend())
    code, _, err = run(capsys, "rollback", "--target", "k", "--keep-previous")
    assert code == 2
    assert_one_error(code, err, "--keep-previous applies to compose targets only, not kubernetes")


@pytest.mark.parametrize("args, needle", [
    (["--canary", "10,50"], "--canary: canary steps '10,50': increasing percentages in 1..100 ending at 100"),
    (["--canary", "50,10,100"], "--canary: canary steps '50,10,100'"),
    (["--canary", "10,100", "--step", "soon"], "--step 'soon': expected a duration like 60s, 2m or 90"),
    (["--step", "0s"], "--step '0s': must be more than 0"),
])
def test_bad_canary_steps_are_one_error_line_exit_2(project, capsys, args, needle):
    code, _, err = run(capsys, "switch", NEW, *args)
    assert code == 2
    assert_one_error(code, err, needle)


def test_canary_on_a_kubernetes_target_is_refused_by_kind(project, monkeypatch, capsys):
    cfg = project / "orchestrator.yaml"
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()),
                                   "targets": {"k": {"kind": "kubernetes"}}}))
    monkeypatch.setattr(deploy, "get_backend", lambda ctx, target: FakeBackend())
    code, _, err = run(capsys, "switch", NEW, "--target", "k", "--canary", "10,100")
    assert code == 2
    assert_one_error(code, err, "--canary/--step apply to compose targets only, not kubernetes")


# ---- logs -----------------------------------------------------------------------------------------
def test_logs_names_the_slot_of_the_live_or_previous_version(project, monkeypatch, capsys):
    monkeypatch.setattr(compose_cli, "detect", lambda forced=None: compose_cli.V2)
    code, _, err = run(capsys, "logs")
    assert_one_error(code, err, "never started here")
    ledger = Ledger(project / "state")
    ledger.set_live("local", version=OLD, digest="sha256:" + "a" * 64, image_ref="r@sha256:" + "a" * 64, slot="blue")
    ledger.set_live("local", version=NEW, digest="sha256:" + "b" * 64, image_ref="r@sha256:" + "b" * 64, slot="green")
    ledger.close()
    env = project / "state" / "compose" / "local" / "compose.env"
    env.parent.mkdir(parents=True)
    env.write_text("")
    for which, service in ((None, "green"), (NEW, "green"), (OLD, "blue"), ("edge", "edge")):
        code, out, err = run(capsys, "logs", *([which] if which else []), "--tail", "50", "-f", "--print")
        assert code == 0, err
        argv = out.split()
        assert argv[:2] == ["docker", "compose"] and argv[argv.index("--project-name") + 1] == "aads"
        assert argv[argv.index("--env-file") + 1] == str(env)
        assert argv[argv.index("logs"):] == ["logs", "--follow", "--tail", "50", service]
    code, _, err = run(capsys, "logs", "v9.9.9-nope", "--print")
    assert_one_error(code, err, "neither a slot", f"live: {NEW}", f"previous: {OLD}")


def test_logs_on_kubernetes_is_kubectl_logs_of_the_deployment(project, capsys):
    cfg = project / "orchestrator.yaml"
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "targets": {
        "k": {"kind": "kubernetes", "kubeconfig": "kc", "context": "prod", "namespace": "ns", "deployment": "d"}}}))
    code, out, err = run(capsys, "logs", "--target", "k", "--tail", "5", "--print")
    assert code == 0, err
    assert out.split() == ["kubectl", "--kubeconfig", str(project / "kc"), "--context", "prod", "logs",
                           "deployment/d", "-n", "ns", "-c", "serving", "--tail", "5"]
    code, _, err = run(capsys, "logs", "green", "--target", "k", "--print")
    assert_one_error(code, err, "no green slot")
