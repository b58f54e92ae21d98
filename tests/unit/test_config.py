"""orchestrator.yaml + AADS_* overrides: defaults, env, targets, and one clear error per bad input."""

from __future__ import annotations

import pytest

from orchestrator import config
from orchestrator.config import ComposeTarget, KubernetesTarget
from orchestrator.errors import ConfigError


def write(tmp_path, text: str):
    f = tmp_path / "orchestrator.yaml"
    f.write_text(text)
    return f


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config.load(env={})
    assert cfg.registry == "127.0.0.1:5000/aads-ulora"
    assert cfg.registry_host == "127.0.0.1:5000"
    assert cfg.state_path == tmp_path.resolve() / ".orchestrator"
    name, target = cfg.target()
    assert name == "local" and isinstance(target, ComposeTarget)
    assert (target.edge_host, target.edge_port) == ("127.0.0.1", 8080)


def test_file_and_relative_paths(tmp_path):
    f = write(tmp_path, "registry: reg.example:5000/x\nstate_dir: st\nversions_dir: /abs/versions\n")
    cfg = config.load(f, env={})
    assert cfg.registry == "reg.example:5000/x"
    assert cfg.state_path == tmp_path.resolve() / "st"
    assert str(cfg.versions_path) == "/abs/versions"


def test_env_overrides_top_level_and_target_keys(tmp_path):
    f = write(tmp_path, "targets:\n  local: {kind: compose}\n  prod-k8s: {kind: kubernetes, namespace: a}\n")
    env = {"AADS_REGISTRY": "127.0.0.1:5001/other", "AADS_TARGET_LOCAL_EDGE_PORT": "9090",
           "AADS_TARGET_PROD_K8S_NAMESPACE": "b", "AADS_STATE_DIR": "/tmp/s"}
    cfg = config.load(f, env=env)
    assert cfg.registry == "127.0.0.1:5001/other"
    assert str(cfg.state_path) == "/tmp/s"
    assert cfg.target("local")[1].edge_port == 9090
    _, k8s = cfg.target("prod-k8s")
    assert isinstance(k8s, KubernetesTarget) and k8s.namespace == "b"


def test_aads_config_env_names_the_file(tmp_path):
    f = write(tmp_path, "registry: a:1/b\n")
    assert config.load(env={"AADS_CONFIG": str(f)}).registry == "a:1/b"


@pytest.mark.parametrize("text, needle", [
    ("registry: [unclosed\n", "not valid YAML"),
    ("- a list\n", "expected a mapping"),
    ("registy: typo\n", "registy"),
])
def test_bad_files_give_one_line(tmp_path, text, needle):
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, text), env={})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_file_and_unknown_target(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "nope.yaml", env={})
    cfg = config.load(write(tmp_path, "{}\n"), env={})
    with pytest.raises(ConfigError, match="unknown target 'prod'.*configured: local"):
        cfg.target("prod")


def test_bad_target_value_names_the_key(tmp_path):
    cfg = config.load(write(tmp_path, "targets:\n  local: {kind: compose, edge_port: 70000}\n"), env={})
    with pytest.raises(ConfigError, match="target local: edge_port"):
        cfg.target("local")


def test_find_root_walks_up(tmp_path):
    (tmp_path / "versions").mkdir()
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert config.find_root(deep) == tmp_path.resolve()


def test_canary_thresholds_come_from_the_environment_as_json(tmp_path):
    f = write(tmp_path, "targets:\n  local: {kind: compose}\n")
    env = {"AADS_TARGET_LOCAL_CANARY_THRESHOLDS": '{"max_p99_ratio": 2, "min_diagnoses": 5}'}
    assert config.load(f, env=env).target("local")[1].canary_thresholds == {"max_p99_ratio": 2, "min_diagnoses": 5}
    for bad, needle in (("{max_p99_ratio", "must be a mapping"), ('{"max_latency": 2}', "max_latency")):
        cfg = config.load(f, env={"AADS_TARGET_LOCAL_CANARY_THRESHOLDS": bad})
        with pytest.raises(ConfigError, match=needle):
            cfg.target("local")
