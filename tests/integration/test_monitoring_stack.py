"""The compose stack's monitoring on the real engine: the Prometheus image (Debian's package on the
local base), the edge's built-in HAProxy exporter, the pushgateway with the orchestrator's figures,
and canary weights set through the edge's runtime API and seen by Prometheus.

Only edge + prometheus + pushgateway are started (slots are not needed here: the analysis against
real slots runs in tests/monitoring). Ports are free ones; the project name is unique to the run.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import socket
import string
import subprocess
import time
from pathlib import Path

import docker.errors
import httpx
import pytest

from orchestrator.canary import EdgeWeights, PrometheusClient
from orchestrator.ledger import Ledger
from orchestrator.ledger_metrics import ledger_figures, push

pytestmark = [pytest.mark.engine, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "aads-base:bookworm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(engine, folder: Path, name: str) -> str:
    h = hashlib.sha256(BASE_IMAGE.encode())
    for f in sorted(folder.iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    tag = f"{name}:{h.hexdigest()[:12]}"
    try:
        engine.images.get(tag)
    except docker.errors.ImageNotFound:
        engine.images.build(path=str(folder), tag=tag, buildargs={"BASE_IMAGE": BASE_IMAGE}, rm=True, forcerm=True)
    return tag


def compose_argv() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("no docker compose")


def wait_for(what: str, check, timeout: float = 90, expect=None):
    """Poll `check()` until it is truthy (or equals `expect`); fail naming the last answer."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if (last == expect) if expect is not None else last:
                return last
        except (httpx.HTTPError, LookupError, ValueError) as e:
            last = e
        time.sleep(1)
    pytest.fail(f"{what}: not within {timeout}s (last: {last})")


@pytest.fixture(scope="module")
def stack(engine, tmp_path_factory):
    edge_image = build(engine, REPO / "images" / "edge", "aads-edge")
    prometheus_image = build(engine, REPO / "images" / "prometheus", "aads-prometheus")
    work = tmp_path_factory.mktemp("monitoring-stack")
    edge_dir = work / "edge"
    edge_dir.mkdir()
    template = (REPO / "images" / "edge" / "haproxy.cfg.tmpl").read_text()
    (edge_dir / "haproxy.cfg").write_text(string.Template(template).substitute(blue_state="", green_state=""))
    (edge_dir / "haproxy.cfg").chmod(0o644)
    ports = {k: _free_port() for k in ("EDGE_PORT", "BLUE_PORT", "GREEN_PORT", "PROMETHEUS_PORT", "PUSHGATEWAY_PORT")}
    env = {"EDGE_IMAGE": edge_image, "PROMETHEUS_IMAGE": prometheus_image, "BASE_IMAGE": BASE_IMAGE,
           "EDGE_CONFIG_DIR": str(edge_dir), "EDGE_HOST": "127.0.0.1", "BLUE_IMAGE": edge_image,
           "GREEN_IMAGE": edge_image, "SLOT_API_KEYS": "", "MONITORING_DIR": str(REPO / "monitoring"),
           **{k: str(v) for k, v in ports.items()}}
    env_file = work / "compose.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    project = f"aadsmon{secrets.token_hex(3)}"
    base = [*compose_argv(), "-p", project, "-f", str(REPO / "compose" / "compose.yaml"), "--env-file", str(env_file)]
    try:
        r = subprocess.run([*base, "up", "--detach", "--no-deps", "--no-build", "edge", "prometheus", "pushgateway"],
                           capture_output=True, text=True, timeout=300, check=False)
        assert r.returncode == 0, r.stderr[-2000:]
        edge = engine.containers.list(filters={"label": [f"com.docker.compose.project={project}",
                                                         "com.docker.compose.service=edge"]})[0]
        yield {"edge": edge, "prometheus": f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}",
               "pushgateway": f"http://127.0.0.1:{ports['PUSHGATEWAY_PORT']}", "work": work}
    finally:
        subprocess.run([*base, "down", "--volumes", "--timeout", "5"], capture_output=True, timeout=300, check=False)


def test_prometheus_runs_with_the_rules_and_bounded_retention(stack):
    url = stack["prometheus"]
    wait_for("prometheus ready", lambda: httpx.get(f"{url}/-/ready", timeout=3).status_code == 200)
    rules = httpx.get(f"{url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert {g["name"] for g in rules} >= {"aads-serving", "aads-orchestrator", "aads-alerts"}
    flags = httpx.get(f"{url}/api/v1/status/flags", timeout=5).json()["data"]
    assert flags["storage.tsdb.retention.time"] in ("7d", "1w") and flags["storage.tsdb.retention.size"] in ("1GB", "1GiB")
    ui = httpx.get(f"{url}/graph", timeout=5, follow_redirects=True)
    assert ui.status_code == 200 and "<html" in ui.text.lower(), (ui.url, ui.status_code)  # the UI is served too


def test_the_edge_exporter_is_scraped_and_canary_weights_show_up(stack):
    weights = EdgeWeights.for_container(stack["edge"])
    assert weights.set_share("blue", "green", 10) == (90, 10)
    assert (weights.get("blue"), weights.get("green")) == (90, 10)
    with PrometheusClient(stack["prometheus"]) as prom:
        wait_for("the edge target up", lambda: prom.value('up{job="aads-edge"}') == 1)
        def exported() -> dict[str, float]:
            return {s.labels["server"]: s.value for s in prom.query('haproxy_server_uweight{proxy="slots"}')}

        wait_for("weights in Prometheus", exported, expect={"blue": 90, "green": 10})
        weights.set_share("blue", "green", 100)
        wait_for("weights after the last step", exported, expect={"blue": 0, "green": 100})
        # slots are not started here: their targets are down, and the no-slot alert is pending/firing
        assert prom.value('sum(up{job="aads-slots"})') == 0


def test_the_orchestrator_figures_reach_prometheus_through_the_pushgateway(stack, tmp_path):
    ledger = Ledger(tmp_path)
    for outcome in ("succeeded", "failed", "succeeded"):
        sw = ledger.begin_switch(target="local", action="switch", to_version="v2", from_version="v1",
                                 digest=None, command="switch v2")
        ledger.finish_switch(sw.id, outcome)
    wait_for("pushgateway ready", lambda: httpx.get(f"{stack['pushgateway']}/-/ready", timeout=3).status_code == 200)
    push(ledger_figures(ledger), stack["pushgateway"], instance="test-host")
    ledger.close()
    with PrometheusClient(stack["prometheus"]) as prom:
        wait_for("switch totals in Prometheus", lambda: prom.value(
            'aads_orchestrator_switches_total{target="local",outcome="succeeded",instance="test-host"}') == 2)
        ratio = wait_for("the success-ratio rule", lambda: prom.value("target:aads_orchestrator_switch_success:ratio"))
        assert ratio == pytest.approx(2 / 3)
