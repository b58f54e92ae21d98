"""Fixtures of the monitoring suites: Debian's real prometheus/promtool (scripts/prometheus_tools.sh
fetches them once into build/tools/prometheus) and a real Prometheus scraping real serving processes
(`python -m serving` on tiny model sets), with the repository's rules loaded.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from tests.processes import wait_process_ready

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prometheus_tools() -> Path:
    """The folder holding `prometheus` and `promtool` (fetched from Debian's package when missing)."""
    env = {**os.environ, "AADS_PROMETHEUS_TOOLS": os.environ.get("AADS_PROMETHEUS_TOOLS",
                                                                  str(REPO / "build/tools/prometheus"))}
    r = subprocess.run(["bash", str(REPO / "scripts/prometheus_tools.sh")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300, check=False)
    if r.returncode != 0:
        pytest.fail(f"prometheus tools unavailable: {r.stderr.strip()[-500:]}")
    path = Path(r.stdout.strip().splitlines()[-1])
    return path if path.is_absolute() else REPO / path


@pytest.fixture(scope="session")
def demo_model_set():
    """Callable: demo_model_set(version) -> the demo set in build/models (`make models`), whose
    decisions are meaningful (the tiny sets' random backbones send most leaves to review)."""
    from tests.conftest import VERSIONS_DIR, ModelSet

    models = Path(os.environ.get("AADS_TEST_MODELS_DIR") or REPO / "build" / "models")

    def get(version: str) -> ModelSet:
        path = models / version
        if not (path / "model_set.json").is_file():
            pytest.fail(f"the demo model set {path} is missing: run `make models`")
        family = "dinov3" if "dinov3" in version else "dinov2"
        return ModelSet(family, version, VERSIONS_DIR / version, path)

    return get


@dataclass
class ServingProcess:
    name: str
    url: str
    proc: subprocess.Popen
    port: int

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_serving(model_set, name: str, **env: str) -> ServingProcess:
    port = free_port()
    environment = {
        **os.environ, "AADS_HOST": "127.0.0.1", "AADS_PORT": str(port),
        "AADS_MODEL_DIR": str(model_set.path), "AADS_MANIFEST_DIR": str(model_set.version_dir),
        "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "AADS_LOG_LEVEL": "warning",
        # several services share the test machine's cores: one thread each keeps latency steady
        "OMP_NUM_THREADS": "1", **env,
    }
    proc = subprocess.Popen([sys.executable, "-m", "serving"], cwd=REPO, env=environment,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return ServingProcess(name, f"http://127.0.0.1:{port}", proc, port)


def wait_ready(service: ServingProcess, timeout: float = 180) -> None:
    wait_process_ready(service.url, service.proc, timeout, service.name)


def scrape_config(targets: dict[str, int], interval_s: int = 1) -> dict:
    """The shipped monitoring/prometheus.yml with its slot job pointed at host processes
    (`slot` label -> port), a short interval for the test, and the rules by absolute path."""
    doc = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    doc["global"].update(scrape_interval=f"{interval_s}s", scrape_timeout=f"{interval_s}s",
                         evaluation_interval=f"{interval_s}s")
    doc["rule_files"] = [str(p) for p in sorted((MONITORING / "rules").glob("*.yml"))]
    jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
    slots = jobs["aads-slots"]
    slots["static_configs"] = [{"targets": [f"127.0.0.1:{port}"], "labels": {"slot": slot}}
                               for slot, port in targets.items()]
    doc["scrape_configs"] = [slots]
    return doc


@dataclass
class PrometheusServer:
    url: str
    proc: subprocess.Popen
    log: Path
    extra: dict = field(default_factory=dict)

    def wait_targets_up(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = httpx.get(f"{self.url}/api/v1/query", params={"query": 'sum(up{job="aads-slots"})'}, timeout=5)
            result = r.json()["data"]["result"]
            if result and float(result[0]["value"][1]) >= count:
                return
            time.sleep(0.5)
        pytest.fail(f"Prometheus did not see {count} slots up: {self.log.read_text()[-1500:]}")


@pytest.fixture(scope="module")
def run_prometheus(prometheus_tools, tmp_path_factory) -> Iterator:
    servers: list[PrometheusServer] = []

    def start(targets: dict[str, int]) -> PrometheusServer:
        work = tmp_path_factory.mktemp("prometheus")
        config = work / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(targets)))
        port = free_port()
        log = work / "prometheus.log"
        proc = subprocess.Popen(
            [str(prometheus_tools / "prometheus"), f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=log.open("w"), stderr=subprocess.STDOUT)
        server = PrometheusServer(f"http://127.0.0.1:{port}", proc, log)
        servers.append(server)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited: {log.read_text()[-1500:]}")
            try:
                if httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        pytest.fail(f"prometheus did not get ready: {log.read_text()[-1500:]}")

    yield start
    for server in servers:
        server.proc.terminate()
        try:
            server.proc.wait(20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
