"""The shipped monitoring files, checked by Debian's promtool: config, rules, the rules' unit tests,
and every PromQL expression of the Grafana dashboard (Grafana is not in Debian: the dashboard is JSON)."""

from __future__ import annotations

import json
import re
import subprocess

import yaml

from orchestrator.ledger_metrics import exposition
from serving.metrics import ServiceMetrics

from .conftest import MONITORING

DASHBOARD = MONITORING / "grafana" / "aads-versions.json"
# Grafana's own variables, replaced the way Grafana does before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$version_a": "v5.5.3-performance", "$version_b": "v5.5.4-dinov3", "$__rate_interval": "1m"}


def promtool(tools, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(tools / "promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def test_the_prometheus_config_is_valid(prometheus_tools):
    r = promtool(prometheus_tools, "check", "config", "--syntax-only", str(MONITORING / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
    slots = {c["labels"]["slot"]: c["targets"] for c in jobs["aads-slots"]["static_configs"]}
    assert slots == {"blue": ["blue:8000"], "green": ["green:8000"]}
    assert jobs["aads-edge"]["static_configs"][0]["targets"] == ["edge:8405"]
    assert jobs["aads-orchestrator"]["honor_labels"] is True


def test_the_rules_pass_promtool_check_and_their_unit_tests(prometheus_tools):
    rules = sorted(str(p) for p in (MONITORING / "rules").glob("*.yml"))
    assert rules
    r = promtool(prometheus_tools, "check", "rules", *rules)
    assert r.returncode == 0, r.stdout + r.stderr
    tests = sorted(p.name for p in (MONITORING / "rules" / "tests").glob("*.yml"))
    r = promtool(prometheus_tools, "test", "rules", *tests, cwd=MONITORING / "rules" / "tests")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_promtool_catches_a_broken_rule(prometheus_tools, tmp_path):
    """The check above can fail: a rule with bad PromQL is refused."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - record: x:y\n        expr: sum(rate(x[5m])\n")
    assert promtool(prometheus_tools, "check", "rules", str(bad)).returncode != 0


def dashboard_exprs() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out


def test_the_dashboard_is_well_formed_and_compares_two_versions():
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and doc["uid"] == "aads-versions"
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert {"datasource", "version_a", "version_b"} <= set(variables)
    assert "aads_model_info" in variables["version_a"]["query"]["query"]
    for panel in doc["panels"]:
        assert panel["targets"] and {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
    text = DASHBOARD.read_text()
    assert "$version_a" in text and "$version_b" in text


def test_every_dashboard_expression_parses_and_names_real_series(prometheus_tools, tmp_path):
    exprs = dashboard_exprs()
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:panel_{i}", "expr": expr}
                                                         for i, (_, expr) in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    r = promtool(prometheus_tools, "check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr

    # Every metric a panel reads exists: the service's, the ledger's, the rules', or HAProxy's exporter.
    known = {line.split()[2] for line in ServiceMetrics().render()[0].decode().splitlines() if line.startswith("# TYPE")}
    known |= {line.split()[2] for line in exposition({"switches": [], "last_switch_timestamp_seconds": {},
                                                      "backups": {}, "last_backup_timestamp_seconds": 1.0}
                                                     ).decode().splitlines() if line.startswith("# TYPE")}
    for rules_file in (MONITORING / "rules").glob("*.yml"):
        known |= {rule["record"] for g in yaml.safe_load(rules_file.read_text())["groups"]
                  for rule in g["rules"] if "record" in rule}
    known |= {"aads_cuda_memory_allocated_bytes", "aads_cuda_memory_reserved_bytes"}  # GPU processes only
    suffixes = ("_bucket", "_sum", "_count", "_total")
    for title, expr in exprs:
        names = set(re.findall(r"(?<![\w:])((?:aads|process|haproxy)_[a-z0-9_]+)(?![\w:])", expr)) | set(re.findall(r"\b([a-z_]+:[a-z0-9_:]+)", expr))
        assert names, title
        for metric in names:
            if metric.startswith("haproxy_"):  # HAProxy's exporter: checked against the real edge in tests/integration
                continue
            base = next((metric[: -len(s)] for s in suffixes if metric.endswith(s) and metric[: -len(s)] in known), metric)
            assert base in known or metric in known, f"{title}: {metric} is not a series we export"
