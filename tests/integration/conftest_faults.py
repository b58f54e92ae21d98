"""Fixtures for the compose fault and crash tests (loaded with `pytest_plugins`).

Each test module gets its own compose stack: its own target name, compose project
(`aadstest-<name>-<random>`), edge and slot ports on free 127.0.0.1 ports, its own state dir
holding a copy of the session's test ledger (so faulty versions never show up in other tests'
`list`), and a versions dir holding copies of the real version folders (faulty versions are
added there). The orchestrator always runs as a separate process (`python -m orchestrator`),
so tests can `kill -9` it, or point its DOCKER_HOST at a dead socket.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import yaml

from orchestrator import api_keys
from orchestrator.ledger import LEDGER_FILE
from tests.scratch_host import ScratchHost

REPO = Path(__file__).resolve().parents[2]
LIVE_VERSION = "v5.5.3-performance"
OTHER_VERSION = "v5.5.4-dinov3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_ledger(src_state_dir: Path, dst_state_dir: Path) -> None:
    """A consistent copy of the session ledger (SQLite backup API: safe while others write)."""
    dst_state_dir.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(Path(src_state_dir) / LEDGER_FILE)
    dst = sqlite3.connect(dst_state_dir / LEDGER_FILE)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


@dataclass(kw_only=True)
class Stack(ScratchHost):
    """One compose target of our own, and the orchestrator CLI pointed at it."""

    name: str                       # target name
    project: str                    # compose project name
    edge_port: int
    registry: str

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    @property
    def api_headers(self) -> dict[str, str]:
        """The target's API key (its key file is made by the first `up`), as the orchestrator sends it."""
        keys = api_keys.read_keys(self.state_dir / "compose" / self.name / api_keys.KEYS_FILE)
        return {"X-API-Key": api_keys.own_key(keys)}

    def edge_version(self, timeout: float = 5) -> str:
        r = requests.get(f"{self.edge_url}/v1/version", timeout=timeout, headers=self.api_headers)
        r.raise_for_status()
        return r.json()["version"]

    def live(self) -> Any:
        ledger = self.ledger()
        try:
            return ledger.live(self.name)
        finally:
            ledger.close()

    def history(self) -> list[dict[str, Any]]:
        return self.json("history")["entries"]

    def running_switch(self) -> Any:
        ledger = self.ledger()
        try:
            unfinished = ledger.unfinished_switches(self.name)
            return unfinished[-1] if unfinished else None
        finally:
            ledger.close()

    def wait_for_step(self, proc: subprocess.Popen, step: str, timeout: float = 300) -> Any:
        """Wait until the running switch has entered `step` (the ledger says so before doing it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sw = self.running_switch()
            if sw is not None and sw.step == step:
                return sw
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"orchestrator ended (rc {proc.returncode}) before step {step}: {err[-2000:]}")
            time.sleep(0.05)
        raise AssertionError(f"the switch never reached step {step} within {timeout:g}s")

    def wait_for_file(self, proc: subprocess.Popen, path: Path, timeout: float = 300) -> None:
        """Wait until the switch wrote `path` (its pause hook does at a point inside a step)."""
        deadline = time.monotonic() + timeout
        while not path.exists():
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"orchestrator ended (rc {proc.returncode}) before writing {path}: {err[-2000:]}")
            assert time.monotonic() < deadline, f"the switch never wrote {path} within {timeout:g}s"
            time.sleep(0.05)

    def containers(self) -> list[Any]:
        import docker
        client = docker.from_env()
        return client.containers.list(all=True, filters={"label": f"com.docker.compose.project={self.project}"})

    def down(self) -> None:
        """Remove everything of this compose project (containers, networks, volumes), nothing else."""
        import docker
        from docker.errors import APIError, NotFound
        client = docker.from_env()
        label = {"label": f"com.docker.compose.project={self.project}"}
        for c in client.containers.list(all=True, filters=label):
            try:
                c.remove(force=True, v=True)
            except (APIError, NotFound):
                pass
        for n in client.networks.list(filters=label):
            try:
                n.remove()
            except (APIError, NotFound):
                pass
        for v in client.volumes.list(filters=label):
            try:
                v.remove(force=True)
            except (APIError, NotFound):
                pass


def make_stack(tmp_root: Path, *, name: str, session_state_dir: Path, registry: str,
               ready_timeout_s: float = 240, watch_s: float = 3, target_extra: dict[str, Any] | None = None) -> Stack:
    """Write the config, copy the ledger and the version folders; no container yet. Monitoring
    (prometheus + pushgateway) is off unless `target_extra` turns it on (tests/integration/test_canary_switch.py)."""
    suffix = secrets.token_hex(3)
    stack = Stack(name=name, project=f"aadstest-{name}-{suffix}", root=tmp_root, edge_port=free_port(),
                  registry=registry)
    copy_ledger(session_state_dir, stack.state_dir)
    shutil.copytree(REPO / "versions", stack.versions_dir)
    config = {
        "registry": registry,
        "state_dir": str(stack.state_dir),
        "versions_dir": str(stack.versions_dir),
        "models_dir": str(REPO / "build" / "models"),
        "default_target": name,
        "targets": {name: {
            "kind": "compose", "project": stack.project, "compose_file": str(REPO / "compose" / "compose.yaml"),
            "edge_host": "127.0.0.1", "edge_port": stack.edge_port,
            "blue_port": free_port(), "green_port": free_port(),
            "ready_timeout_s": ready_timeout_s, "watch_s": watch_s, "monitoring": False,
            **(target_extra or {}),
        }},
    }
    stack.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return stack


def kill9(proc: subprocess.Popen) -> None:
    """kill -9 of the orchestrator process we started (by its pid, nothing else)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


def one_line_error(stderr: str) -> str:
    """The last stderr line (progress lines may come before it); it must be the `error: ...` line."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    assert "Traceback" not in stderr, stderr[-3000:]
    assert lines[-1].startswith("error: "), stderr[-3000:]
    return lines[-1]


# -- a registry process of our own (for the registry-goes-away test) ------------------------------

@dataclass
class OwnRegistry:
    port: int
    config: Path
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.config)], stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://{self.host}/v2/", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"docker-registry exited: {self.log.read_text()[-1000:]}")
            time.sleep(0.2)
        raise AssertionError(f"docker-registry on {self.host} not up after {timeout:g}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[OwnRegistry]:
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry is not installed (make engine installs it)")
    port = free_port()
    data = tmp_path / "registry-data"
    data.mkdir()
    config = tmp_path / "registry.yml"
    config.write_text(yaml.safe_dump({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(data)}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }))
    reg = OwnRegistry(port=port, config=config, log=tmp_path / "registry.log")
    reg.start()
    yield reg
    reg.stop()


# -- the engine and the session's built versions -------------------------------------------------

@pytest.fixture(scope="session")
def engine_client():
    """A docker-py client; skip only when no engine can be reached."""
    import docker
    from docker.errors import DockerException
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as e:
        pytest.skip(f"no Docker engine reachable: {e}")
    return client


@dataclass(frozen=True)
class FaultSession:
    state_dir: Path      # the session's test ledger: both versions built and pushed
    repository: str      # the test registry repository they were pushed to


@pytest.fixture(scope="module")
def fault_session(built_versions) -> FaultSession:
    """What the fault and crash stacks start from: the images helper's session-built versions."""
    return FaultSession(state_dir=Path(built_versions.state_dir), repository=built_versions.repository)
