"""The Docker engine, as the orchestrator uses it: one client, and short-lived probe containers.

`docker_client()` is the only way the orchestrator reaches the engine, so "engine unreachable"
is one clear line everywhere. `probe_container()` runs an image the way a smoke test needs it
(read-only root, tmpfs /tmp, port 8000 published on a free 127.0.0.1 port) and always removes it.
"""

from __future__ import annotations

import os
import secrets
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from orchestrator.errors import EngineError
from orchestrator.probe import health_failure

SERVING_PORT = 8000


def docker_client(timeout: float = 600) -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST (default: the local socket), checked with a ping.

    Raises:
        EngineError: the engine cannot be reached; the message says how to start one.
    """
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except DockerException as e:
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        reason = str(e).split("(")[0].strip() or type(e).__name__
        raise EngineError(f"Docker engine at {where} is unreachable ({reason}): start one with `make engine`") from None
    return client


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def unique_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Probe:
    """A running probe container and where to reach it."""

    container: "docker.models.containers.Container"
    base_url: str

    def exited(self) -> str | None:
        """Why the container is no longer running (for wait_ready's abort), or None while it runs."""
        try:
            self.container.reload()
        except NotFound:
            return "the container was removed"
        if self.container.status in ("exited", "dead"):
            state = self.container.attrs.get("State", {})
            tail = self.container.logs(tail=5).decode(errors="replace").strip().splitlines()
            last = tail[-1] if tail else "no output"
            return f"the container exited with code {state.get('ExitCode')} ({last})"
        return None

    def problem(self) -> str | None:
        """A reason to stop waiting for /ready: the container exited, or /health says loading failed."""
        return self.exited() or health_failure(self.base_url)

    def logs(self, tail: int = 40) -> str:
        try:
            return self.container.logs(tail=tail).decode(errors="replace")
        except DockerException:
            return ""


@contextmanager
def probe_container(client: docker.DockerClient, image: str, *, name_prefix: str = "aads-probe",
                    env: dict[str, str] | None = None, read_only: bool = True) -> Iterator[Probe]:
    """Run `image` with the service port on a free 127.0.0.1 port; remove the container afterwards.

    Runs as the image's own (non-root) user with a read-only root filesystem and a tmpfs /tmp,
    as the image contract promises it works.
    """
    port = free_port()
    name = unique_name(name_prefix)
    try:
        container = client.containers.run(
            image, detach=True, name=name, read_only=read_only,
            tmpfs={"/tmp": "rw,size=256m,mode=1777"},
            ports={f"{SERVING_PORT}/tcp": ("127.0.0.1", port)},
            environment=env or {}, labels={"aads.probe": "1"},
        )
    except ImageNotFound:
        raise EngineError(f"image {image} is not on this engine") from None
    except APIError as e:
        raise EngineError(f"cannot start {image}: {e.explanation or e}") from None
    try:
        yield Probe(container=container, base_url=f"http://127.0.0.1:{port}")
    finally:
        try:
            container.remove(force=True, v=True)
        except DockerException:
            pass
