"""The compose stack of one target: env file, slots, edge and the compose CLI, and nothing else.

The lower of the compose backend's two layers (the other is backend.py, which runs the switch
flow on it and keeps the ledger): plain values and small dataclasses in and out, no ledger.
Files of a target, under <state dir>/compose/<target>/:
  - compose.env holds the image of each slot (compose reads it with --env-file); 0600, as it
    carries the API keys to the slots;
  - edge/haproxy.cfg (mounted into the edge) enables the live slot, so an edge restart keeps
    serving it;
  - api-keys (0600, made at the first `up`) holds the API keys the slots require (orchestrator.api_keys).
Traffic moves only through HAProxy's runtime API (`docker exec` into the edge), never a reload.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import requests
from docker.errors import APIError, DockerException, ImageNotFound

from orchestrator import api_keys
from orchestrator.backends.compose import compose_cli, gpu_room, haproxy
from orchestrator.backends.compose.haproxy import EdgeError, EdgeRuntime
from orchestrator.config import ComposeTarget, Config
from orchestrator.engine import docker_client
from orchestrator.errors import CandidateExited, EngineError, RegistryError, UsageError
from orchestrator.fsutil import atomic_write
from orchestrator.polling import NotYet, PollTimeout, poll_until
from orchestrator.registry import engine_auth_config
from orchestrator.resolve import Deployable
from orchestrator.variants import compose_variant

SLOTS = haproxy.SLOTS
BASE_IMAGE_DEFAULT = "aads-base:bookworm"


def other(slot: str | None) -> str:
    return "green" if slot == "blue" else "blue"


def short(ref: str | None) -> str:
    if not ref:
        return "-"
    head, sep, digest = ref.rpartition("@")
    return f"{head}@{digest[:19]}…" if sep else (ref[:19] + "…" if ref.startswith("sha256:") else ref)


def reason_of(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class ComposeStack:
    """One target's blue/green slots behind its HAProxy edge, as files, containers and compose calls."""

    def __init__(self, config: Config, target: str, spec: ComposeTarget, note: Callable[[str], None]):
        self.config = config
        self.target = target
        self.spec = spec
        self.note = note
        self.state_dir = config.state_path / "compose" / target
        self.env_path = self.state_dir / "compose.env"
        self.edge_dir = self.state_dir / "edge"
        self.cfg_path = self.edge_dir / "haproxy.cfg"
        self.keys_path = self.state_dir / api_keys.KEYS_FILE
        self.compose_file = config.path(spec.compose_file).resolve()
        self.edge_src = self.compose_file.parent.parent / "images" / "edge"
        self.prometheus_src = self.compose_file.parent.parent / "images" / "prometheus"
        self.monitoring_dir = self.compose_file.parent.parent / "monitoring"
        self._client = None
        self._project: compose_cli.ComposeProject | None = None
        self._variant: tuple[str, str] | None = None

    # -- plumbing -------------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            self._client = docker_client()
        return self._client

    @property
    def project(self) -> compose_cli.ComposeProject:
        if self._project is None:
            if not self.compose_file.is_file():
                raise UsageError(f"compose file not found: {self.compose_file}")
            self._project = compose_cli.project_for(compose_cli.detect(), self.spec.project, self.compose_file,
                                                    self.env_path, self.gpu_enabled())
        return self._project

    def compose(self, argv: list[str], timeout_s: float = 900) -> str:
        return compose_cli.run(argv, timeout_s)

    def slot_port(self, slot: str) -> int:
        return self.spec.blue_port if slot == "blue" else self.spec.green_port

    def slot_url(self, slot: str) -> str:
        return f"http://127.0.0.1:{self.slot_port(slot)}"

    @property
    def edge_url(self) -> str:
        host = "127.0.0.1" if self.spec.edge_host in ("0.0.0.0", "") else self.spec.edge_host
        return f"http://{host}:{self.spec.edge_port}"

    def down(self) -> None:
        """Remove the project's containers and network (tests; `orchestrator down` is not a verb)."""
        self.compose(self.project.down())

    # -- env file (slot images) -------------------------------------------------------------------
    def read_env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.env_path.is_file():
            for line in self.env_path.read_text().splitlines():
                if "=" in line and not line.lstrip().startswith("#"):
                    k, _, v = line.partition("=")
                    out[k.strip()] = v.strip()
        return out

    def write_env(self, **images: str) -> None:
        """Write compose.env; BLUE_IMAGE/GREEN_IMAGE keep their value unless given."""
        env = self.read_env()
        env.update({
            "EDGE_IMAGE": self.edge_image_tag(),
            "BASE_IMAGE": self.base_image,
            "EDGE_CONFIG_DIR": str(self.edge_dir.resolve()),
            "EDGE_HOST": self.spec.edge_host,
            "EDGE_PORT": str(self.spec.edge_port),
            "BLUE_PORT": str(self.spec.blue_port),
            "GREEN_PORT": str(self.spec.green_port),
            "PROMETHEUS_IMAGE": self.prometheus_image_tag(),
            "PROMETHEUS_PORT": str(self.spec.prometheus_port),
            "PUSHGATEWAY_PORT": str(self.spec.pushgateway_port),
            "MONITORING_DIR": str(self.monitoring_dir.resolve()),
        })
        env["SLOT_API_KEYS"] = api_keys.env_value(self.keys()) if self.spec.api_keys == "on" else ""
        env.update({k: v for k, v in images.items() if v})
        for key in ("BLUE_IMAGE", "GREEN_IMAGE"):  # compose needs both to read the file
            env.setdefault(key, images.get("BLUE_IMAGE") or images.get("GREEN_IMAGE") or "aads-unset")
        text = "# Written by the orchestrator (target %s); compose reads it with --env-file.\n" % self.target
        text += "".join(f"{k}={env[k]}\n" for k in sorted(env))
        atomic_write(self.env_path, text, mode=0o600)  # 0600 from its creation: it carries the API keys

    # -- API keys ---------------------------------------------------------------------------------
    def keys(self) -> tuple:
        """The target's API keys (the key file is made, 0600, the first time)."""
        if api_keys.ensure_keys_file(self.keys_path):
            self.note(f"API keys are on: made {self.keys_path} (0600); clients send "
                      f"`X-API-Key: <key>` (`api_keys: off` in the target turns them off)")
        return api_keys.read_keys(self.keys_path)

    @property
    def client_headers(self) -> dict[str, str]:
        """What the orchestrator's own requests to /v1/* carry: its key when keys are on."""
        if self.spec.api_keys != "on" or not self.keys_path.is_file():
            return {}
        return {"X-API-Key": api_keys.own_key(api_keys.read_keys(self.keys_path))}

    # -- edge -------------------------------------------------------------------------------------
    @property
    def base_image(self) -> str:
        return os.environ.get("AADS_BASE_IMAGE", BASE_IMAGE_DEFAULT)

    def template(self) -> str:
        path = self.edge_src / "haproxy.cfg.tmpl"
        if not path.is_file():
            raise UsageError(f"edge config template not found: {path}")
        return path.read_text()

    def edge_image_tag(self) -> str:
        """aads-edge:<hash of the Dockerfile, the template and the base image name>: rebuilt when they change."""
        h = hashlib.sha256()
        for name in ("Dockerfile", "haproxy.cfg.tmpl"):
            h.update((self.edge_src / name).read_bytes())
        h.update(self.base_image.encode())
        return f"aads-edge:{h.hexdigest()[:12]}"

    def ensure_edge_image(self) -> str:
        return self._ensure_image(self.edge_src, self.edge_image_tag(), "edge", "HAProxy from Debian, about a minute")

    def prometheus_image_tag(self) -> str:
        """aads-prometheus:<hash of the base image name and images/prometheus/*> (as the monitoring tests tag it)."""
        h = hashlib.sha256(self.base_image.encode())
        if self.prometheus_src.is_dir():
            for f in sorted(self.prometheus_src.iterdir()):
                h.update(f.name.encode() + f.read_bytes())
        return f"aads-prometheus:{h.hexdigest()[:12]}"

    def ensure_monitoring(self) -> None:
        """Prometheus + pushgateway up next to the edge (image built on first use; `up` is a no-op when running)."""
        self._ensure_image(self.prometheus_src, self.prometheus_image_tag(), "prometheus",
                           "Prometheus and its pushgateway from Debian, about a minute")
        self.write_env()
        self.compose(self.project.up("prometheus", "pushgateway"))

    def _ensure_image(self, src: Path, tag: str, what: str, how_long: str) -> str:
        try:
            self.client.images.get(tag)
            return tag
        except Exception:
            pass
        try:
            self.client.images.get(self.base_image)
        except Exception:
            raise EngineError(f"base image {self.base_image} is missing: run `make engine` to build it") from None
        self.note(f"building the {what} image {tag} ({how_long})")
        log: list[str] = []
        try:
            for chunk in self.client.api.build(path=str(src), tag=tag, rm=True, forcerm=True,
                                               buildargs={"BASE_IMAGE": self.base_image}, decode=True):
                if "stream" in chunk:
                    log.append(chunk["stream"].rstrip())
                if "error" in chunk:
                    raise EngineError(f"{what} image build failed: {chunk['error'].strip()} "
                                      f"(last: {' | '.join(x for x in log[-3:] if x)})")
        except EngineError:
            raise
        except Exception as e:
            raise EngineError(f"{what} image build failed: {e}") from None
        return tag

    def write_edge_config(self, live_slot: str | None) -> None:
        haproxy.write_config(self.cfg_path, haproxy.render_config(self.template(), live_slot))

    def config_live_slot(self) -> str | None:
        """The slot haproxy.cfg on disk enables (None: no file, or not exactly one slot)."""
        return haproxy.config_live_slot(self.cfg_path.read_text()) if self.cfg_path.is_file() else None

    def containers(self) -> dict[str, Any]:
        """service -> its container (newest), read from the engine by the compose labels."""
        found = self.client.containers.list(all=True, filters={
            "label": f"{compose_cli.PROJECT_LABEL}={self.spec.project}"})
        out: dict[str, Any] = {}
        for c in sorted(found, key=lambda c: c.attrs.get("Created", "")):
            svc = c.labels.get(compose_cli.SERVICE_LABEL)
            if svc:
                out[svc] = c
        return out

    def edge(self) -> EdgeRuntime:
        c = self.containers().get("edge")
        if c is None or c.status != "running":
            raise EdgeError(f"the edge of target {self.target} is not running")
        return EdgeRuntime.for_container(c)

    def start_edge(self, live_slot: str | None) -> EdgeRuntime:
        """Edge up (created from the current haproxy.cfg) and answering its runtime API."""
        self.ensure_edge_image()
        self.write_edge_config(live_slot)
        self.compose(self.project.up("edge"))

        def answering() -> EdgeRuntime | NotYet:
            try:
                rt = self.edge()
                rt.servers()
                return rt
            except EdgeError as e:
                return NotYet(str(e))

        try:
            return poll_until(answering, timeout=20, interval=0.2, what="the edge")
        except PollTimeout as e:
            raise EdgeError(f"the edge did not start: {e.last}") from None

    def edge_or_start(self, live_slot: str) -> EdgeRuntime:
        try:
            return self.edge()
        except EdgeError:
            return self.start_edge(live_slot)

    def edge_health(self) -> str:
        try:
            r = requests.get(f"{self.edge_url}/ready", timeout=3)
            return "ready" if r.status_code == 200 else f"/ready answered {r.status_code}"
        except requests.RequestException as e:
            return f"edge unreachable ({type(e).__name__})"

    # -- slots ------------------------------------------------------------------------------------
    def slot_image(self, cand: Deployable) -> str:
        """The exact image a slot runs for `cand`; pulled from the registry when not on this host."""
        if self.spec.image_source == "local":
            try:
                self.client.images.get(cand.build.image_id)
            except Exception:
                raise UsageError(f"image {cand.build.image_id[:19]}… of {cand.version} is not on this engine "
                                 f"(image_source: local): restore it with `orchestrator backup restore`") from None
            return cand.build.image_id
        try:
            self.client.images.get(cand.image_ref)
            return cand.image_ref
        except ImageNotFound:
            pass
        except DockerException as e:
            raise EngineError(f"the Docker engine went away ({reason_of(e)})") from None
        self.note(f"  pulling {short(cand.image_ref)}")
        try:
            self.client.images.pull(cand.image_ref, auth_config=engine_auth_config(self.config, cand.image_ref))
        except APIError as e:
            raise RegistryError(f"cannot pull {cand.image_ref}: {e.explanation or e}") from None
        except DockerException as e:
            raise EngineError(f"cannot pull {cand.image_ref}: the Docker engine went away ({reason_of(e)})") from None
        return cand.image_ref

    def start_slot(self, slot: str, image: str) -> None:
        self.write_env(**{f"{slot.upper()}_IMAGE": image})
        self.up_slot(slot)

    def up_slot(self, slot: str) -> None:
        """`compose up` one slot; a failure because its container died is the image's (CandidateExited)."""
        try:
            self.compose(self.project.up(slot))
        except EngineError as e:
            if self.slot_died(slot):
                raise CandidateExited(f"{e} ({self.slot_exit_reason(slot)})") from None
            raise

    def slot_died(self, slot: str) -> bool:
        """Did `slot`'s container exit or start restarting (False where the engine cannot tell)?"""
        try:
            c = self.containers().get(slot)
        except Exception:
            return False  # the engine itself is failing: not the image's fault
        return c is not None and c.status in ("exited", "dead", "restarting")

    def stop_slot(self, slot: str) -> None:
        self.compose(self.project.stop(slot))

    def stop_quietly(self, slot: str) -> None:
        """Stop `slot` on the way out of a failure: the engine may be what failed, the report already says why."""
        try:
            self.stop_slot(slot)
        except Exception as e:
            self.note(f"  [yellow]cleanup failed: {reason_of(e)}[/yellow]")

    def slot_exit_reason(self, slot: str) -> str | None:
        c = self.containers().get(slot)
        if c is None:
            return "the container is gone"
        if c.status in ("exited", "dead"):
            tail = c.logs(tail=5).decode(errors="replace").strip().splitlines()
            return f"the container exited with code {c.attrs['State'].get('ExitCode')} ({tail[-1] if tail else 'no output'})"
        if c.status == "restarting":
            return "the container keeps restarting"
        return None

    def slot_runs(self, slot: str, image: str) -> bool:
        """Is `slot` running exactly `image` (a repo@digest reference or an image id)?"""
        c = self.containers().get(slot)
        if c is None or c.status != "running":
            return False
        if c.attrs.get("Image") == image or c.attrs.get("Config", {}).get("Image") == image:
            return True
        try:
            return image in (self.client.images.get(c.attrs["Image"]).attrs.get("RepoDigests") or [])
        except Exception:
            return False

    def slot_ip(self, slot: str) -> str | None:
        c = self.containers().get(slot)
        if c is None:
            return None
        nets = c.attrs.get("NetworkSettings", {}).get("Networks", {}) or {}
        net = nets.get(f"{self.spec.project}_default") or next(iter(nets.values()), {})
        return net.get("IPAddress") or None

    def point_edge_at(self, rt: EdgeRuntime, slot: str) -> None:
        """Tell HAProxy the slot's current address (a recreated container may have a new one)."""
        ip = self.slot_ip(slot)
        if ip:
            rt.set_addr(slot, ip)

    def ready_now(self, slot: str) -> bool:
        try:
            return requests.get(f"{self.slot_url(slot)}/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    # -- GPU and variant --------------------------------------------------------------------------
    def variant_choice(self) -> tuple[str, str]:
        """(variant, why): the image variant this target deploys, decided once per command."""
        if self._variant is None:
            self._variant = compose_variant(self.spec.variant, self.gpu_enabled())
        return self._variant

    @property
    def variant(self) -> str:
        return self.variant_choice()[0]

    def gpu_enabled(self) -> bool:
        if self.spec.gpu == "off":
            return False
        if self.spec.gpu == "on":
            return True
        return gpu_room.gpu_visible()

    def check_gpu_room(self) -> str | None:
        """Why the GPU cannot hold a second model next to the live one (None: it can, or no GPU)."""
        if not self.gpu_enabled():
            return None
        return gpu_room.room_verdict()
