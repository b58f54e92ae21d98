"""The compose backend: blue/green slots behind an HAProxy edge on one Docker host.

State of a target lives in three places, each with one job:
  - the ledger says what is live (version, digest, slot) and what every switch did;
  - <state dir>/compose/<target>/compose.env holds the image of each slot (compose reads it);
  - <state dir>/compose/<target>/edge/haproxy.cfg (mounted into the edge) enables the live slot,
    so an edge restart keeps serving it;
  - <state dir>/compose/<target>/api-keys (0600, made at the first `up`) holds the API keys the
    slots require (orchestrator.api_keys); compose.env carries them to the slots, so it is 0600 too.
Traffic moves only through HAProxy's runtime API (`docker exec` into the edge), never a reload.

Crash repair (a switch the ledger still shows as running, its process gone): while the switch had
not passed its watch window (steps resolve..watch) the edge goes back to the slot the ledger says
is live and the candidate stops; from `drain` on (flip, confirm and watch all passed) the repair
completes it forward. Either way the switch is marked 'interrupted' with what the repair did.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from docker.errors import APIError, DockerException, ImageNotFound

from orchestrator import api_keys, compose_cli, golden, haproxy, probe
from orchestrator.config import ComposeTarget
from orchestrator.context import Context
from orchestrator.engine import docker_client
from orchestrator.errors import (EngineError, LockBusyError, OrchestratorError, RegistryError, SwitchFailed, TamperError,
                                 UsageError)
from orchestrator.haproxy import EdgeError, EdgeRuntime
from orchestrator.ledger import Live, Switch
from orchestrator.lock import target_lock
from orchestrator.registry import engine_auth_config
from orchestrator.resolve import Deployable, known_version, resolve
from orchestrator.switchflow import Steps, history, pause_hook, result
from orchestrator.variants import compose_variant
from serving.manifest import validate_version_name

SLOTS = haproxy.SLOTS
BASE_IMAGE_DEFAULT = "aads-base:bookworm"
# Steps after which a crashed switch is completed forward by the repair (see the module doc).
FORWARD_STEPS = {"drain", "stop", "finish"}
BEFORE_FLIP = {"resolve", "start", "ready", "smoke", None}


class GpuRoomError(SwitchFailed):
    """The GPU cannot hold the candidate's model next to the live one."""


def other(slot: str | None) -> str:
    return "green" if slot == "blue" else "blue"


def short(ref: str | None) -> str:
    if not ref:
        return "-"
    head, sep, digest = ref.rpartition("@")
    return f"{head}@{digest[:19]}…" if sep else (ref[:19] + "…" if ref.startswith("sha256:") else ref)


@dataclass(frozen=True)
class Candidate:
    """What a switch deploys: a resolved version and the exact image a slot runs."""

    version: str
    digest: str
    image: str           # repo@sha256:... (registry) or the local image id (image_source local)
    deployable: Deployable


class ComposeBackend:
    def __init__(self, ctx: Context, target: str, spec: ComposeTarget):
        self.ctx = ctx
        self.target = target
        self.spec = spec
        self.state_dir = ctx.config.state_path / "compose" / target
        self.env_path = self.state_dir / "compose.env"
        self.edge_dir = self.state_dir / "edge"
        self.cfg_path = self.edge_dir / "haproxy.cfg"
        self.keys_path = self.state_dir / api_keys.KEYS_FILE
        self.compose_file = ctx.config.path(spec.compose_file).resolve()
        self.edge_src = self.compose_file.parent.parent / "images" / "edge"
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
        })
        env["SLOT_API_KEYS"] = api_keys.env_value(self.keys()) if self.spec.api_keys == "on" else ""
        env.update({k: v for k, v in images.items() if v})
        for key in ("BLUE_IMAGE", "GREEN_IMAGE"):  # compose needs both to read the file
            env.setdefault(key, images.get("BLUE_IMAGE") or images.get("GREEN_IMAGE") or "aads-unset")
        text = "# Written by the orchestrator (target %s); compose reads it with --env-file.\n" % self.target
        text += "".join(f"{k}={env[k]}\n" for k in sorted(env))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.env_path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        # 0600 from the start: it carries the API keys.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self.env_path)

    # -- API keys ---------------------------------------------------------------------------------
    def keys(self) -> tuple:
        """The target's API keys (the key file is made, 0600, the first time)."""
        if api_keys.ensure_keys_file(self.keys_path):
            self.ctx.note(f"API keys are on: made {self.keys_path} (0600); clients send "
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
        tag = self.edge_image_tag()
        try:
            self.client.images.get(tag)
            return tag
        except Exception:
            pass
        try:
            self.client.images.get(self.base_image)
        except Exception:
            raise EngineError(f"base image {self.base_image} is missing: run `make engine` to build it") from None
        self.ctx.note(f"building the edge image {tag} (HAProxy from Debian, about a minute)")
        log: list[str] = []
        try:
            for chunk in self.client.api.build(path=str(self.edge_src), tag=tag, rm=True, forcerm=True,
                                               buildargs={"BASE_IMAGE": self.base_image}, decode=True):
                if "stream" in chunk:
                    log.append(chunk["stream"].rstrip())
                if "error" in chunk:
                    raise EngineError(f"edge image build failed: {chunk['error'].strip()} "
                                      f"(last: {' | '.join(x for x in log[-3:] if x)})")
        except EngineError:
            raise
        except Exception as e:
            raise EngineError(f"edge image build failed: {e}") from None
        return tag

    def write_edge_config(self, live_slot: str | None) -> None:
        haproxy.write_config(self.cfg_path, haproxy.render_config(self.template(), live_slot))

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
        deadline = time.monotonic() + 20
        while True:
            try:
                rt = self.edge()
                rt.servers()
                return rt
            except EdgeError as e:
                if time.monotonic() > deadline:
                    raise EdgeError(f"the edge did not start: {e}") from None
                time.sleep(0.2)

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
            raise EngineError(f"the Docker engine went away ({_reason(e)})") from None
        self.ctx.note(f"  pulling {short(cand.image_ref)}")
        try:
            self.client.images.pull(cand.image_ref, auth_config=engine_auth_config(self.ctx.config, cand.image_ref))
        except APIError as e:
            raise RegistryError(f"cannot pull {cand.image_ref}: {e.explanation or e}") from None
        except DockerException as e:
            raise EngineError(f"cannot pull {cand.image_ref}: the Docker engine went away ({_reason(e)})") from None
        return cand.image_ref

    def start_slot(self, slot: str, image: str) -> None:
        self.write_env(**{f"{slot.upper()}_IMAGE": image})
        self.compose(self.project.up(slot))

    def stop_slot(self, slot: str) -> None:
        self.compose(self.project.stop(slot))

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
        return gpu_memory() is not None

    def check_gpu_room(self) -> str | None:
        """Refuse when the GPU cannot hold a second model next to the live one."""
        if not self.gpu_enabled():
            return None
        mem = gpu_memory()
        if mem is None:
            raise GpuRoomError("gpu: on, but nvidia-smi cannot read the GPU's memory")
        return gpu_room_verdict(*mem)

    # -- commands ---------------------------------------------------------------------------------
    def up(self, version: str | None) -> dict[str, Any]:
        with target_lock(self.ctx.config.state_path, self.target):
            interrupted = self.repair_unfinished()
            live = self.ctx.ledger.live(self.target)
            if live is not None:
                if version and version != live.version:
                    self.ctx.note(f"{live.version} is live on {self.target}: switching to {version}")
                    return {**self._switch_locked(version, keep_previous=False, action="switch"),
                            "interrupted": interrupted}
                repaired = self.reconcile(live)
                return result(outcome="noop", target=self.target, from_version=live.version,
                              to_version=live.version, digest=live.digest, slot=live.slot,
                              reason=f"{live.version} is already live" + (f"; repaired: {'; '.join(repaired)}"
                                                                          if repaired else ""),
                              interrupted=interrupted, edge=self.edge_url)
            version = version or self.newest_pushed()
            return {**self._first_up(version), "interrupted": interrupted}

    def newest_pushed(self) -> str:
        pushes = [p for p in self.ctx.ledger.pushes() if p.variant == self.variant]
        if not pushes:
            flag = f" --variant {self.variant}"
            raise UsageError(f"no version has a pushed {self.variant} image yet: run `orchestrator build VERSION{flag}` "
                             f"and `orchestrator push VERSION{flag}`")
        return pushes[-1].version

    def _first_up(self, version: str) -> dict[str, Any]:
        _validate(version)
        slot = "blue"
        sw = self._begin("up", version, None, data={"candidate_slot": slot, "live_slot": None})
        steps = Steps(self.ctx, sw)
        cand: Candidate | None = None
        try:
            with steps.step("resolve", version):
                cand = self.resolve(version)
            with steps.step("start", f"{slot} ← {short(cand.image)}", image=cand.image, digest=cand.digest):
                self.ensure_edge_image()
                self.write_env(BLUE_IMAGE=cand.image, GREEN_IMAGE=cand.image)
                self.write_edge_config(None)
                self.compose(self.project.up(slot))
            with steps.step("ready", f"{self.slot_url(slot)}/ready"):
                probe.wait_ready(self.slot_url(slot), self.spec.ready_timeout_s, abort=lambda: self.slot_exit_reason(slot))
            with steps.step("smoke", "golden images on the slot"):
                self.smoke(slot, cand)
            with steps.step("flip", f"edge on {self.edge_url} → {slot}"):
                rt = self.start_edge(slot)
                self.point_edge_at(rt, slot)
                rt.shift(slot, None)
            with steps.step("confirm", f"{self.edge_url}/v1/version names {version}"):
                self.confirm(cand)
        except Exception as e:
            reason = _reason(e)
            self.ctx.note(f"[red]✗ up failed at {steps.current}: {reason}[/red]")
            self._cleanup_quietly(lambda: self.stop_slot(slot))
            if cand is not None and _candidates_fault(e):
                self.ctx.ledger.mark_failed_digest(digest=cand.digest, version=version, target=self.target,
                                                   reason=reason)
            self.ctx.ledger.finish_switch(sw.id, "failed", f"{steps.current}: {reason}")
            if isinstance(e, (UsageError, TamperError)):
                raise
            raise SwitchFailed(f"up {version} failed at {steps.current}: {reason}") from None
        with steps.step("finish"):
            with self.ctx.ledger.transaction() as db:
                self.ctx.ledger.set_live(self.target, version=version, digest=cand.digest, image_ref=cand.image,
                                         slot=slot, db=db)
                self.ctx.ledger.finish_switch(sw.id, "succeeded", None, db=db)
        return result(outcome="succeeded", target=self.target, from_version=None, to_version=version,
                      digest=cand.digest, slot=slot, phases=steps.phases, edge=self.edge_url)

    def switch(self, version: str, *, keep_previous: bool = False, wait_lock_s: float = 0.0) -> dict[str, Any]:
        _validate(version)
        with target_lock(self.ctx.config.state_path, self.target, wait_lock_s):
            interrupted = self.repair_unfinished()
            return {**self._switch_locked(version, keep_previous=keep_previous, action="switch"),
                    "interrupted": interrupted}

    def rollback(self, to_version: str | None = None, *, wait_lock_s: float = 0.0,
                 keep_previous: bool = False) -> dict[str, Any]:
        if to_version:
            _validate(to_version)
        with target_lock(self.ctx.config.state_path, self.target, wait_lock_s):
            interrupted = self.repair_unfinished()
            live = self._live_or_refuse()
            version = to_version or live.previous_version
            if not version:
                raise UsageError(f"nothing to roll back to on {self.target}: {live.version} is the only version "
                                 f"that was live (use `orchestrator rollback --to-version VERSION`)")
            return {**self._switch_locked(version, keep_previous=keep_previous, action="rollback"),
                    "interrupted": interrupted}

    def _live_or_refuse(self) -> Live:
        live = self.ctx.ledger.live(self.target)
        if live is None:
            raise UsageError(f"nothing is live on target {self.target} yet: run `orchestrator up VERSION` first")
        return live

    def _switch_locked(self, version: str, *, keep_previous: bool, action: str) -> dict[str, Any]:
        live = self._live_or_refuse()
        repaired = self.reconcile(live)
        live = self._live_or_refuse()
        push = self.ctx.ledger.latest_push(version, self.variant)
        rollback_to_previous = action == "rollback" and version == live.previous_version
        if version == live.version and (push is None or push.digest == live.digest):
            reason = f"{version} is already live on {self.target} (slot {live.slot}); nothing to do"
            sw = self._begin(action, version, live.version, digest=live.digest)
            self.ctx.ledger.finish_switch(sw.id, "noop", reason)
            self.ctx.note(reason)
            return result(outcome="noop", target=self.target, from_version=live.version, to_version=version,
                          digest=live.digest, slot=live.slot, reason=reason, repaired=repaired)

        from_slot = live.slot or "blue"
        slot = other(from_slot)
        digest_hint = live.previous_digest if rollback_to_previous else (push.digest if push else None)
        sw = self._begin(action, version, live.version, digest=digest_hint,
                         data={"live_slot": from_slot, "candidate_slot": slot, "keep_previous": keep_previous,
                               "live_image": live.image_ref})
        steps = Steps(self.ctx, sw)
        t0 = time.monotonic()
        traffic_s: float | None = None  # command start -> new requests go to the candidate
        cand: Candidate | None = None
        started = flipped = False
        warm = False
        try:
            with steps.step("resolve", f"{version} → digest, registry tag check"):
                cand = self.resolve(version, previous=live if rollback_to_previous else None,
                                    tolerate_registry_down=action == "rollback")
            warm = self.slot_runs(slot, cand.image) and self.ready_now(slot)
            with steps.step("start", f"{slot} ← {short(cand.image)}" + (" (warm)" if warm else ""),
                            image=cand.image, digest=cand.digest, version=cand.version):
                if not warm:
                    verdict = self.check_gpu_room()
                    if verdict:
                        raise GpuRoomError(verdict)
                    image = self.slot_image(cand.deployable)
                    started = True
                    self.start_slot(slot, image)
            with steps.step("ready", f"{self.slot_url(slot)}/ready"):
                probe.wait_ready(self.slot_url(slot), self.spec.ready_timeout_s,
                                 abort=lambda: self.slot_exit_reason(slot))
            if not (warm and rollback_to_previous):
                # A warm previous slot passed its smoke test when it went live and has served since.
                with steps.step("smoke", "golden images on the slot"):
                    self.smoke(slot, cand)
            rt = self.edge()
            with steps.step("flip", f"edge → {slot}, drain {from_slot}"):
                flipped = True
                self.point_edge_at(rt, slot)
                rt.shift(slot, from_slot, at=lambda point: pause_hook(f"flip:{point}"))
                traffic_s = round(time.monotonic() - t0, 3)
                self.write_edge_config(slot)
            with steps.step("confirm", f"{self.edge_url}/v1/version names {version}"):
                self.confirm(cand)
            if self.spec.watch_s > 0:
                with steps.step("watch", f"error rate through the edge for {self.spec.watch_s:g}s"):
                    self.watch(rt, slot)
        except Exception as e:
            return self._fail(sw, steps, e, cand=cand, slot=slot, from_slot=from_slot, started=started,
                              flipped=flipped, warm=warm, live=live)

        notes: list[str] = []
        with steps.step("drain", f"{from_slot} finishes its requests"):
            try:
                rt.retire(from_slot)
            except OrchestratorError as e:
                notes.append(f"old slot not disabled in the edge: {e}")
        if not keep_previous:
            with steps.step("stop", f"stop {from_slot}"):
                try:
                    self.stop_slot(from_slot)
                except OrchestratorError as e:
                    notes.append(f"old slot not stopped: {e}")
        with steps.step("finish"):
            with self.ctx.ledger.transaction() as db:
                self.ctx.ledger.set_live(self.target, version=cand.version, digest=cand.digest, image_ref=cand.image,
                                         slot=slot, db=db)
                self.ctx.ledger.finish_switch(sw.id, "succeeded", "; ".join(notes) or None, db=db)
        for n in notes:
            self.ctx.note(f"[yellow]warning: {n}[/yellow]")
        return result(outcome="succeeded", target=self.target, from_version=live.version, to_version=cand.version,
                      digest=cand.digest, slot=slot, reason="; ".join(notes) or None, phases=steps.phases,
                      warm=warm, kept_previous=keep_previous, repaired=repaired, traffic_switched_s=traffic_s)

    def _fail(self, sw: Switch, steps: Steps, e: Exception, *, cand: Candidate | None, slot: str, from_slot: str,
              started: bool, flipped: bool, warm: bool, live: Live) -> dict[str, Any]:
        reason = _reason(e)
        at = steps.current or "resolve"
        self.ctx.note(f"[red]✗ {sw.action} to {sw.to_version} failed at {at}: {reason}[/red]")
        outcome = "failed"
        if flipped:
            outcome = "reverted"
            try:
                rt = self.edge()
                rt.flip(from_slot, slot)
                self.write_edge_config(from_slot)
                self.ctx.note(f"  edge flipped back to {from_slot} ({live.version})")
            except Exception as back:
                reason += f"; flipping back failed: {_reason(back)}"
                self.write_edge_config(from_slot)  # the file at least says what should be live
        if started or flipped:
            self._cleanup_quietly(lambda: self.stop_slot(slot))
        if cand is not None and _candidates_fault(e):
            self.ctx.ledger.mark_failed_digest(digest=cand.digest, version=cand.version, target=self.target,
                                               reason=f"{at}: {reason}")
        self.ctx.ledger.finish_switch(sw.id, outcome, f"{at}: {reason}")
        keeps = f"{live.version} keeps serving" if outcome == "failed" else f"back on {live.version}"
        err = SwitchFailed(f"{sw.action} to {sw.to_version} {outcome} at {at}: {reason} ({keeps})")
        if isinstance(e, (UsageError, TamperError)):
            err.exit_code = e.exit_code  # bad input or tampering keeps its own exit code
        raise err from None

    def _cleanup_quietly(self, fn) -> None:
        try:
            fn()
        except Exception as e:  # the engine may be the thing that failed; the report already says why
            self.ctx.note(f"  [yellow]cleanup failed: {_reason(e)}[/yellow]")

    def _begin(self, action: str, version: str, from_version: str | None, digest: str | None = None,
               data: dict[str, Any] | None = None) -> Switch:
        if digest is None:
            push = self.ctx.ledger.latest_push(version, self.variant)
            digest = push.digest if push else None
        command = "orchestrator " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        return self.ctx.ledger.begin_switch(target=self.target, action=action, to_version=version,
                                            from_version=from_version, digest=digest, command=command,
                                            data=data or {})

    # -- the checks of a switch -----------------------------------------------------------------
    def resolve(self, version: str, previous: Live | None = None, tolerate_registry_down: bool = False) -> Candidate:
        known_version(self.ctx, version)
        check = self.spec.image_source == "registry"
        # A rollback returns to exactly what ran before, in the variant it ran.
        variant = (previous is not None and self.ctx.ledger.variant_of_digest(previous.previous_digest)) or self.variant
        if variant == self.variant:
            self.ctx.note(f"target {self.target} deploys the {variant} variant ({self.variant_choice()[1]})")
        else:
            self.ctx.note(f"target {self.target} returns to the {variant} variant that ran before")
        try:
            dep = resolve(self.ctx, version, variant=variant, check_registry=check)
        except TamperError:
            raise
        except RegistryError as e:
            if not tolerate_registry_down:
                raise
            self.ctx.note(f"  [yellow]registry check skipped for the rollback: {e}[/yellow]")
            dep = resolve(self.ctx, version, variant=variant, check_registry=False)
        if previous is not None and previous.previous_digest and previous.previous_digest != dep.digest:
            # Roll back to exactly what ran before, even if the version was pushed again since.
            push = next((p for p in self.ctx.ledger.pushes(version) if p.digest == previous.previous_digest), None)
            if push is not None:
                dep = Deployable(version, push.variant, push.digest, push.image_ref,
                                 self.ctx.ledger.build(push.build_id), push)
        image = dep.build.image_id if self.spec.image_source == "local" else dep.image_ref
        return Candidate(version=version, digest=dep.digest, image=image, deployable=dep)

    def smoke(self, slot: str, cand: Candidate) -> None:
        recorded = cand.deployable.build.golden
        if not recorded:
            raise SwitchFailed(f"build of {cand.version} has no recorded golden outputs: rebuild it")
        got = golden.collect(self.slot_url(slot), headers=self.client_headers)
        problems = golden.compare(recorded, got)
        if problems:
            more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
            raise SmokeFailed(f"golden images differ from the build's record: {'; '.join(problems[:3])}{more}")

    def confirm(self, cand: Candidate, timeout_s: float = 15.0) -> None:
        """Three answers in a row through the public edge must name the candidate."""
        want_sha = cand.deployable.build.manifest_sha256
        deadline = time.monotonic() + timeout_s
        streak, last = 0, "no answer"
        with requests.Session() as s:
            s.headers.update(self.client_headers)
            while streak < 3:
                try:
                    r = s.get(f"{self.edge_url}/v1/version", timeout=5)
                    body = r.json() if r.ok else {}
                    got_sha = body.get("manifest_sha256")
                    if body.get("version") == cand.version and (not got_sha or got_sha == want_sha):
                        streak += 1
                        continue
                    last = f"{r.status_code} version={body.get('version')!r}"
                except (requests.RequestException, ValueError) as e:
                    last = type(e).__name__
                streak = 0
                if time.monotonic() > deadline:
                    raise ConfirmFailed(f"the edge does not serve {cand.version} after {timeout_s:g}s (last: {last})")
                time.sleep(0.1)

    def watch(self, rt: EdgeRuntime, slot: str) -> None:
        """Requests through the edge for watch_s seconds, plus the edge's own 5xx counter of the slot."""
        before = rt.stats().get(slot)
        images = golden.golden_images()
        sent = errors = 0
        last_error = ""
        deadline = time.monotonic() + self.spec.watch_s
        with requests.Session() as s:
            s.headers.update(self.client_headers)
            i = 0
            while time.monotonic() < deadline:
                try:
                    if i % 4 == 3 and images:
                        name, data = images[(i // 4) % len(images)]
                        r = s.post(f"{self.edge_url}/v1/diagnose", json={"image": base64.b64encode(data).decode()},
                                   timeout=30)
                    else:
                        r = s.get(f"{self.edge_url}/v1/version", timeout=5)
                    bad = r.status_code >= 500
                    if bad:
                        last_error = f"{r.request.method} {r.request.path_url} answered {r.status_code}"
                except requests.RequestException as e:
                    bad, last_error = True, f"request failed ({type(e).__name__})"
                sent += 1
                errors += bad
                i += 1
                time.sleep(0.1)
        after = rt.stats().get(slot)
        edge_5xx = edge_total = 0
        if before and after:
            edge_5xx = after.http_5xx - before.http_5xx
            edge_total = after.http_total - before.http_total
        rate = max(errors / sent if sent else 0.0, edge_5xx / edge_total if edge_total else 0.0)
        if rate > self.spec.watch_max_error_rate:
            raise WatchFailed(f"error rate {rate:.1%} in the watch window ({errors}/{sent} probes failed, "
                              f"edge counted {edge_5xx}/{edge_total} 5xx; last: {last_error or 'edge counter'})")

    # -- repair and drift -------------------------------------------------------------------------
    def repair_unfinished(self) -> list[dict[str, Any]]:
        """Repair switches left 'running' by a dead process (call with the target lock held)."""
        done = []
        for sw in self.ctx.ledger.unfinished_switches(self.target):
            self.ctx.note(f"[yellow]switch #{sw.id} ({sw.action} → {sw.to_version}) was interrupted at "
                          f"step {sw.step}: repairing[/yellow]")
            what = self._repair(sw)
            self.ctx.ledger.add_event("repair", what, target=self.target, switch=sw.id, step=sw.step)
            self.ctx.note(f"  {what}")
            done.append({"id": sw.id, "action": sw.action, "to_version": sw.to_version, "step": sw.step,
                         "repair": what})
        return done

    def _repair(self, sw: Switch) -> str:
        live = self.ctx.ledger.live(self.target)
        data = sw.data
        cand_slot = data.get("candidate_slot")
        image = data.get("image")
        forward = sw.step in FORWARD_STEPS and live is not None and cand_slot and image \
            and self.slot_runs(cand_slot, image) and self.ready_now(cand_slot)
        if forward:
            rt = self.edge_or_start(cand_slot)
            self.point_edge_at(rt, cand_slot)
            rt.flip(cand_slot, other(cand_slot))
            self.write_edge_config(cand_slot)
            if not data.get("keep_previous"):
                self._cleanup_quietly(lambda: self.stop_slot(other(cand_slot)))
            what = f"completed forward: {sw.to_version} live on {cand_slot} (it had passed flip, confirm and watch)"
            with self.ctx.ledger.transaction() as db:
                self.ctx.ledger.set_live(self.target, version=sw.to_version, digest=data.get("digest") or sw.digest,
                                         image_ref=image, slot=cand_slot, db=db)
                self.ctx.ledger.finish_switch(sw.id, "interrupted", f"at {sw.step}; {what}", db=db)
            return what
        if live is None:  # an interrupted first `up`: nothing was live, start clean next time
            if cand_slot:
                self._cleanup_quietly(lambda: self.stop_slot(cand_slot))
            what = "nothing was live yet; the half-started slot was stopped"
        else:
            repaired = self.reconcile(live)
            # Before `start` the switch never touched the idle slot (it may hold a warm previous version).
            stop = bool(cand_slot and cand_slot != live.slot and sw.step not in (None, "resolve"))
            if stop:
                self._cleanup_quietly(lambda: self.stop_slot(cand_slot))
            what = (f"back to {live.version} on {live.slot}" + (f" ({'; '.join(repaired)})" if repaired else "")
                    + (f"; candidate slot {cand_slot} stopped" if stop else ""))
        self.ctx.ledger.finish_switch(sw.id, "interrupted", f"at {sw.step}; {what}")
        return what

    def edge_or_start(self, live_slot: str) -> EdgeRuntime:
        try:
            return self.edge()
        except EdgeError:
            return self.start_edge(live_slot)

    def reconcile(self, live: Live) -> list[str]:
        """Make the host match the ledger's live version: live slot running + ready, edge sending it all traffic."""
        fixed: list[str] = []
        slot = live.slot or "blue"
        if not (self.slot_runs(slot, live.image_ref) and self.ready_now(slot)):
            self.ctx.note(f"  live slot {slot} does not run {live.version}: starting it")
            self.start_slot(slot, live.image_ref)
            probe.wait_ready(self.slot_url(slot), self.spec.ready_timeout_s, abort=lambda: self.slot_exit_reason(slot))
            fixed.append(f"live slot {slot} restarted on {live.version}")
        try:
            rt = self.edge()
        except EdgeError:
            rt = self.start_edge(slot)
            fixed.append("edge started")
        serving = rt.serving_slots()
        if serving != [slot]:
            self.point_edge_at(rt, slot)
            rt.flip(slot, other(slot))
            fixed.append(f"edge sent traffic to {', '.join(serving) or 'no slot'}; now {slot}")
        if haproxy.config_live_slot(self.cfg_path.read_text() if self.cfg_path.is_file() else "") != slot:
            self.write_edge_config(slot)
            fixed.append(f"haproxy.cfg rewritten for {slot}")
        for f in fixed:
            self.ctx.note(f"  [yellow]repaired drift: {f}[/yellow]")
        if fixed:
            self.ctx.ledger.add_event("drift-repaired", "; ".join(fixed), target=self.target)
        return fixed

    def known_image(self, container) -> str | None:
        """The version the ledger knows this container's image as, or None."""
        image_id = container.attrs.get("Image")
        for b in self.ctx.ledger.builds():
            if b.image_id == image_id:
                return b.version
        try:
            digests = self.client.images.get(image_id).attrs.get("RepoDigests") or []
        except Exception:
            digests = []
        for ref in digests:
            v = self.ctx.ledger.version_for_digest(ref.rpartition("@")[2])
            if v:
                return v
        return None

    def drift(self, live: Live | None, containers: dict[str, Any], servers: dict[str, Any] | None) -> list[str]:
        out = []
        for slot in SLOTS:
            c = containers.get(slot)
            if c is not None and c.status == "running" and self.known_image(c) is None:
                out.append(f"slot {slot} runs an image the ledger does not know ({c.attrs.get('Config', {}).get('Image')})")
        if live is None:
            return out
        if not self.slot_runs(live.slot, live.image_ref):
            out.append(f"live slot {live.slot} does not run {live.version} ({short(live.image_ref)})")
        if servers is None:
            out.append("the edge is not running")
        else:
            serving = sorted(s for s, st in servers.items() if st.serving)
            if serving != [live.slot]:
                out.append(f"the edge sends traffic to {', '.join(serving) or 'no slot'}, "
                           f"the ledger says {live.slot}")
        on_disk = haproxy.config_live_slot(self.cfg_path.read_text()) if self.cfg_path.is_file() else None
        if on_disk != live.slot:
            out.append(f"haproxy.cfg on disk enables {on_disk or 'no single slot'}, the ledger says {live.slot}")
        return out

    def status(self) -> dict[str, Any]:
        interrupted: list[dict[str, Any]] = []
        running: list[dict[str, Any]] = []
        try:
            with target_lock(self.ctx.config.state_path, self.target, 0):
                interrupted = self.repair_unfinished()
        except LockBusyError:
            running = [{"id": s.id, "action": s.action, "to_version": s.to_version, "step": s.step}
                       for s in self.ctx.ledger.unfinished_switches(self.target)]
        live = self.ctx.ledger.live(self.target)
        containers = self.containers()
        try:
            servers = self.edge().servers()
        except EdgeError:
            servers = None
        slots = []
        for slot in SLOTS:
            c = containers.get(slot)
            st = servers.get(slot) if servers else None
            slots.append({
                "slot": slot, "port": self.slot_port(slot),
                "state": c.status if c is not None else "absent",
                "health": (c.attrs.get("State", {}).get("Health") or {}).get("Status") if c is not None else None,
                "image": c.attrs.get("Config", {}).get("Image") if c is not None else None,
                "version": self.known_image(c) if c is not None else None,
                "edge": _edge_word(st),
                # A slot the kernel killed for memory comes back by itself (restart: unless-stopped):
                # these two are the only trace of it.
                "restarts": int(c.attrs.get("RestartCount") or 0) if c is not None else None,
                "oom_killed": bool(c.attrs.get("State", {}).get("OOMKilled")) if c is not None else None,
            })
        out: dict[str, Any] = {"target": self.target, "kind": "compose", "project": self.spec.project,
                               "compose": self.project.flavor.describe(), "edge": self.edge_url,
                               "live": None, "previous": None, "slots": slots,
                               "drift": self.drift(live, containers, servers),
                               "interrupted": interrupted, "switch_running": running}
        if live is not None:
            out["live"] = {"version": live.version, "digest": live.digest, "image": live.image_ref,
                           "variant": self.ctx.ledger.variant_of_digest(live.digest), "slot": live.slot,
                           "since": live.since, "health": self.edge_health()}
            if live.previous_version:
                warm = self.slot_runs(live.previous_slot, live.previous_image_ref) if live.previous_slot else False
                out["previous"] = {"version": live.previous_version, "digest": live.previous_digest,
                                   "variant": self.ctx.ledger.variant_of_digest(live.previous_digest),
                                   "image": live.previous_image_ref, "slot": live.previous_slot, "warm": warm}
        return out

    def edge_health(self) -> str:
        try:
            r = requests.get(f"{self.edge_url}/ready", timeout=3)
            return "ready" if r.status_code == 200 else f"/ready answered {r.status_code}"
        except requests.RequestException as e:
            return f"edge unreachable ({type(e).__name__})"

    def history(self, limit: int | None = None) -> dict[str, Any]:
        return history(self.ctx, self.target, limit)

    def down(self) -> None:
        """Remove the project's containers and network (tests, `orchestrator down` is not a verb)."""
        self.compose(self.project.down())


# -- failures a switch can meet ------------------------------------------------------------------

class SmokeFailed(SwitchFailed):
    """The candidate's golden outputs differ from its build's record."""


class ConfirmFailed(SwitchFailed):
    """The public edge does not serve the candidate after the flip."""


class WatchFailed(SwitchFailed):
    """The candidate answered errors in the watch window."""


def _candidates_fault(e: Exception) -> bool:
    """Is this failure the candidate image's own (so its digest is marked failed)?"""
    return isinstance(e, (probe.ProbeError, SmokeFailed, ConfirmFailed, WatchFailed)) or (
        isinstance(e, EngineError) and "exited" in str(e))


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _validate(version: str) -> None:
    try:
        validate_version_name(version)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _edge_word(st) -> str:
    if st is None:
        return "unknown"
    if st.maint:
        return "disabled"
    if st.draining:
        return "draining"
    if not st.up:
        return "down"
    return "serving"


# -- GPU room ------------------------------------------------------------------------------------

def gpu_memory() -> tuple[int, int] | None:
    """(free MiB, total MiB) of the fullest GPU per nvidia-smi, or None where there is none."""
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=memory.free,memory.total", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return parse_gpu_memory(r.stdout)


def parse_gpu_memory(text: str) -> tuple[int, int] | None:
    rows = []
    for line in text.strip().splitlines():
        try:
            free, total = (int(x.strip()) for x in line.split(","))
        except ValueError:
            continue
        rows.append((free, total))
    return min(rows) if rows else None


def gpu_room_verdict(free_mib: int, total_mib: int) -> str | None:
    """A second model needs about what the live one holds (total - free) plus headroom."""
    # Measured by `make gpu-check` on an H100 (docs/benchmarks.md, "On a GPU"): one version serving
    # batch 32 reserves 540-598 MiB at ViT-B size (1,104 at ViT-L) plus ~500 MiB of CUDA context, so
    # what the live process holds, x1.1 + 512 MiB, covers a candidate of the same size.
    used = total_mib - free_mib
    need = int(used * 1.1) + 512
    if free_mib < need:
        return (f"the GPU has {free_mib} MiB free of {total_mib} MiB; the candidate needs about {need} MiB next to "
                f"the live model (blue and green are loaded at once): free GPU memory or use a larger GPU")
    return None
