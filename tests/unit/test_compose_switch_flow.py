"""The compose switch flow (ComposeBackend.switch) without an engine: the order of its steps.

Everything that touches the engine (slots, probes, smoke, confirm, watch) is replaced by a
recorder; the edge is `EdgeRuntime` itself over a fake HAProxy runtime API (tests/unit/test_haproxy.py's
SlowEdge), so the traffic moves run the same code as on a real edge. The ledger, the lock, the
step records and haproxy.cfg on disk are real. The engine tests (tests/integration/test_compose_*.py)
prove the same promises against real containers; these prove the order in seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator import probe
from orchestrator.backends.compose import ComposeBackend, ConfirmFailed, SmokeFailed, WatchFailed
from orchestrator.backends.compose import backend as backend_mod
from orchestrator.backends.compose import switch as switch_mod
from orchestrator.backends.compose.checks import Checks
from orchestrator.backends.compose.haproxy import EdgeRuntime, config_live_slot
from orchestrator.backends.compose.stack import ComposeStack
from orchestrator.context import Context
from orchestrator.errors import CandidateExited, EngineError, RegistryError, SwitchFailed, TamperError
from tests.unit.test_haproxy import SlowEdge

ROOT = Path(__file__).resolve().parents[2]
OLD, NEW = "v5.5.3-performance", "v5.5.4-dinov3"
REPO = "127.0.0.1:1/aads-ulora"


def digest(v: str) -> str:
    return "sha256:" + (v.encode().hex() * 8)[:64]


# What the stack (engine, edge) and the checks (HTTP) do, answered by the recorder below instead.
STACK_CALLS = ("slot_runs", "ready_now", "check_gpu_room", "slot_image", "start_slot", "stop_slot",
               "slot_exit_reason", "edge", "point_edge_at", "containers", "edge_health", "ensure_monitoring")
CHECK_CALLS = ("smoke", "confirm", "watch")


class RecordingStack(ComposeStack):
    def __init__(self, recorder, *args):
        super().__init__(*args)
        self.recorder = recorder


class RecordingChecks(Checks):
    def __init__(self, recorder, stack):
        super().__init__(stack)
        self.recorder = recorder


for _name in STACK_CALLS:
    setattr(RecordingStack, _name, lambda self, *a, _n=_name, **k: getattr(self.recorder, _n)(*a, **k))
for _name in CHECK_CALLS:
    setattr(RecordingChecks, _name, lambda self, *a, _n=_name, **k: getattr(self.recorder, _n)(*a, **k))


class RecordingCompose(ComposeBackend):
    """ComposeBackend on a stack whose engine calls and checks are recorded instead of run; `fail_at`
    makes one of them raise."""

    def __init__(self, ctx, target, spec, edge: SlowEdge, fail_at: str | None = None):
        super().__init__(ctx, target, spec)
        self.stack = RecordingStack(self, ctx.config, target, spec, ctx.note)
        self.checks = RecordingChecks(self, self.stack)
        self.fake_edge = edge
        self.rt = EdgeRuntime(self._exec)
        self.fail_at = fail_at
        self.events: list[str] = []
        self.confirmed: list[str] = []
        self.smoked: list[str] = []
        self.pointed: list[str] = []
        self.reconciled: list[str] = []
        self.watched: list[str] = []
        self.running: dict[str, str] = {"blue": f"{REPO}@{digest(OLD)}"}

    edge_dead = False

    def _exec(self, argv):
        if self.edge_dead:
            return 126, "OCI runtime exec failed: container not running\n"
        line = argv[-1]
        if line.startswith("set "):
            self.events.append("edge: " + line.removeprefix("set server slots/"))
        return self.fake_edge(argv)

    # engine-facing methods --------------------------------------------------------------------
    def resolve(self, version, previous=None, tolerate_registry_down=False):
        if self.fail_at == "resolve":
            raise TamperError(f"registry tag {REPO}:{version} moved (on purpose)")
        return super().resolve(version, previous, tolerate_registry_down)

    def reconcile(self, live):
        self.reconciled.append(live.version)
        return []

    def slot_runs(self, slot, image):
        return self.running.get(slot) == image

    def ready_now(self, slot):
        return slot in self.running

    def check_gpu_room(self):
        return "the GPU has 100 MiB free (on purpose)" if self.fail_at == "gpu" else None

    def slot_image(self, cand):
        return cand.image_ref

    def start_slot(self, slot, image):
        self.events.append(f"start {slot}")
        if self.fail_at == "start":
            raise EngineError("the Docker engine went away (on purpose)")
        if self.fail_at == "start exits":
            raise CandidateExited("compose failed: container green exited (1) (on purpose)")
        self.running[slot] = image

    def stop_slot(self, slot):
        self.events.append(f"stop {slot}")
        if self.fail_at == "stop" and self.running.get(slot, "").endswith(digest(OLD)):
            raise EngineError("compose stop failed (on purpose)")
        self.running.pop(slot, None)

    def containers(self):
        return {}

    monitoring_started = 0

    def ensure_monitoring(self):
        self.monitoring_started += 1

    def edge_health(self):
        return "ready"

    def slot_exit_reason(self, slot):
        return f"{slot} exited (asked)"

    def smoke(self, slot, cand):
        self.smoked.append(cand.version)
        self.events.append(f"smoke {slot}")
        if self.fail_at == "smoke":
            raise SmokeFailed("golden images differ (on purpose)")

    def edge(self):
        return self.rt

    def point_edge_at(self, rt, slot):
        assert rt is self.rt
        self.pointed.append(slot)

    def confirm(self, cand, timeout_s=15.0):
        self.confirmed.append(cand.version)
        self.events.append(f"confirm (edge serves {'+'.join(self.rt.serving_slots())})")
        if self.fail_at == "confirm and the edge dies":
            self.edge_dead = True
            raise ConfirmFailed("the edge does not serve the candidate (on purpose)")
        if self.fail_at == "confirm":
            raise ConfirmFailed("the edge does not serve the candidate (on purpose)")

    def watch(self, rt, slot):
        assert rt is self.rt
        self.watched.append(slot)
        self.events.append("watch")
        if self.fail_at == "watch":
            raise WatchFailed("error rate 50% in the watch window (on purpose)")


@pytest.fixture
def project(tmp_path, monkeypatch):
    # No registry here: the tag check is tests/unit/test_resolve.py's; the rest of resolve runs as is.
    real_resolve = backend_mod.resolve
    registry = {"down": False}

    def resolve_without_registry(ctx, version, *, variant=None, check_registry=True):
        if check_registry and registry["down"]:
            raise RegistryError("registry 127.0.0.1:1 is unreachable (ConnectionError)")
        return real_resolve(ctx, version, variant=variant, check_registry=False)

    monkeypatch.setattr(backend_mod, "resolve", resolve_without_registry)
    (tmp_path / "orchestrator.yaml").write_text(yaml.safe_dump({
        "registry": REPO, "state_dir": "state", "versions_dir": str(ROOT / "versions"), "default_target": "local",
        "targets": {"local": {"kind": "compose", "compose_file": str(ROOT / "compose" / "compose.yaml"),
                              "watch_s": 1, "ready_timeout_s": 5}},
    }))
    ctx = Context(config_path=str(tmp_path / "orchestrator.yaml"))
    for v in (OLD, NEW):
        build = ctx.ledger.record_build(version=v, variant="cpu", image_id=digest("image " + v),
                                        manifest_sha256="0" * 64, git_commit=None, size_bytes=None, golden=[])
        ctx.ledger.record_push(version=v, build_id=build.id, repository=REPO, tag=f"{v}-cpu", digest=digest(v))
    ctx.ledger.set_live("local", version=OLD, digest=digest(OLD), image_ref=f"{REPO}@{digest(OLD)}", slot="blue")
    ready: list[str] = []
    asked: list[tuple[float, str]] = []

    def wait_ready(url, timeout_s, abort=None):
        ready.append(url)
        asked.append((timeout_s, abort()))

    monkeypatch.setattr(probe, "wait_ready", wait_ready)
    monkeypatch.setenv("COLUMNS", "200")

    def make(fail_at: str | None = None, up_after: int = 3, watch_s: float = 1) -> RecordingCompose:
        name, spec = ctx.config.target("local")
        spec = spec.model_copy(update={"watch_s": watch_s})
        backend = RecordingCompose(ctx, name, spec, SlowEdge(up_after=up_after), fail_at=fail_at)
        backend.stack.write_edge_config("blue")
        backend.ready_urls, backend.ready_asked = ready, asked
        backend.registry = registry
        return backend

    yield make
    ctx.ledger.close()


def test_the_switch_confirms_the_new_slot_serving_before_it_drains_the_old_one(project):
    backend = project()
    out = backend.switch(NEW)
    assert out["outcome"] == "succeeded" and out["slot"] == "green" and out["to_version"] == NEW
    assert backend.events == [
        "start green", "smoke green",
        "edge: green state ready", "edge: blue state drain",
        "confirm (edge serves green)", "watch",
        "edge: blue state maint", "stop blue",
    ]
    assert backend.ready_urls == [backend.stack.slot_url("green")]
    # The drain went out only after a poll of the edge had seen green serving.
    log = backend.fake_edge.log
    drain_at = log.index(("set", "set server slots/blue state drain"))
    assert [e[1] for e in log[:drain_at] if e[0] == "serving"][-1] == ("blue", "green")
    live = backend.ctx.ledger.live("local")
    assert (live.version, live.slot, live.previous_version) == (NEW, "green", OLD)
    assert config_live_slot(backend.stack.cfg_path.read_text()) == "green"
    sw = backend.ctx.ledger.history("local")[-1]
    assert sw.outcome == "succeeded"
    assert list(sw.phases) == ["resolve", "start", "ready", "smoke", "flip", "confirm", "watch", "drain", "stop",
                               "finish"]


def test_a_failed_smoke_never_touches_the_edge(project, capsys):
    backend = project(fail_at="smoke")
    with pytest.raises(SwitchFailed) as err:
        backend.switch(NEW)
    assert str(err.value) == (f"switch to {NEW} failed at smoke: golden images differ (on purpose) "
                              f"({OLD} keeps serving)")
    assert f"✗ switch to {NEW} failed at smoke: golden images differ (on purpose)" in capsys.readouterr().err
    assert backend.events == ["start green", "smoke green", "stop green"]
    assert backend.fake_edge.log == []  # not one runtime API command
    assert backend.ctx.ledger.live("local").version == OLD
    assert config_live_slot(backend.stack.cfg_path.read_text()) == "blue"
    sw = backend.ctx.ledger.history("local")[-1]
    assert (sw.outcome, sw.reason) == ("failed", "smoke: golden images differ (on purpose)")
    assert digest(NEW) in backend.ctx.ledger.failed_digests()


def test_a_failure_that_is_not_the_candidates_does_not_mark_its_digest(project):
    backend = project(fail_at="start")
    with pytest.raises(SwitchFailed, match="failed at start: the Docker engine went away"):
        backend.switch(NEW)
    assert backend.ctx.ledger.failed_digests() == {}
    assert backend.ctx.ledger.history("local")[-1].outcome == "failed"
    assert backend.fake_edge.log == []


def test_a_candidate_whose_container_exits_on_start_has_its_digest_marked(project):
    backend = project(fail_at="start exits")
    with pytest.raises(SwitchFailed, match="failed at start: compose failed: container green exited"):
        backend.switch(NEW)
    assert digest(NEW) in backend.ctx.ledger.failed_digests()
    assert backend.ctx.ledger.live("local").version == OLD


def test_when_flipping_back_fails_the_reason_says_so_and_the_file_names_the_live_slot(project, capsys):
    backend = project(fail_at="confirm and the edge dies")
    with pytest.raises(SwitchFailed) as err:
        backend.switch(NEW)
    message = str(err.value)
    assert message.startswith(f"switch to {NEW} reverted at confirm: the edge does not serve the candidate "
                              "(on purpose); flipping back failed: edge runtime API failed (exit 126)"), message
    assert config_live_slot(backend.stack.cfg_path.read_text()) == "blue"
    sw = backend.ctx.ledger.history("local")[-1]
    assert sw.outcome == "reverted" and "; flipping back failed: edge runtime API failed" in sw.reason
    assert "edge flipped back" not in capsys.readouterr().err


@pytest.mark.parametrize("fail_at", ["confirm", "watch"])
def test_a_failure_after_the_flip_flips_back_before_stopping_the_candidate(project, fail_at, capsys):
    backend = project(fail_at=fail_at)
    with pytest.raises(SwitchFailed, match=rf"reverted at {fail_at}.*back on v5.5.3-performance"):
        backend.switch(NEW)
    flipped_back = backend.events.index("edge: blue state ready")
    assert backend.events[flipped_back:] == ["edge: blue state ready", "edge: green state drain",
                                             "edge: green state maint", "stop green"]
    assert "stop blue" not in backend.events
    assert backend.rt.serving_slots() == ["blue"]
    assert config_live_slot(backend.stack.cfg_path.read_text()) == "blue"
    sw = backend.ctx.ledger.history("local")[-1]
    assert sw.outcome == "reverted" and sw.reason.startswith(f"{fail_at}:")
    assert [r["version"] for r in backend.ctx.ledger.failed_digests()[digest(NEW)]] == [NEW]
    assert backend.ctx.ledger.live("local").version == OLD
    assert f"edge flipped back to blue ({OLD})" in capsys.readouterr().err


def test_the_flip_step_pauses_at_its_points_inside_the_step(project, monkeypatch, tmp_path):
    """The crash test's pause points: at `flip:enabled` both slots serve, at `flip:drained` only the new."""
    backend = project()
    seen: list[tuple[str, list[str], str | None]] = []

    def hook(point: str) -> None:
        if point.startswith("flip:"):
            step = backend.ctx.ledger.history("local")[-1].step
            seen.append((point, backend.rt.serving_slots(), step))

    monkeypatch.setattr(switch_mod, "pause_hook", hook)
    backend.switch(NEW)
    assert seen == [("flip:enabled", ["blue", "green"], "flip"), ("flip:drained", ["green"], "flip")]


def test_the_switch_record_holds_what_a_repair_needs(project):
    backend = project()
    backend.switch(NEW)
    sw = backend.ctx.ledger.history("local")[-1]
    assert (sw.action, sw.from_version, sw.to_version, sw.digest) == ("switch", OLD, NEW, digest(NEW))
    assert {k: sw.data[k] for k in ("live_slot", "candidate_slot", "keep_previous", "live_image")} == {
        "live_slot": "blue", "candidate_slot": "green", "keep_previous": False, "live_image": f"{REPO}@{digest(OLD)}"}
    assert (sw.data["image"], sw.data["digest"], sw.data["version"]) == (f"{REPO}@{digest(NEW)}", digest(NEW), NEW)


def test_switching_to_the_live_version_is_a_recorded_noop(project, capsys):
    backend = project()
    out = backend.switch(OLD)
    reason = f"{OLD} is already live on local (slot blue); nothing to do"
    assert out == {"outcome": "noop", "target": "local", "from_version": OLD, "to_version": OLD,
                   "digest": digest(OLD), "slot": "blue", "reason": reason, "phases": {}, "repaired": [],
                   "interrupted": []}
    assert backend.events == [] and backend.fake_edge.log == []
    sw = backend.ctx.ledger.history("local")[-1]
    assert (sw.action, sw.outcome, sw.reason, sw.from_version, sw.to_version, sw.digest) == (
        "switch", "noop", reason, OLD, OLD, digest(OLD))
    assert reason in capsys.readouterr().err


def test_the_live_version_pushed_again_is_deployed_not_a_noop(project):
    backend = project()
    ledger = backend.ctx.ledger
    ledger.record_push(version=OLD, build_id=ledger.latest_push(OLD).build_id, repository=REPO, tag=f"{OLD}-cpu",
                       digest=digest("rebuilt"))
    out = backend.switch(OLD)
    assert out["outcome"] == "succeeded" and out["digest"] == digest("rebuilt") and out["slot"] == "green"
    assert ledger.history("local")[-1].digest == digest("rebuilt")


def test_a_rollback_to_the_warm_previous_slot_only_flips(project):
    backend = project()
    backend.switch(NEW, keep_previous=True)
    assert "stop blue" not in backend.events and backend.running["blue"] == f"{REPO}@{digest(OLD)}"
    backend.events.clear()
    out = backend.rollback()
    assert out["outcome"] == "succeeded" and out["to_version"] == OLD and out["warm"] is True
    assert backend.events == ["edge: blue state ready", "edge: green state drain", "confirm (edge serves blue)",
                              "watch", "edge: green state maint", "stop green"]  # no start, no smoke
    sw = backend.ctx.ledger.history("local")[-1]
    assert (sw.action, sw.digest, sw.outcome) == ("rollback", digest(OLD), "succeeded")
    live = backend.ctx.ledger.live("local")
    assert (live.version, live.slot, live.previous_version) == (OLD, "blue", NEW)


def test_a_switch_to_the_previous_version_is_smoked_even_when_warm(project):
    backend = project()
    backend.switch(NEW, keep_previous=True)
    backend.events.clear()
    backend.switch(OLD)   # not a rollback: the warm slot is smoke-tested again
    assert backend.events[:2] == ["smoke blue", "edge: blue state ready"]


def test_a_tampered_candidate_keeps_its_exit_code_and_starts_nothing(project):
    backend = project(fail_at="resolve")
    with pytest.raises(SwitchFailed) as err:
        backend.switch(NEW)
    assert err.value.exit_code == TamperError.exit_code != SwitchFailed.exit_code
    assert "failed at resolve: registry tag" in str(err.value)
    assert backend.events == [] and backend.ctx.ledger.failed_digests() == {}


def test_the_result_of_a_switch_says_what_happened(project):
    backend = project()
    out = backend.switch(NEW)
    assert {k: out[k] for k in ("outcome", "target", "from_version", "to_version", "digest", "slot", "reason",
                                "warm", "kept_previous", "repaired", "interrupted")} == {
        "outcome": "succeeded", "target": "local", "from_version": OLD, "to_version": NEW, "digest": digest(NEW),
        "slot": "green", "reason": None, "warm": False, "kept_previous": False, "repaired": [], "interrupted": []}
    assert isinstance(out["traffic_switched_s"], float) and out["traffic_switched_s"] >= 0
    assert list(out["phases"]) == ["resolve", "start", "ready", "smoke", "flip", "confirm", "watch", "drain", "stop",
                                   "finish"]
    assert backend.confirmed == [NEW] and backend.watched == ["green"]
    assert backend.ctx.ledger.history("local")[-1].reason is None


def test_without_a_watch_window_there_is_no_watch_step(project):
    backend = project(watch_s=0)
    out = backend.switch(NEW)
    assert "watch" not in backend.events and "watch" not in out["phases"]


def test_an_old_slot_that_will_not_stop_is_a_note_not_a_failure(project, capsys):
    backend = project(fail_at="stop")
    out = backend.switch(NEW)
    assert out["outcome"] == "succeeded" and out["reason"] == "old slot not stopped: compose stop failed (on purpose)"
    assert backend.ctx.ledger.history("local")[-1].reason == out["reason"]
    assert backend.ctx.ledger.live("local").version == NEW
    assert "warning: old slot not stopped" in capsys.readouterr().err


def test_an_old_slot_the_edge_will_not_disable_is_a_note_too(project):
    backend = project()
    real = backend._exec

    def refuse_maint(argv):
        return (0, "No such server.\n") if argv[-1].endswith("state maint") else real(argv)

    backend.rt = EdgeRuntime(refuse_maint)
    out = backend.switch(NEW)
    assert out["outcome"] == "succeeded"
    assert out["reason"] == "old slot not disabled in the edge: edge refused `set server slots/blue state maint`: " \
                            "No such server."


def test_a_rollback_goes_back_to_the_digest_that_ran_before_even_after_a_new_push(project, capsys):
    backend = project()
    backend.switch(NEW)
    ledger = backend.ctx.ledger
    ledger.record_push(version=OLD, build_id=ledger.latest_push(OLD).build_id, repository=REPO, tag=f"{OLD}-cpu",
                       digest=digest("pushed again"))
    capsys.readouterr()
    out = backend.rollback()
    assert out["to_version"] == OLD and out["digest"] == digest(OLD) and out["slot"] == "blue"
    assert backend.ready_urls[-1] == backend.stack.slot_url("blue") != backend.stack.slot_url("green")
    assert f"→ ready    {backend.stack.slot_url('blue')}/ready" in capsys.readouterr().err
    assert backend.running["blue"] == f"{REPO}@{digest(OLD)}"
    assert ledger.history("local")[-1].digest == digest(OLD)
    again = backend.switch(NEW)
    assert again["from_version"] == OLD and again["slot"] == "green"
    assert backend.switch(OLD)["digest"] == digest("pushed again")  # a switch takes the newest push


def test_the_flow_hands_each_check_its_candidate_and_slot(project, capsys):
    backend = project()
    out = backend.switch(NEW)
    assert backend.reconciled == [OLD] and backend.smoked == [NEW] and backend.pointed == ["green"]
    assert backend.ready_asked == [(5.0, "green exited (asked)")]  # the target's ready_timeout_s, the slot's exit
    assert 0 <= out["traffic_switched_s"] < 600
    err = capsys.readouterr().err
    for line in [f"→ resolve  {NEW} → digest, registry tag check",
                 f"→ start    green ← {REPO}@{digest(NEW)[:19]}…\n",
                 f"→ ready    {backend.stack.slot_url('green')}/ready",
                 "→ smoke    golden images on the slot",
                 "→ flip     edge → green, drain blue",
                 f"→ confirm  {backend.edge_url}/v1/version names {NEW}",
                 "→ watch    error rate through the edge for 1s",
                 "→ drain    blue finishes its requests",
                 "→ stop     stop blue"]:
        assert line in err, (line, err)


def test_a_slot_left_running_another_image_is_not_taken_for_warm(project, capsys):
    backend = project()
    backend.running["green"] = "some-other-image"
    out = backend.switch(NEW)
    assert out["warm"] is False and backend.events[:2] == ["start green", "smoke green"]
    assert "(warm)" not in capsys.readouterr().err


def test_a_warm_rollback_says_so_in_its_progress(project, capsys):
    backend = project()
    backend.switch(NEW, keep_previous=True)
    capsys.readouterr()
    backend.rollback()
    assert f"→ start    blue ← {REPO}@{digest(OLD)[:19]}… (warm)" in capsys.readouterr().err


def test_no_room_on_the_gpu_refuses_before_starting_anything(project):
    backend = project(fail_at="gpu")
    with pytest.raises(SwitchFailed, match=r"failed at start: the GPU has 100 MiB free \(on purpose\)"):
        backend.switch(NEW)
    assert backend.events == [] and backend.fake_edge.log == []


def test_an_unreachable_registry_stops_a_switch_but_not_a_rollback(project, capsys):
    backend = project()
    backend.switch(NEW)
    backend.registry["down"] = True
    with pytest.raises(SwitchFailed, match="failed at resolve: registry 127.0.0.1:1 is unreachable"):
        backend.switch(OLD)
    out = backend.rollback()
    assert out["outcome"] == "succeeded" and out["to_version"] == OLD
    assert "registry check skipped for the rollback" in capsys.readouterr().err


def test_two_notes_are_both_kept(project):
    backend = project(fail_at="stop")
    real = backend._exec
    backend.rt = EdgeRuntime(lambda argv: (0, "No such server.\n") if argv[-1].endswith("state maint") else real(argv))
    out = backend.switch(NEW)
    assert out["reason"] == ("old slot not disabled in the edge: edge refused `set server slots/blue state maint`: "
                             "No such server.; old slot not stopped: compose stop failed (on purpose)")
    assert backend.ctx.ledger.history("local")[-1].reason == out["reason"]


def test_a_switch_records_the_newest_push_of_its_version(project):
    backend = project()
    backend.switch(NEW)
    ledger = backend.ctx.ledger
    ledger.record_push(version=OLD, build_id=ledger.latest_push(OLD).build_id, repository=REPO, tag=f"{OLD}-cpu",
                       digest=digest("pushed again"))
    backend.switch(OLD)
    assert ledger.history("local")[-1].digest == digest("pushed again")


def interrupted_switch(backend, step: str):
    """A switch record as a `kill -9` at `step` leaves it: 'running', its step entered."""
    ledger = backend.ctx.ledger
    sw = ledger.begin_switch(target="local", action="switch", to_version=NEW, from_version=OLD, digest=digest(NEW),
                             command="orchestrator switch", data={"live_slot": "blue", "candidate_slot": "green",
                                                                  "keep_previous": False})
    ledger.enter_step(sw.id, step, image=f"{REPO}@{digest(NEW)}", digest=digest(NEW), version=NEW)
    return sw


@pytest.fixture
def no_compose_cli(monkeypatch):
    from types import SimpleNamespace
    monkeypatch.setattr(ComposeStack, "project",
                        property(lambda self: SimpleNamespace(flavor=SimpleNamespace(describe=lambda: "test"))))


def test_status_is_read_only_it_lists_an_unfinished_switch_and_repairs_nothing(project, no_compose_cli, capsys):
    backend = project()
    sw = interrupted_switch(backend, "ready")
    st = backend.status()
    assert [(i["id"], i["step"]) for i in st["unfinished"]] == [(sw.id, "ready")]
    assert st["interrupted"] == [] and st["switch_running"] == []
    assert backend.ctx.ledger.switch(sw.id).outcome == "running"     # still half done: nothing repaired
    assert backend.events == [] and backend.reconciled == []
    assert [e for e in backend.fake_edge.log if e[0] == "set"] == []   # the edge was read, never told anything
    assert "was interrupted" not in capsys.readouterr().err


def test_repair_finishes_what_status_lists_and_returns_the_status_with_the_repairs(project, no_compose_cli, capsys):
    backend = project()
    sw = interrupted_switch(backend, "ready")
    out = backend.repair()
    assert [(i["id"], i["step"]) for i in out["interrupted"]] == [(sw.id, "ready")]
    assert out["repairs"] == [f"switch #{sw.id}: back to {OLD} on blue; candidate slot green stopped"]
    assert out["unfinished"] == [] and out["live"]["version"] == OLD
    assert backend.ctx.ledger.switch(sw.id).outcome == "interrupted"
    assert backend.reconciled == [OLD] and backend.events == ["stop green"]
    assert f"switch #{sw.id} (switch → {NEW}) was interrupted at step ready" in capsys.readouterr().err
    assert backend.repair()["repairs"] == []    # nothing left to repair
