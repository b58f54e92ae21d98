"""Session fixtures of the engine tests: a real Docker engine, the real local registry, and both
versions built and pushed once per session through the real CLI.

Nothing here touches the operator's `.orchestrator/` or the `aads-ulora` repository: the session
gets its own registry repository (`127.0.0.1:5000/aads-test-<random>`), its own state dir and
config file in a temp dir, and removes its local image tags at the end.

    engine            docker.DockerClient; skips ONLY when no engine can be reached
    test_registry     "127.0.0.1:5000/aads-test-<random>" (the registry must answer, or the test fails)
    orchestrator_env  env (dict) that points the CLI at the session's config (AADS_CONFIG=...)
    built_versions    BuiltVersions: .repository, .state_dir, .config_file, .env, and per version
                      built_versions[v] = {"build": {...}, "push": {...}} (the CLI's --json records)
    run_cli           run_cli(*args, env=None, check=True) -> CompletedProcess of `python -m orchestrator`

Warm cache: a session whose layers are already on the engine builds both versions in well under
a minute (every docker step is a cache hit; the golden outputs are recorded again).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
VERSIONS = ("v5.5.3-performance", "v5.5.4-dinov3")
TEST_LABEL = "aads-test.suite=integration"
REGISTRY_HOST = os.environ.get("AADS_TEST_REGISTRY_HOST", "127.0.0.1:5000")
CLI_TIMEOUT_S = 1800
# The demo model sets (`make models`); AADS_TEST_MODELS_DIR may point at other sets of both versions.
MODELS_DIR = Path(os.environ.get("AADS_TEST_MODELS_DIR") or REPO / "build" / "models")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def engine():
    """The Docker engine. Skips only when none can be reached (`make test` starts one first)."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except DockerException as e:
        pytest.skip(f"no Docker engine reachable ({type(e).__name__}); `make engine` starts one")
    return client


@pytest.fixture(scope="session")
def test_registry(engine) -> str:
    """A registry repository unique to this run on the real local registry."""
    try:
        r = requests.get(f"http://{REGISTRY_HOST}/v2/", timeout=5)
    except requests.RequestException as e:
        pytest.fail(f"the engine runs but the registry {REGISTRY_HOST} does not answer ({type(e).__name__}): "
                    f"run `make engine`")
    assert r.status_code in (200, 401), f"registry {REGISTRY_HOST} answered {r.status_code}"
    repository = f"{REGISTRY_HOST}/aads-test-{secrets.token_hex(4)}"
    yield repository
    # Local tags of this run (the images' layers stay in the cache for the next run).
    for image in engine.images.list():
        for tag in image.tags:
            if tag.startswith(repository + ":"):
                try:
                    engine.api.remove_image(tag, noprune=False)
                except Exception:
                    pass


@pytest.fixture(scope="session")
def orchestrator_root(tmp_path_factory, test_registry) -> Path:
    """A temp dir with the session's orchestrator.yaml (state in <root>/state)."""
    root = tmp_path_factory.mktemp("orchestrator")
    config = {
        "registry": test_registry,
        "state_dir": str(root / "state"),
        "versions_dir": str(REPO / "versions"),
        "models_dir": str(MODELS_DIR),
        "default_target": "local",
        "targets": {"local": {
            "kind": "compose", "project": f"aadstest-{secrets.token_hex(3)}",
            "compose_file": str(REPO / "compose" / "compose.yaml"), "edge_host": "127.0.0.1",
            "edge_port": _free_port(), "blue_port": _free_port(), "green_port": _free_port(),
            "monitoring": False,  # never the default 127.0.0.1:9090 in tests
        }},
    }
    (root / "orchestrator.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


@pytest.fixture(scope="session")
def orchestrator_env(orchestrator_root) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AADS_")}
    env.update(AADS_CONFIG=str(orchestrator_root / "orchestrator.yaml"), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    return env


@pytest.fixture(scope="session")
def run_cli(orchestrator_env):
    def run(*args: str, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env or orchestrator_env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"orchestrator {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        return proc
    return run


def demo_models(version: str) -> Path:
    """The demo model set of `version` (`make models` makes it; made here when missing)."""
    out = MODELS_DIR / version
    if not (out / "model_set.json").is_file():
        subprocess.run([sys.executable, "-m", "serving.demo_models", "--version-dir", str(REPO / "versions" / version),
                        "--out", str(out)], cwd=REPO, check=True, timeout=1800)
    return out


@dataclass
class BuiltVersions:
    repository: str
    state_dir: Path
    config_file: Path
    env: dict[str, str]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __getitem__(self, version: str) -> dict[str, Any]:
        return self.records[version]

    def __iter__(self):
        return iter(self.records)

    def image_ref(self, version: str) -> str:
        return self.records[version]["push"]["image_ref"]


@pytest.fixture(scope="session")
def built_versions(engine, test_registry, orchestrator_root, orchestrator_env, run_cli) -> BuiltVersions:
    """Both versions, CPU variant on the demo models, built + pushed through the real CLI, once."""
    result = BuiltVersions(repository=test_registry, state_dir=orchestrator_root / "state",
                           config_file=orchestrator_root / "orchestrator.yaml", env=orchestrator_env)
    for version in VERSIONS:
        demo_models(version)
        # The label makes these images the suite's own: built from the same sources, they would
        # otherwise share their ids with the operator's `make demo` images, and the tests that
        # remove an image (backup round trip, faults) would hit the demo's running containers.
        build = json.loads(run_cli("build", version, "--variant", "cpu", "--label", TEST_LABEL, "--json").stdout)
        push = json.loads(run_cli("push", version, "--json").stdout)
        result.records[version] = {"build": build, "push": push}
    return result
