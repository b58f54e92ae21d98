"""Secure by default on the compose target: a 0600 key file made at the first `up` reaches the
slots (compose.env, 0600 too), the orchestrator's own probes carry its key, `api_keys: off` is the
documented switch; the shipped compose file and edge config harden every container; status shows
restarts and OOM kills per slot."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from rich.console import Console

from orchestrator import api_keys
from orchestrator.backends.compose import ComposeBackend
from orchestrator.backends.compose.haproxy import EdgeError
from orchestrator.config import ComposeTarget
from orchestrator.context import Context
from orchestrator.errors import UsageError
from serving.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def backend(tmp_path: Path, **target) -> ComposeBackend:
    (tmp_path / "orchestrator.yaml").write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state")}))
    ctx = Context(config_path=str(tmp_path / "orchestrator.yaml"), stderr=Console(file=io.StringIO()))
    return ComposeBackend(ctx, "local", ComposeTarget(compose_file=str(REPO / "compose" / "compose.yaml"), **target))


def env_of(b: ComposeBackend) -> dict[str, str]:
    return b.stack.read_env()


def test_the_first_env_write_makes_a_0600_key_file_and_hands_the_keys_to_the_slots(tmp_path):
    b = backend(tmp_path)
    b.stack.write_env(BLUE_IMAGE="img@sha256:" + "a" * 64)
    assert stat.S_IMODE(os.stat(b.stack.keys_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(b.stack.env_path).st_mode) == 0o600
    keys = api_keys.read_keys(b.stack.keys_path)
    assert [k.key_id for k in keys] == ["orchestrator"] and len(keys[0].secret) >= 32
    value = env_of(b)["SLOT_API_KEYS"]
    # What the slot reads is what the service accepts: the same keys, by the service's own parser.
    assert Settings.from_env({"AADS_API_KEYS": value}).api_keys == keys
    assert b.stack.client_headers == {"X-API-Key": keys[0].secret}
    first = b.stack.keys_path.read_text()
    b.stack.write_env(GREEN_IMAGE="img@sha256:" + "b" * 64)
    assert b.stack.keys_path.read_text() == first  # made once, kept


def test_keys_an_operator_adds_reach_the_slots_at_the_next_start(tmp_path):
    b = backend(tmp_path)
    b.stack.write_env(BLUE_IMAGE="x")
    with open(b.stack.keys_path, "a") as f:
        f.write("mobile-app:mobile-secret-0123456789\n")
    b.stack.write_env(BLUE_IMAGE="x")
    ids = [k.key_id for k in Settings.from_env({"AADS_API_KEYS": env_of(b)["SLOT_API_KEYS"]}).api_keys]
    assert ids == ["orchestrator", "mobile-app"]


def test_api_keys_off_is_the_documented_switch(tmp_path):
    b = backend(tmp_path, api_keys="off")
    b.stack.write_env(BLUE_IMAGE="x")
    assert env_of(b)["SLOT_API_KEYS"] == "" and not b.stack.keys_path.exists() and b.stack.client_headers == {}
    assert ComposeTarget.model_validate(yaml.safe_load("api_keys: off")).api_keys == "off"  # YAML's boolean off


def test_a_key_file_others_may_read_or_a_link_is_refused(tmp_path):
    b = backend(tmp_path)
    b.stack.write_env(BLUE_IMAGE="x")
    os.chmod(b.stack.keys_path, 0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        b.stack.write_env(BLUE_IMAGE="x")
    target = tmp_path / "elsewhere"
    b.stack.keys_path.unlink()
    b.stack.keys_path.symlink_to(target)
    assert not api_keys.ensure_keys_file(b.stack.keys_path)  # never written through a link
    assert not target.exists()
    with pytest.raises(UsageError, match="not a regular file"):
        api_keys.read_keys(b.stack.keys_path)


def compose_services() -> dict:
    return yaml.safe_load((REPO / "compose" / "compose.yaml").read_text())["services"]


@pytest.mark.parametrize("service", ["edge", "blue", "green"])
def test_every_container_drops_all_capabilities_and_privilege_gain_with_a_pids_limit(service):
    svc = compose_services()[service]
    assert svc["cap_drop"] == ["ALL"] and "cap_add" not in svc
    assert "no-new-privileges:true" in svc["security_opt"]
    assert 0 < int(svc["pids_limit"]) <= 1024
    assert svc["read_only"] is True


@pytest.mark.parametrize("service", ["blue", "green"])
def test_slots_require_keys_from_the_orchestrator_and_trust_forwarded_for_from_the_edge_only(service):
    env = compose_services()[service]["environment"]
    assert env["AADS_API_KEYS"].startswith("${SLOT_API_KEYS?")  # unset = compose refuses, never keys off by accident
    assert env["AADS_TRUSTED_PROXIES"] == "edge"


def test_the_edge_bounds_slow_clients_and_sets_forwarded_for():
    cfg = (REPO / "images" / "edge" / "haproxy.cfg.tmpl").read_text()
    lines = [line.split("#")[0].strip() for line in cfg.splitlines()]
    assert any(line.startswith("timeout http-request ") for line in lines)
    assert "option http-buffer-request" in lines
    assert any(line.startswith("maxconn ") for line in lines)
    assert lines.index("http-request del-header X-Forwarded-For") < lines.index("option forwardfor")


def test_status_shows_restarts_and_oom_kills_per_slot(tmp_path, monkeypatch):
    b = backend(tmp_path)
    killed = SimpleNamespace(status="running", attrs={"RestartCount": 3, "State": {"OOMKilled": True, "Health": None},
                                                      "Config": {"Image": "img"}}, labels={})
    monkeypatch.setattr(b.stack, "containers", lambda: {"blue": killed})
    monkeypatch.setattr(b.stack, "edge", lambda: (_ for _ in ()).throw(EdgeError("no edge")))
    monkeypatch.setattr(b, "known_image", lambda c: None)
    monkeypatch.setattr(type(b.stack), "project",
                        property(lambda self: SimpleNamespace(flavor=SimpleNamespace(describe=lambda: "test"))))
    slots = {s["slot"]: s for s in b.status()["slots"]}
    assert (slots["blue"]["restarts"], slots["blue"]["oom_killed"]) == (3, True)
    assert slots["green"]["restarts"] is None


def rendered(overlay: str) -> list[dict]:
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed (the set-up installs it; it renders k8s/ offline)")
    out = subprocess.run([kubectl, "kustomize", str(REPO / "k8s" / "overlays" / overlay)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_k8s_pods_need_the_key_secret_and_a_network_policy_fences_them(overlay):
    docs = rendered(overlay)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "serving")
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-keys")
    assert env["AADS_API_KEYS_FILE"].startswith(mount["mountPath"] + "/")
    volume = next(v for v in pod["volumes"] if v["name"] == "api-keys")
    assert volume["secret"]["secretName"] == "aads-api-keys" and not volume["secret"].get("optional")
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert policy["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items())
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not policy["spec"].get("egress")
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [8000]
