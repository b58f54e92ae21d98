"""Every way a compose switch can go wrong, against the real engine, registry and HAProxy edge.

One stack for the module: `up v5.5.3-performance`, then each test tries a bad switch while a load
generator sends requests through the edge from both kinds of client (new connection per request,
and kept-alive connections). In every case the live version keeps serving (zero failed requests,
every answer names it; for the candidate that answers 5xx after the flip: failures only from the
candidate while it was flipped in, none after the flip back), the ledger still names it live, and
`history` records why. Faulty candidates are real serving images with a small wrapper
(tests/integration/faulty_images.py), recorded as versions of their own.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path

import pytest
from docker.errors import ImageNotFound

from benchmarks.loadgen import LoadGenerator, LoadSpec
from serving.manifest import manifest_sha256
from tests.integration.conftest_faults import (LIVE_VERSION, Stack, engine_client,  # noqa: F401
                                               fault_session, make_stack, one_line_error, own_registry)
from tests.integration.faulty_images import (FaultyVersion, copy_version_dir, make_faulty_version, push_image,
                                             remove_faulty_version)

pytestmark = [pytest.mark.engine, pytest.mark.slow]

LOAD_RATE = 8  # requests/s per client kind: enough to see a gap, light on a 2-core host


@pytest.fixture(scope="module")
def stack(tmp_path_factory, fault_session) -> Stack:
    s = make_stack(tmp_path_factory.mktemp("faults"), name="faults", session_state_dir=fault_session.state_dir,
                   registry=fault_session.repository, ready_timeout_s=240, watch_s=3)
    try:
        r = s.run("up", LIVE_VERSION)
        assert r.returncode == 0, f"up failed: {r.stderr[-3000:]}"
        assert s.edge_version() == LIVE_VERSION
        yield s
    finally:
        s.down()


@pytest.fixture(scope="module")
def faulty(stack, fault_session, engine_client):
    """faulty(fault) -> FaultyVersion, built once per module from the live version's image."""
    made: dict[str, FaultyVersion] = {}

    def get(fault: str, pass_first: int = 0) -> FaultyVersion:
        if fault not in made:
            ledger = stack.ledger()
            try:
                made[fault] = make_faulty_version(engine_client, ledger, repository=stack.registry,
                                                  versions_dir=stack.versions_dir, base_version=LIVE_VERSION,
                                                  fault=fault, pass_first=pass_first)
            finally:
                ledger.close()
        return made[fault]

    yield get
    for fv in made.values():
        remove_faulty_version(engine_client, fv)


def edge_load(stack: Stack, duration_s: float = 600) -> LoadGenerator:
    return LoadGenerator(LoadSpec(url=f"{stack.edge_url}/v1/version", rate=LOAD_RATE, duration_s=duration_s,
                                  clients=2, timeout_s=10, track_key="version",
                                  headers=tuple(stack.api_headers.items())))


def assert_live_kept_serving(stack: Stack, load) -> None:
    """Zero failed requests through the edge, every answer from the live version, ledger unchanged."""
    result = load.result()
    assert result.sent > 0
    assert result.failed == 0, f"{result.failed}/{result.sent} failed through the edge: {result.failures()[:5]}"
    assert result.answers() == {LIVE_VERSION: result.sent}, result.answers()
    for kind in ("fresh", "keepalive"):
        assert result.kind(kind)["sent"] > 0 and result.kind(kind)["failed"] == 0
    assert stack.live().version == LIVE_VERSION
    assert stack.edge_version() == LIVE_VERSION


def last_entry(stack: Stack, to_version: str) -> dict:
    entries = [e for e in stack.history() if e["to_version"] == to_version]
    assert entries, f"history has no entry for {to_version}"
    return entries[-1]


def assert_failed_digest_listed(stack: Stack, fv: FaultyVersion) -> None:
    row = next(r for r in stack.json("list") if r["version"] == fv.version)
    # The digest is in the row anyway (its push); it must be among the row's *failed* digests.
    why = row["failed_digests"].get(fv.digest)
    assert why, f"list --json does not flag {fv.digest} as failed: {row['failed_digests']}"
    assert any(w.startswith(f"{stack.name}: ") for w in why), why
    entry = last_entry(stack, fv.version)
    assert entry["failed_digest"] is True
    assert entry["digest"] == fv.digest


def assert_candidate_stopped(stack: Stack) -> None:
    live_slot = stack.live().slot
    for c in stack.containers():
        service = c.labels.get("com.docker.compose.service")
        if service in ("blue", "green") and service != live_slot:
            c.reload()
            assert c.status != "running", f"candidate slot {service} still runs after a failed switch"


# -- bad input: refused before anything starts ----------------------------------------------------

@pytest.mark.parametrize("make, expect", [
    ("unknown", "unknown version"),
    ("unbuilt", "not built"),
    ("unpushed", "not pushed"),
])
def test_switch_to_a_version_that_cannot_be_deployed_is_refused(stack, fault_session, make, expect):
    version = {"unknown": "v9.9.9-nowhere", "unbuilt": "v5.5.3-unbuilt", "unpushed": "v5.5.3-unpushed"}[make]
    if make != "unknown":
        copy_version_dir(stack.versions_dir, stack.versions_dir, LIVE_VERSION, version)
    if make == "unpushed":
        ledger = stack.ledger()
        try:
            base = ledger.build(ledger.latest_push(LIVE_VERSION).build_id)
            ledger.record_build(version=version, variant=base.variant, image_id=base.image_id,
                                manifest_sha256="0" * 64, git_commit=None, size_bytes=None, golden=base.golden)
        finally:
            ledger.close()
    with edge_load(stack) as load:
        r = stack.run("switch", version)
    assert r.returncode != 0
    assert expect in one_line_error(r.stderr)
    assert_live_kept_serving(stack, load)
    entry = last_entry(stack, version)
    assert entry["outcome"] == "failed" and expect in entry["reason"]


def test_a_malformed_version_name_is_one_clear_line(stack):
    r = stack.run("switch", "latest")
    assert r.returncode == 2
    assert "invalid version name" in one_line_error(r.stderr)


def test_switch_to_the_live_version_is_a_noop_that_says_so(stack):
    before = {c.name for c in stack.containers() if c.status == "running"}
    with edge_load(stack) as load:
        r = stack.run("switch", LIVE_VERSION, "--json")
    assert r.returncode == 0, r.stderr
    assert "already live" in r.stderr
    out = json.loads(r.stdout)
    assert out["outcome"] == "noop" and "already live" in out["reason"]
    assert_live_kept_serving(stack, load)
    assert {c.name for c in stack.containers() if c.status == "running"} == before
    assert last_entry(stack, LIVE_VERSION)["outcome"] == "noop"


def test_a_tag_moved_away_from_its_recorded_digest_is_refused_as_tampering(stack, faulty, engine_client):
    # The crash image's tag now points at another image (the live version's): the ledger's digest is stale.
    fv = faulty("crash")
    live_image = stack.live().image_ref
    engine_client.images.get(live_image).tag(fv.repository, fv.tag)
    moved_to = push_image(engine_client, fv.repository, fv.tag)
    assert moved_to != fv.digest
    try:
        with edge_load(stack) as load:
            r = stack.run("switch", fv.version)
        assert r.returncode != 0
        line = one_line_error(r.stderr)
        assert "possible tampering" in line and moved_to in line
        assert_live_kept_serving(stack, load)
        entry = last_entry(stack, fv.version)
        assert entry["outcome"] == "failed" and "tampering" in entry["reason"]
    finally:  # put the tag back where the ledger says, for the crash test
        engine_client.images.get(fv.image_id).tag(fv.repository, fv.tag)
        assert push_image(engine_client, fv.repository, fv.tag) == fv.digest


# -- faulty candidates: stopped before the flip, or flipped back ----------------------------------

@pytest.mark.parametrize("fault, step, expect", [
    ("crash", "ready", "exited|keeps restarting"),
    ("never-ready", "ready", "not ready"),
    ("wrong-golden", "smoke", "golden"),
])
def test_a_faulty_candidate_never_gets_traffic(stack, faulty, fault, step, expect):
    fv = faulty(fault)
    env = {f"AADS_TARGET_{stack.name.upper()}_READY_TIMEOUT_S": "20"} if fault == "never-ready" else None
    with edge_load(stack) as load:
        r = stack.run("switch", fv.version, env=env)
    assert r.returncode == 5, r.stderr[-2000:]
    line = one_line_error(r.stderr)
    assert f"failed at {step}" in line and re.search(expect, line) and f"{LIVE_VERSION} keeps serving" in line
    assert_live_kept_serving(stack, load)
    entry = last_entry(stack, fv.version)
    assert entry["outcome"] == "failed" and entry["reason"].startswith(f"{step}:") and re.search(expect, entry["reason"])
    assert_failed_digest_listed(stack, fv)
    assert_candidate_stopped(stack)


def test_a_candidate_answering_5xx_after_the_flip_is_flipped_back(stack, faulty):
    # The first few requests through the edge pass (so the confirm step can), then every one is a 500.
    fv = faulty("5xx-after-flip", pass_first=10)
    with edge_load(stack) as load:
        r = stack.run("switch", fv.version)
        during = load.result()
    assert r.returncode == 5, r.stderr[-2000:]
    line = one_line_error(r.stderr)
    assert "reverted" in line and f"back on {LIVE_VERSION}" in line
    # Only the candidate failed anyone, and only with its own 5xx (no refused or reset connection).
    errors = {e for k in ("fresh", "keepalive") for e in during.kind(k)["errors"]}
    assert errors <= {"HTTP 500"}, during.failures()[:5]
    assert set(during.answers()) <= {LIVE_VERSION, fv.version}
    # After the flip back: every request served by the live version again.
    with edge_load(stack, duration_s=3) as after:
        after.wait(10)
    assert_live_kept_serving(stack, after)
    entry = last_entry(stack, fv.version)
    # The confirm step passed (its first answers were good); the watch window is what caught the 5xx.
    assert entry["outcome"] == "reverted" and entry["reason"].startswith("watch: error rate"), entry["reason"]
    assert "reverted at watch" in line
    assert_failed_digest_listed(stack, fv)
    assert_candidate_stopped(stack)


# -- the registry or the engine goes away mid-switch -----------------------------------------------

def copy_of_live(stack: Stack, client, version: str, repository: str) -> str:
    """Record `version` as the live version's image pushed under a new name; return its digest.
    (It can never pass the confirm step, which wants /v1/version to name it: these tests stop earlier.)"""
    folder = copy_version_dir(stack.versions_dir, stack.versions_dir, LIVE_VERSION, version)
    ledger = stack.ledger()
    try:
        base = ledger.build(ledger.latest_push(LIVE_VERSION).build_id)
        client.images.get(base.image_id).tag(repository, version)
        digest = push_image(client, repository, version)
        build = ledger.record_build(version=version, variant=base.variant, image_id=base.image_id,
                                    manifest_sha256=manifest_sha256(folder), git_commit=None, size_bytes=None,
                                    golden=base.golden)
        ledger.record_push(version=version, build_id=build.id, repository=repository, tag=version, digest=digest)
    finally:
        ledger.close()
    return digest


def test_the_registry_going_away_mid_switch_leaves_the_live_version_serving(stack, own_registry, engine_client):
    """A candidate only our own registry has: resolve sees it, then the registry stops before the pull."""
    version = "v5.5.3-registrygone"
    repository = f"{own_registry.host}/aads-faults"
    digest = copy_of_live(stack, engine_client, version, repository)
    # Only the registry holds it under this name now (tag and digest reference gone): the switch must pull.
    for ref in (f"{repository}:{version}", f"{repository}@{digest}"):
        try:  # removing the last tag of a repository drops its digest reference too
            engine_client.images.remove(ref, noprune=True)
        except ImageNotFound:
            pass
    with pytest.raises(ImageNotFound):
        engine_client.images.get(f"{repository}@{digest}")
    with edge_load(stack) as load:
        proc = stack.start("switch", version, env={"AADS_PAUSE_AT_STEP": "start", "AADS_PAUSE_SECONDS": "5"})
        stack.wait_for_step(proc, "start", timeout=120)
        own_registry.stop()
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 5, err[-2000:]
    line = one_line_error(err)
    assert "failed at start" in line and "pull" in line and f"{LIVE_VERSION} keeps serving" in line
    assert_live_kept_serving(stack, load)
    entry = last_entry(stack, version)
    assert entry["outcome"] == "failed" and "pull" in entry["reason"]
    own_registry.start()  # back, as the fixture expects


class EngineSocketProxy:
    """A unix socket that forwards to the real engine until stopped: the engine going away, as the
    orchestrator process (DOCKER_HOST=unix://<this>) sees it, without touching the shared engine."""

    def __init__(self, path: Path, upstream: str = "/var/run/docker.sock"):
        self.path, self.upstream = path, upstream
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(64)
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            engine.connect(self.upstream)
            with self.lock:
                if self.stopped:
                    client.close()
                    engine.close()
                    return
                self.conns += [client, engine]
            for a, b in ((client, engine), (engine, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            conns, self.conns = self.conns, []
        self.server.close()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        if self.path.exists():
            self.path.unlink()


def test_the_engine_going_away_mid_switch_leaves_the_live_version_serving(stack, tmp_path, engine_client):
    """The orchestrator talks to the engine through a socket we close when the switch enters `start`
    (the shared engine itself keeps running: other work on it is not disturbed)."""
    if not Path("/var/run/docker.sock").exists():
        pytest.skip("the engine is not on /var/run/docker.sock; the proxy needs its socket")
    version = "v5.5.3-enginegone"
    copy_of_live(stack, engine_client, version, stack.registry)
    proxy = EngineSocketProxy(tmp_path / "engine.sock")
    env = {"DOCKER_HOST": f"unix://{proxy.path}", "AADS_PAUSE_AT_STEP": "start", "AADS_PAUSE_SECONDS": "5"}
    try:
        with edge_load(stack) as load:
            proc = stack.start("switch", version, env=env)
            stack.wait_for_step(proc, "start", timeout=120)
            proxy.stop()
            out, err = proc.communicate(timeout=300)
    finally:
        proxy.stop()
    assert proc.returncode != 0, err[-2000:]
    line = one_line_error(err)
    assert "failed at start" in line and f"{LIVE_VERSION} keeps serving" in line
    assert_live_kept_serving(stack, load)
    entry = last_entry(stack, version)
    assert entry["outcome"] == "failed" and entry["reason"].startswith("start:")
    # With the engine back, the next command sees a clean target.
    status = stack.json("status")
    assert status["live"]["version"] == LIVE_VERSION and status["drift"] == []


def test_an_unreachable_engine_is_one_clear_line_and_no_half_written_state(stack, tmp_path):
    dead = tmp_path / "nothing-listens-here.sock"
    with edge_load(stack) as load:
        r = stack.run("switch", "v9.9.9-anything", env={"DOCKER_HOST": f"unix://{dead}"})
    assert r.returncode != 0
    assert "unreachable" in one_line_error(r.stderr)
    assert_live_kept_serving(stack, load)
    assert stack.running_switch() is None          # no switch left half-recorded
    assert stack.live().version == LIVE_VERSION
