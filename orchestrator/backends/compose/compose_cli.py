"""`docker compose` (v2) or `docker-compose` (v1): which one this host has, and the argv to run.

Builders return argv lists and run nothing (kamal-style); `run()` is the one runner. The compose
CLI only creates, starts and stops the project's containers; the orchestrator reads their state
through the engine API by the labels both versions set (`com.docker.compose.project/service`).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from orchestrator.errors import ConfigError, EngineError

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


@dataclass(frozen=True)
class Flavor:
    """One compose CLI: how to call it, and which major version it is."""

    name: str               # "v2" | "v1"
    base: tuple[str, ...]   # ("docker", "compose") | ("docker-compose",)
    version: str = ""

    def describe(self) -> str:
        return f"{' '.join(self.base)} {self.version}".strip()


V2 = Flavor("v2", ("docker", "compose"))
V1 = Flavor("v1", ("docker-compose",))


def _version_of(flavor: Flavor) -> str | None:
    try:
        r = subprocess.run([*flavor.base, "version", "--short"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


@lru_cache(maxsize=4)
def detect(forced: str | None = None) -> Flavor:
    """The compose CLI to use: AADS_COMPOSE=v1|v2 forces one, else v2 where present, else v1."""
    forced = (forced if forced is not None else os.environ.get("AADS_COMPOSE", "")).strip().lower()
    if forced and forced not in ("v1", "v2"):
        raise ConfigError(f"AADS_COMPOSE must be v1 or v2, not {forced!r}")
    order = {"v1": [V1], "v2": [V2], "": [V2, V1]}[forced]
    for flavor in order:
        version = _version_of(flavor)
        if version:
            return Flavor(flavor.name, flavor.base, version)
    if forced:
        raise EngineError(f"AADS_COMPOSE={forced} but `{' '.join(order[0].base)} version` fails: is it installed?")
    raise EngineError("neither `docker compose` (v2) nor `docker-compose` (v1) works here: install one "
                      "(`make engine` does)")


@dataclass(frozen=True)
class ComposeProject:
    """The argv builders for one compose project (name + files + env file)."""

    flavor: Flavor
    project: str
    files: tuple[str, ...]
    env_file: str

    def argv(self, *args: str) -> list[str]:
        out = [*self.flavor.base, "--project-name", self.project]
        for f in self.files:
            out += ["--file", f]
        out += ["--env-file", self.env_file]
        return out + list(args)

    def up(self, *services: str, recreate: bool = False) -> list[str]:
        """Start `services` only (never their neighbours), from images already on the host or in the registry."""
        args = ["up", "--detach", "--no-deps", "--no-build"]
        if recreate:
            args.append("--force-recreate")
        return self.argv(*args, *services)

    def stop(self, *services: str, timeout_s: int = 30) -> list[str]:
        return self.argv("stop", "--timeout", str(timeout_s), *services)

    def rm(self, *services: str) -> list[str]:
        return self.argv("rm", "--force", "--stop", *services)

    def down(self) -> list[str]:
        return self.argv("down", "--volumes", "--remove-orphans", "--timeout", "10")

    def config(self) -> list[str]:
        return self.argv("config", "--quiet")


def project_for(flavor: Flavor, project: str, compose_file: Path, env_file: Path, gpu: bool) -> ComposeProject:
    files = [str(compose_file)]
    if gpu:
        files.append(str(compose_file.parent / "gpu.yaml"))
    return ComposeProject(flavor, project, tuple(files), str(env_file))


def run(argv: list[str], timeout_s: float = 900) -> str:
    """Run one compose argv; its output, or EngineError with the last lines of its complaint."""
    env = dict(os.environ)
    env.pop("COMPOSE_FILE", None)          # the argv names the files; a stray env var must not add more
    env.pop("COMPOSE_PROJECT_NAME", None)
    env.setdefault("COMPOSE_ANSI", "never")
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env)
    except FileNotFoundError:
        raise EngineError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise EngineError(f"`{' '.join(argv[:2])} ... {' '.join(argv[-3:])}` took over {timeout_s:g}s") from None
    if r.returncode != 0:
        lines = [ln.strip() for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
        tail = " | ".join(lines[-3:]) or f"exit {r.returncode}"
        raise EngineError(f"compose failed ({' '.join(a for a in argv if not a.startswith('/'))[:160]}): {tail}")
    return r.stdout
