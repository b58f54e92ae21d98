"""`orchestrator verify <version>`: is the pushed image still exactly what was built?

One variant at a time (cuda: <registry>:<version>, cpu: <registry>:<version>-cpu).
Checks, in order (each one a line of the report; the first failing one stops those that need it):
  registry   the variant's registry tag still resolves to the digest the ledger recorded
  image      the image `repo@digest` is on the engine (pulled from the registry when missing)
  labels     aads.version, aads.manifest-sha256, aads.backbone and the OCI version label match
             the manifest in versions/<version>/ (and the manifest is the one that was built);
             aads.variant names the variant (images built before that label have none)
  user       the image runs as a non-root user
  ready      the image starts with a read-only root filesystem and /ready turns 200
  version    /v1/version reports the version and its manifest hash
  golden     the golden images give the decisions recorded at build time
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from docker.errors import DockerException, ImageNotFound

from orchestrator import golden
from orchestrator.build import READY_TIMEOUT_S, VARIANT_LABEL, backbone_label
from orchestrator.context import Context
from orchestrator.engine import docker_client, probe_container
from orchestrator.errors import TamperError, VerifyFailed, VerifyTampered
from orchestrator.probe import ProbeError, get_json, wait_ready
from orchestrator.registry import engine_auth_config
from orchestrator.resolve import Deployable, resolve
from aads_manifest import load_manifest, manifest_sha256


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    version: str
    variant: str | None = None
    image_ref: str | None = None
    digest: str | None = None
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    tampered: bool = False  # the registry tag moved: a TamperError, not a failing check (exit 4, not 6)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "variant": self.variant, "ok": self.ok, "image_ref": self.image_ref, "digest": self.digest,
                "seconds": round(self.seconds, 2), "tampered": self.tampered, "checks": [asdict(c) for c in self.checks]}

    def failures(self) -> str:
        return "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.ok)

    def error(self, what: str) -> VerifyFailed | VerifyTampered:
        """The error a failed report raises: `what` is its start (e.g. "v5 (cpu) failed verification")."""
        cls = VerifyTampered if self.tampered else VerifyFailed
        return cls(f"{what}: {self.failures()}")


def verify(ctx: Context, version: str, *, variant: str = "cuda", start: bool = True,
           ready_timeout_s: float = READY_TIMEOUT_S) -> Report:
    started = time.monotonic()
    report = Report(version=version, variant=variant)
    try:
        _run(ctx, version, variant, report, start, ready_timeout_s)
    finally:
        report.seconds = time.monotonic() - started
    return report


def _run(ctx: Context, version: str, variant: str, report: Report, start: bool, ready_timeout_s: float) -> None:
    try:
        d: Deployable = resolve(ctx, version, variant=variant)
    except TamperError as e:
        report.add("registry", False, str(e))
        report.tampered = True
        return
    report.image_ref, report.digest = d.image_ref, d.digest
    report.add("registry", True, f"{d.push.repository}:{d.push.tag} -> {d.digest}")

    client = docker_client(timeout=600)
    try:
        image = client.images.get(d.image_ref)
        where = "on the engine"
    except ImageNotFound:
        try:
            image = client.images.pull(d.push.repository, tag=d.digest,
                                       auth_config=engine_auth_config(ctx.config, d.push.repository))
            where = "pulled from the registry"
        except DockerException as e:
            report.add("image", False, f"{d.image_ref} cannot be pulled ({str(e).splitlines()[0][:160]})")
            return
    report.add("image", True, f"{image.id[:19]} {where}")

    version_dir = ctx.config.versions_path / version
    manifest = load_manifest(version_dir)
    sha = manifest_sha256(version_dir)
    labels = image.labels or {}
    want = {"aads.version": version, "org.opencontainers.image.version": version,
            "aads.manifest-sha256": sha, "aads.backbone": backbone_label(manifest)}
    bad = [f"{k}={labels.get(k)!r} (manifest: {v!r})" for k, v in want.items() if labels.get(k) != v]
    if labels.get(VARIANT_LABEL, variant) != variant:
        bad.append(f"{VARIANT_LABEL}={labels.get(VARIANT_LABEL)!r} under the {variant} tag {d.push.tag}")
    if d.build.manifest_sha256 != sha:
        bad.append(f"versions/{version} changed since the build ({d.build.manifest_sha256[:12]} -> {sha[:12]})")
    shown = labels.get(VARIANT_LABEL) or f"{variant} (built before the {VARIANT_LABEL} label)"
    report.add("labels", not bad, "; ".join(bad) or f"version, backbone, manifest sha256 {sha[:12]} and variant "
                                                    f"{shown} match")

    user = (image.attrs.get("Config") or {}).get("User") or ""
    non_root = user not in ("", "0", "root") and not user.startswith(("0:", "root:"))
    report.add("user", non_root, f"runs as {user or 'root'}")

    if not start:
        return
    with probe_container(client, d.image_ref, name_prefix="aads-verify") as probe:
        try:
            ready_s = wait_ready(probe.base_url, ready_timeout_s, abort=probe.problem)
        except ProbeError as e:
            report.add("ready", False, str(e))
            return
        report.add("ready", True, f"ready after {ready_s:.1f}s with a read-only root filesystem")
        facts = get_json(f"{probe.base_url}/v1/version")
        ok = facts.get("version") == version and facts.get("manifest_sha256") in (None, sha)
        report.add("version", ok, f"/v1/version says {facts.get('version')} "
                                  f"(manifest {str(facts.get('manifest_sha256'))[:12]})")
        if not d.build.golden:
            report.add("golden", False, "the build recorded no golden outputs (built with --no-golden?)")
            return
        problems = golden.compare(d.build.golden, golden.collect(probe.base_url))
        report.add("golden", not problems,
                   "; ".join(problems[:4]) + (f" (+{len(problems) - 4} more)" if len(problems) > 4 else "")
                   if problems else f"{len(d.build.golden)} golden images give the recorded decisions")
