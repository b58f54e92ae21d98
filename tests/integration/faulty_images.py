"""Faulty candidate versions for the switch fault tests, built FROM a real serving image.

Each faulty image is a real built serving image plus one small layer: tests/integration/fault_wrapper.py
as the entrypoint, which runs the image's own command behind a fault (crash at start, never ready,
wrong golden answers, 5xx through the edge after the flip, answers through the edge held back by a
fixed delay). It is pushed to the test registry
repository and recorded in the test ledger as a version of its own, with a version folder copied
from its base version under a new name, so `orchestrator switch <faulty version>` treats it like
any other version: resolve -> start -> ready -> smoke -> flip -> confirm -> watch.

    fv = make_faulty_version(client, ledger, repository=repo, versions_dir=tmp_versions,
                             base_version="v5.5.3-performance", fault="never-ready")
    ... orchestrator switch fv.version ...
    remove_faulty_version(client, fv)

`make_faulty_rebuild` records the faulty image as a rebuild of its base version instead (same name,
manifest and golden outputs): the canary tests use it for a candidate that is slow, not renamed.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import APIError, BuildError, ImageNotFound

from orchestrator.ledger import Ledger
from serving.manifest import manifest_sha256, validate_version_name

FAULTS = ("crash", "never-ready", "wrong-golden", "5xx-after-flip", "slow")
WRAPPER = Path(__file__).with_name("fault_wrapper.py")
WRAPPER_PATH = "/opt/aads-fault/fault_wrapper.py"
BUILD_LABEL = "aads.test.fault"


class FaultImageError(RuntimeError):
    """A faulty image could not be built, pushed or recorded."""


@dataclass(frozen=True)
class FaultyVersion:
    version: str         # e.g. v5.5.3-fault-never-ready
    fault: str
    base_version: str
    image_id: str
    repository: str
    tag: str
    digest: str          # registry manifest digest (sha256:...)

    @property
    def image_ref(self) -> str:
        return f"{self.repository}@{self.digest}"


def fault_version_name(base_version: str, fault: str, suffix: str = "") -> str:
    """'v5.5.3-performance' + 'never-ready' -> 'v5.5.3-fault-never-ready' (a valid version name)."""
    if fault not in FAULTS and fault != "tamper":
        raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")
    numbers = base_version.split("-", 1)[0]
    return validate_version_name(f"{numbers}-fault-{fault}{'-' + suffix if suffix else ''}")


def copy_version_dir(versions_src: Path, versions_dir: Path, base_version: str, new_version: str) -> Path:
    """versions_dir/<new_version>: the base version's folder with its `version:` line renamed."""
    src, dst = Path(versions_src) / base_version, Path(versions_dir) / new_version
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    manifest = dst / "version.yaml"
    text, n = re.subn(rf"^version:\s*{re.escape(base_version)}\s*$", f"version: {new_version}",
                      manifest.read_text(), count=1, flags=re.M)
    if n != 1:
        raise FaultImageError(f"{manifest}: no `version: {base_version}` line to rename")
    manifest.write_text(text)
    return dst


def _image_command(client: docker.DockerClient, image: str) -> list[str]:
    """The base image's own command (entrypoint + cmd), which the wrapper runs behind the fault."""
    try:
        config = client.images.get(image).attrs["Config"]
    except ImageNotFound:
        raise FaultImageError(f"base image {image} is not on this engine") from None
    argv = (config.get("Entrypoint") or []) + (config.get("Cmd") or [])
    if not argv:
        raise FaultImageError(f"base image {image} has no command to wrap")
    return argv


def dockerfile(base_image: str, base_command: list[str], *, fault: str, version: str, manifest_sha: str,
               pass_first: int, delay_s: float = 0.0) -> str:
    env = {"AADS_FAULT": fault, "AADS_FAULT_VERSION": version, "AADS_FAULT_MANIFEST_SHA256": manifest_sha,
           "AADS_FAULT_PASS_FIRST": str(pass_first), "AADS_FAULT_DELAY_S": f"{delay_s:g}",
           "AADS_FAULT_INNER_PORT": "8001",
           "AADS_BUILD_VERSION": version}
    labels = {"aads.version": version, "org.opencontainers.image.version": version,
              "aads.manifest-sha256": manifest_sha, BUILD_LABEL: fault}
    return "\n".join([
        f"FROM {base_image}",
        f"COPY fault_wrapper.py {WRAPPER_PATH}",
        "ENV " + " ".join(f"{k}={json.dumps(v)}" for k, v in env.items()),
        "LABEL " + " ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in labels.items()),
        f'ENTRYPOINT ["python3", "{WRAPPER_PATH}"]',
        f"CMD {json.dumps(base_command)}",
        "",
    ])


def _context_tar(files: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def build_faulty_image(client: docker.DockerClient, base_image: str, *, fault: str, version: str,
                       manifest_sha: str, tag: str, pass_first: int = 0, delay_s: float = 0.0) -> str:
    """Build the faulty image FROM `base_image`, tag it `tag`; return its image id."""
    text = dockerfile(base_image, _image_command(client, base_image), fault=fault, version=version,
                      manifest_sha=manifest_sha, pass_first=pass_first, delay_s=delay_s)
    context = _context_tar({"Dockerfile": text.encode(), "fault_wrapper.py": WRAPPER.read_bytes()})
    try:
        image, _ = client.images.build(fileobj=context, custom_context=True, tag=tag, pull=False, rm=True,
                                       forcerm=True, labels={BUILD_LABEL: fault})
    except BuildError as e:
        log = "".join(str(x.get("stream", x.get("error", ""))) for x in e.build_log)[-1500:]
        raise FaultImageError(f"building the {fault} image failed: {e.msg}\n{log}") from None
    return image.id


def push_image(client: docker.DockerClient, repository: str, tag: str) -> str:
    """Push repository:tag; return the registry's manifest digest."""
    digest = None
    try:
        for event in client.images.push(repository, tag=tag, stream=True, decode=True):
            if "error" in event:
                raise FaultImageError(f"push of {repository}:{tag} failed: {event['error']}")
            aux = event.get("aux") or {}
            digest = aux.get("Digest", digest)
    except APIError as e:
        raise FaultImageError(f"push of {repository}:{tag} failed: {e.explanation or e}") from None
    if not digest:
        raise FaultImageError(f"push of {repository}:{tag} gave no digest")
    return digest


def make_faulty_version(client: docker.DockerClient, ledger: Ledger, *, repository: str, versions_dir: Path,
                        base_version: str, fault: str, versions_src: Path | None = None,
                        pass_first: int = 0, suffix: str = "") -> FaultyVersion:
    """Build, push and record a faulty version derived from the latest pushed build of `base_version`.

    `versions_src` holds the base version's folder (default: `versions_dir`); the new folder goes
    into `versions_dir`. The ledger gets a build (with the base build's golden outputs, which the
    smoke test compares against) and a push, exactly as `orchestrator build` + `push` record them.
    """
    base_push = ledger.latest_push(base_version)
    if base_push is None:
        raise FaultImageError(f"{base_version} is not pushed in the test ledger {ledger.path}")
    base_build = ledger.build(base_push.build_id)
    version = fault_version_name(base_version, fault, suffix)
    folder = copy_version_dir(versions_src or versions_dir, versions_dir, base_version, version)
    sha = manifest_sha256(folder)
    image_id = build_faulty_image(client, base_build.image_id, fault=fault, version=version, manifest_sha=sha,
                                  tag=f"{repository}:{version}", pass_first=pass_first)
    digest = push_image(client, repository, version)
    build = ledger.record_build(version=version, variant=base_build.variant, image_id=image_id,
                                manifest_sha256=sha, git_commit=base_build.git_commit, size_bytes=None,
                                golden=base_build.golden, build_seconds=None)
    ledger.record_push(version=version, build_id=build.id, repository=repository, tag=version, digest=digest)
    return FaultyVersion(version=version, fault=fault, base_version=base_version, image_id=image_id,
                         repository=repository, tag=version, digest=digest)


def make_faulty_rebuild(client: docker.DockerClient, ledger: Ledger, *, base_digest: str, fault: str,
                        delay_s: float = 0.0) -> tuple[str, str]:
    """A faulty REBUILD of the pushed build whose digest is `base_digest`: the same version name,
    manifest and golden outputs, the fault wrapper in front (e.g. `slow`). Pushed to the same
    repository under a tag of its own and recorded as a newer build + push of that version, so
    `orchestrator switch <version>` picks it; returns (digest, image id).

    A rebuild, not a version of its own, because the service labels its metrics with its manifest's
    version: live and candidate then run the same version and the canary analysis tells them apart
    by slot, as it does for any rebuild.
    """
    base_push = next((p for p in ledger.pushes() if p.digest == base_digest), None)
    if base_push is None:
        raise FaultImageError(f"no push of digest {base_digest} in the test ledger {ledger.path}")
    base_build = ledger.build(base_push.build_id)
    tag = f"{base_push.version}-{base_build.variant}-{fault}-{secrets.token_hex(3)}"
    image_id = build_faulty_image(client, base_build.image_id, fault=fault, version=base_push.version,
                                  manifest_sha=base_build.manifest_sha256, tag=f"{base_push.repository}:{tag}",
                                  delay_s=delay_s)
    digest = push_image(client, base_push.repository, tag)
    build = ledger.record_build(version=base_push.version, variant=base_build.variant, image_id=image_id,
                                manifest_sha256=base_build.manifest_sha256, git_commit=base_build.git_commit,
                                size_bytes=None, golden=base_build.golden, build_seconds=None)
    ledger.record_push(version=base_push.version, build_id=build.id, repository=base_push.repository, tag=tag,
                       digest=digest)
    return digest, image_id


def remove_faulty_version(client: docker.DockerClient, fv: FaultyVersion) -> None:
    """Remove the local image (tag and digest reference); the test registry goes with its repository."""
    for ref in (f"{fv.repository}:{fv.tag}", fv.image_ref, fv.image_id):
        try:
            client.images.remove(ref, force=True, noprune=False)
        except (ImageNotFound, APIError):
            pass
