"""`orchestrator.yaml`: registry, state dir, targets. Every key can be overridden by env.

Top-level keys: AADS_<KEY> (AADS_REGISTRY, AADS_STATE_DIR, AADS_VERSIONS_DIR, AADS_MODELS_DIR,
AADS_DEFAULT_TARGET). Target keys: AADS_TARGET_<NAME>_<KEY> (e.g. AADS_TARGET_LOCAL_EDGE_PORT=9090).
Without a file the embedded default holds: target `local` = compose on this host, edge on
127.0.0.1:8080, registry 127.0.0.1:5000/aads-ulora, state in .orchestrator/.
"""

from __future__ import annotations

import json

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.errors import ConfigError

CONFIG_FILE = "orchestrator.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComposeTarget(_Strict):
    kind: Literal["compose"] = "compose"
    project: str = "aads"
    compose_file: str = "compose/compose.yaml"
    edge_host: str = "127.0.0.1"
    edge_port: int = Field(8080, ge=1, le=65535)
    # Host ports for each slot's smoke test (published on edge_host only).
    blue_port: int = Field(8081, ge=1, le=65535)
    green_port: int = Field(8082, ge=1, le=65535)
    # "registry": slots run <registry>@sha256:<digest>; "local": the image id of a loaded image
    # (air-gapped hosts restored from a backup, no registry).
    image_source: Literal["registry", "local"] = "registry"
    ready_timeout_s: float = Field(180, gt=0)
    watch_s: float = Field(5, ge=0)
    # The watch window fails (and flips back) above this share of 5xx/failed requests through the edge.
    watch_max_error_rate: float = Field(0.0, ge=0, le=1)
    gpu: Literal["auto", "on", "off"] = "auto"
    # API keys on the slots (a 0600 key file made at the first `up`); "off" only for demos.
    api_keys: Literal["on", "off"] = "on"
    # Which image of a version the slots run: cuda (`<repo>:<version>`), cpu (`<version>-cpu`),
    # auto: cuda when the GPU check (`gpu`) sees a GPU, else cpu.
    variant: Literal["auto", "cuda", "cpu"] = "auto"
    # Prometheus + pushgateway next to the edge (images/prometheus, monitoring/); `up` and every
    # switch start them. Their host ports (published on 127.0.0.1 only).
    monitoring: bool = True
    prometheus_port: int = Field(9090, ge=1, le=65535)
    pushgateway_port: int = Field(9091, ge=1, le=65535)
    # Where the canary analysis queries (default: the stack's own Prometheus on prometheus_port).
    prometheus_url: str | None = None
    # Canary steps of every switch (percent of requests to the candidate, ending at 100), e.g.
    # [10, 50, 100]; none: the all-at-once flip. `switch --canary` overrides it.
    canary: list[int] | None = None
    canary_step_s: float = Field(60, gt=0)
    # orchestrator/canary/analysis.py Thresholds: max_error_rate, max_p99_ratio, ...
    canary_thresholds: dict[str, float] = Field(default_factory=dict)

    @field_validator("canary", mode="before")
    @classmethod
    def _canary_shares(cls, v: Any) -> Any:
        from orchestrator.canary.steps import parse_shares

        if v is None or v == "" or v == []:
            return None
        text = v if isinstance(v, str) else ",".join(str(x) for x in v)
        return parse_shares(text)

    @field_validator("canary_thresholds", mode="before")
    @classmethod
    def _thresholds_text(cls, v: Any) -> Any:
        # AADS_TARGET_<NAME>_CANARY_THRESHOLDS carries them as JSON text ('{"max_p99_ratio": 2}')
        if isinstance(v, str):
            try:
                return json.loads(v) if v.strip() else {}
            except json.JSONDecodeError as e:
                raise ValueError(f"canary_thresholds must be a mapping (JSON in the environment): {e}") from None
        return v

    @field_validator("canary_thresholds")
    @classmethod
    def _thresholds(cls, v: dict[str, float]) -> dict[str, float]:
        from orchestrator.canary.analysis import Thresholds

        Thresholds.from_dict(v)
        return v

    @property
    def analysis_url(self) -> str:
        return self.prometheus_url or f"http://127.0.0.1:{self.prometheus_port}"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        # YAML reads a bare on/off as a boolean
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class KubernetesTarget(_Strict):
    kind: Literal["kubernetes"]
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str = "aads"
    deployment: str = "aads-serving"
    container: str = "serving"
    # The image repository the cluster's nodes pull from (e.g. registry.example.com/aads-ulora);
    # default: the repository the version was pushed to. Never a loopback address.
    repository: str | None = None
    # The Secret (type kubernetes.io/dockerconfigjson, in `namespace`) the pods pull with.
    image_pull_secret: str | None = None
    # The switch's own limit on one rollout; default: replicas x pod_budget_s.
    timeout_s: float | None = Field(None, gt=0)
    # What one pod may take to be pulled, started, loaded and Ready.
    pod_budget_s: float = Field(300, gt=0)
    # The manifests this target was applied from: the switch writes, next to its state, a
    # kustomization over them that pins what is live (re-applying it changes nothing).
    overlay: str = "k8s/overlays/cpu"
    # auto: the Deployment's overlay decides (a container asking for nvidia.com/gpu runs cuda).
    variant: Literal["auto", "cuda", "cpu"] = "auto"


Target = ComposeTarget | KubernetesTarget


class RegistrySettings(_Strict):
    """How to reach one registry host (`registries: {HOST[:PORT]: ...}`); see docs/operations.md."""

    # Plain HTTP allowed (a loopback registry may always fall back to it).
    insecure: bool = False
    # An extra CA bundle for this registry (besides the system store, REQUESTS_CA_BUNDLE and certs.d).
    ca_file: str | None = None
    # A 0600 JSON file {"registry", "username", "password"} (what scripts/engine.sh writes).
    credentials_file: str | None = None


class Config(_Strict):
    registry: str = "127.0.0.1:5000/aads-ulora"
    state_dir: str = ".orchestrator"
    versions_dir: str = "versions"
    models_dir: str = "build/models"
    default_target: str = "local"
    targets: dict[str, Any] = Field(default_factory=lambda: {"local": {"kind": "compose"}})
    registries: dict[str, RegistrySettings] = Field(default_factory=dict)

    # Filled by load(): where relative paths are resolved from.
    root: Path = Path(".")

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.root / p)

    @property
    def state_path(self) -> Path:
        return self.path(self.state_dir)

    @property
    def versions_path(self) -> Path:
        return self.path(self.versions_dir)

    @property
    def models_path(self) -> Path:
        return self.path(self.models_dir)

    @property
    def registry_host(self) -> str:
        return self.registry.split("/", 1)[0]

    def registry_settings(self, host: str) -> RegistrySettings:
        """The settings of registry `host` (defaults when orchestrator.yaml names none)."""
        return self.registries.get(host) or RegistrySettings()

    def target(self, name: str | None = None) -> tuple[str, Target]:
        name = name or self.default_target
        if name not in self.targets:
            known = ", ".join(sorted(self.targets)) or "none"
            raise ConfigError(f"unknown target {name!r} (configured: {known})")
        raw = self.targets[name] or {}
        try:
            if raw.get("kind", "compose") == "compose":
                return name, ComposeTarget.model_validate(raw)
            return name, KubernetesTarget.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(f"target {name}: {_first_error(e)}") from None


def _first_error(e: ValidationError) -> str:
    errs = e.errors()
    return "; ".join(f"{'.'.join(str(p) for p in x['loc'])}: {x['msg']}" for x in errs)


def _env_overrides(data: dict[str, Any], env: os._Environ | dict[str, str]) -> dict[str, Any]:
    out = dict(data)
    for key in ("registry", "state_dir", "versions_dir", "models_dir", "default_target"):
        v = env.get(f"AADS_{key.upper()}")
        if v:
            out[key] = v
    targets = {k: dict(v or {}) for k, v in (out.get("targets") or {"local": {"kind": "compose"}}).items()}
    for var, value in env.items():
        if not var.startswith("AADS_TARGET_"):
            continue
        rest = var[len("AADS_TARGET_"):].lower()
        for name in sorted(targets, key=len, reverse=True):
            prefix = name.lower().replace("-", "_") + "_"
            if rest.startswith(prefix):
                targets[name][rest[len(prefix):]] = value
                break
    out["targets"] = targets
    return out


def find_root(start: Path | None = None) -> Path:
    """The repository root: the nearest folder up from `start` holding orchestrator.yaml or versions/."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / CONFIG_FILE).is_file() or (d / "versions").is_dir():
            return d
    return here


def load(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Load the config file (explicit path, $AADS_CONFIG, or ./orchestrator.yaml up the tree)."""
    env = os.environ if env is None else env
    explicit = path or env.get("AADS_CONFIG")
    if explicit:
        file = Path(explicit).expanduser()
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        root = file.resolve().parent
    else:
        root = find_root()
        file = root / CONFIG_FILE
    data: dict[str, Any] = {}
    if file.is_file():
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{file}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: expected a mapping at the top level")
    try:
        cfg = Config.model_validate(_env_overrides(data, env))
    except ValidationError as e:
        raise ConfigError(f"{file}: {_first_error(e)}") from None
    cfg.root = root
    return cfg
