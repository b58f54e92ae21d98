"""Compose CLI detection and argv builders, the compose files both CLIs must accept, and the
small pure helpers of the compose backend (GPU room, history's success rate). No engine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestrator.backends.compose import compose_cli, gpu_room, stack
from orchestrator.backends.compose.compose_cli import V1, V2, ComposeProject, Flavor
from orchestrator.errors import ConfigError, EngineError

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose" / "compose.yaml"


@pytest.fixture(autouse=True)
def _fresh_detect():
    compose_cli.detect.cache_clear()
    yield
    compose_cli.detect.cache_clear()


def project(flavor: Flavor = V2) -> ComposeProject:
    return ComposeProject(flavor, "aadstest", ("/r/compose/compose.yaml",), "/s/compose.env")


def test_argv_v2():
    assert project(V2).up("green") == [
        "docker", "compose", "--project-name", "aadstest", "--file", "/r/compose/compose.yaml",
        "--env-file", "/s/compose.env", "up", "--detach", "--no-deps", "--no-build", "green"]


def test_argv_v1_is_the_same_command_line_on_docker_compose():
    assert project(V1).stop("blue", timeout_s=10) == [
        "docker-compose", "--project-name", "aadstest", "--file", "/r/compose/compose.yaml",
        "--env-file", "/s/compose.env", "stop", "--timeout", "10", "blue"]


def test_other_builders():
    p = project()
    assert p.up("edge", recreate=True)[-2:] == ["--force-recreate", "edge"]
    assert p.rm("blue")[-4:] == ["rm", "--force", "--stop", "blue"]
    assert p.down()[-5:] == ["down", "--volumes", "--remove-orphans", "--timeout", "10"]
    assert p.config()[-2:] == ["config", "--quiet"]


def test_project_for_adds_the_gpu_override_only_with_gpus(tmp_path):
    f = tmp_path / "compose" / "compose.yaml"
    assert compose_cli.project_for(V2, "p", f, tmp_path / "e", gpu=False).files == (str(f),)
    assert compose_cli.project_for(V2, "p", f, tmp_path / "e", gpu=True).files == (
        str(f), str(tmp_path / "compose" / "gpu.yaml"))


def test_detect_prefers_v2_and_honours_aads_compose(monkeypatch):
    answers = {("docker", "compose"): "2.26.1", ("docker-compose",): "1.29.2"}
    monkeypatch.setattr(compose_cli, "_version_of", lambda f: answers.get(f.base))
    assert compose_cli.detect("").name == "v2"
    compose_cli.detect.cache_clear()
    assert compose_cli.detect("v1") == Flavor("v1", ("docker-compose",), "1.29.2")
    compose_cli.detect.cache_clear()
    monkeypatch.setenv("AADS_COMPOSE", "v1")
    assert compose_cli.detect().name == "v1"


def test_detect_falls_back_to_v1_and_fails_clearly(monkeypatch):
    monkeypatch.setattr(compose_cli, "_version_of", lambda f: "1.29.2" if f.base == V1.base else None)
    assert compose_cli.detect("").name == "v1"
    compose_cli.detect.cache_clear()
    with pytest.raises(EngineError, match="AADS_COMPOSE=v2"):
        compose_cli.detect("v2")
    compose_cli.detect.cache_clear()
    monkeypatch.setattr(compose_cli, "_version_of", lambda f: None)
    with pytest.raises(EngineError, match="neither"):
        compose_cli.detect("")
    with pytest.raises(ConfigError, match="v1 or v2"):
        compose_cli.detect("v3")


def test_run_reports_the_last_lines_of_a_failure():
    with pytest.raises(EngineError, match="boom"):
        compose_cli.run(["sh", "-c", "echo starting; echo boom >&2; exit 3"])
    assert compose_cli.run(["sh", "-c", "echo fine"]) == "fine\n"
    with pytest.raises(EngineError, match="not installed"):
        compose_cli.run(["/nonexistent/docker-compose", "version"])


def test_the_compose_file_is_plain_compose_spec():
    doc = yaml.safe_load(COMPOSE.read_text())
    assert "version" not in doc and "name" not in doc  # v1 1.29 and v2 both accept it
    assert set(doc["services"]) == {"edge", "blue", "green", "prometheus", "pushgateway"}
    for name in ("prometheus", "pushgateway"):  # monitoring: published on 127.0.0.1 only, hardened too
        svc = doc["services"][name]
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"] and svc["ports"][0].startswith("127.0.0.1:")
    for slot in ("blue", "green"):
        svc = doc["services"][slot]
        assert svc["read_only"] is True and any(t.startswith("/tmp") for t in svc["tmpfs"])
        assert "ready" in " ".join(svc["healthcheck"]["test"])
        assert svc["mem_limit"] and svc["cpus"]
        assert svc["ports"][0].startswith("127.0.0.1:")
    body = "\n".join(ln for ln in COMPOSE.read_text().splitlines() if not ln.lstrip().startswith("#"))
    assert "!reset" not in body and "develop:" not in body


ENV = {"BLUE_IMAGE": "img@sha256:" + "a" * 64, "GREEN_IMAGE": "img@sha256:" + "b" * 64,
       "EDGE_IMAGE": "aads-edge:test", "EDGE_CONFIG_DIR": "/tmp/edge", "EDGE_PORT": "18080",
       "SLOT_API_KEYS": "orchestrator:0123456789abcdef"}


@pytest.mark.parametrize("flavor", [V2, V1], ids=["v2", "v1"])
@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_both_compose_clis_accept_the_files(tmp_path, flavor, gpu):
    if shutil.which(flavor.base[0]) is None or compose_cli._version_of(flavor) is None:
        pytest.skip(f"{' '.join(flavor.base)} is not installed here")
    env = tmp_path / "compose.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in ENV.items()))
    p = compose_cli.project_for(flavor, "aadstest-config", COMPOSE, env, gpu)
    out = subprocess.run(p.argv("config"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load(out.stdout)
    assert doc["services"]["green"]["image"] == ENV["GREEN_IMAGE"]
    ports = doc["services"]["edge"]["ports"][0]
    assert "18080" in str(ports) and "127.0.0.1" in str(ports)
    has_gpu = "devices" in str(doc["services"]["blue"].get("deploy", {}))
    assert has_gpu == gpu
    for name in ("edge", "blue", "green"):  # both CLIs keep the hardening
        svc = doc["services"][name]
        assert svc["cap_drop"] == ["ALL"] and svc["security_opt"] == ["no-new-privileges:true"], svc
        assert int(svc["pids_limit"]) > 0
    assert doc["services"]["blue"]["environment"]["AADS_API_KEYS"] == ENV["SLOT_API_KEYS"]


def test_compose_refuses_a_slot_without_the_key_variable(tmp_path):
    flavor = V2 if compose_cli._version_of(V2) else V1
    if compose_cli._version_of(flavor) is None:
        pytest.skip("no compose CLI here")
    env = tmp_path / "compose.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in ENV.items() if k != "SLOT_API_KEYS"))
    with pytest.raises(EngineError, match="SLOT_API_KEYS"):
        compose_cli.run(compose_cli.project_for(flavor, "aadstest-config", COMPOSE, env, False).config())


def test_a_missing_slot_image_is_a_clear_compose_error(tmp_path):
    flavor = V2 if compose_cli._version_of(V2) else V1
    if compose_cli._version_of(flavor) is None:
        pytest.skip("no compose CLI here")
    env = tmp_path / "compose.env"
    env.write_text("EDGE_CONFIG_DIR=/tmp\nGREEN_IMAGE=x\nSLOT_API_KEYS=\n")
    with pytest.raises(EngineError, match="BLUE_IMAGE must name"):
        compose_cli.run(compose_cli.project_for(flavor, "aadstest-config", COMPOSE, env, False).config())


# -- pure helpers of the compose backend ---------------------------------------------------------

def test_parse_gpu_memory_takes_the_fullest_gpu():
    assert gpu_room.parse_gpu_memory("40000, 81559\n1200, 81559\n") == (1200, 81559)
    assert gpu_room.parse_gpu_memory("") is None
    assert gpu_room.parse_gpu_memory("[N/A], [N/A]\n") is None


def test_gpu_room_verdict():
    assert gpu_room.gpu_room_verdict(free_mib=60000, total_mib=80000) is None   # 20 GB used, 60 free
    verdict = gpu_room.gpu_room_verdict(free_mib=10000, total_mib=80000)      # 70 GB used
    assert verdict and "10000 MiB free" in verdict and "blue and green" in verdict


def test_other_slot():
    assert stack.other("blue") == "green" and stack.other("green") == "blue"
    assert stack.other(None) == "blue"


def test_history_success_rate_counts_switches_not_noops(tmp_path):
    from orchestrator.context import Context
    from orchestrator.ledger import Ledger
    from orchestrator.switchflow import history

    ctx = Context()
    ctx.__dict__["ledger"] = Ledger(tmp_path)  # cached_property: a ledger of our own
    for outcome in ("succeeded", "noop", "failed", "succeeded", "reverted", "succeeded"):
        sw = ctx.ledger.begin_switch(target="t", action="switch", to_version="v5.5.4-dinov3",
                                     from_version="v5.5.3-performance", digest="sha256:" + "c" * 64, command=None)
        ctx.ledger.record_phase(sw.id, "flip", 0.25)
        ctx.ledger.finish_switch(sw.id, outcome, None if outcome == "succeeded" else "why")
    ctx.ledger.mark_failed_digest(digest="sha256:" + "c" * 64, version="v5.5.4-dinov3", target="t", reason="x")
    h = history(ctx, "t")
    assert [e["outcome"] for e in h["entries"]] == ["succeeded", "noop", "failed", "succeeded", "reverted",
                                                    "succeeded"]
    assert h["counted"] == 5 and h["succeeded"] == 3 and h["success_rate"] == 0.6
    assert h["entries"][0]["phases"] == {"flip": 0.25} and h["entries"][0]["failed_digest"] is True
    assert history(ctx, "t", limit=2)["success_rate"] == 0.5       # over the shown range only
    assert history(ctx, "other")["success_rate"] is None
