"""`orchestrator build <version>`: one immutable image per version, recorded in the ledger.

The flow reads top to bottom in `build()`: check the version may be built (valid manifest, not
frozen by a push under another manifest hash, a model set to bake) -> assemble the build
context under build/context/ -> docker build (classic builder, progress on stderr) -> start
the image on a free 127.0.0.1 port and record its decisions on the golden set -> one ledger
transaction. A build killed at any point before the last step leaves the ledger as it was.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docker.errors import APIError, DockerException, ImageNotFound
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator import golden
from orchestrator.context import Context
from orchestrator.engine import docker_client, probe_container
from orchestrator.errors import BuildFailed, EngineError, UsageError
from orchestrator.ledger import Build
from orchestrator.probe import ProbeError, get_json, wait_ready
from orchestrator.resolve import known_version
from orchestrator.variants import VARIANTS
from orchestrator.gitinfo import git_facts
from aads_manifest import HASHED_FILES, Manifest, load_manifest, manifest_sha256

# The public base by digest (a moved tag must not change an image); the local one is made and
# checked by scripts/engine.sh.
PYTHON_BASE = "python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b"
DEFAULT_BASE = {"cuda": PYTHON_BASE, "cpu": "aads-base:bookworm"}
LOCAL_BASE = "aads-base:bookworm"
CUDA_TORCH = "torch==2.13.0"
CPU_WHEEL_GLOB = "torch-2.13.0+cpu-cp311-*.whl"
WHEEL_DIRS = ("/opt/wheels",)
READY_TIMEOUT_S = 300.0
VARIANT_LABEL = "aads.variant"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODELS_HINT = "python -m serving.demo_models --version-dir {version_dir} --out {models}"


@dataclass
class BuildPlan:
    version: str
    variant: str
    version_dir: Path
    models_dir: Path
    manifest: Manifest
    manifest_sha256: str
    base_image: str
    torch: str                      # pip requirement or wheel path inside the context
    torch_wheel: Path | None        # the local wheel copied into the context (cpu)
    tag: str                        # local tag of the built image
    revision: str
    created: str
    source: str
    no_cache: bool = False
    buildargs: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)   # the operator's extra labels (--label)


# ---- checks ----------------------------------------------------------------------------------
def refuse_frozen(ctx: Context, version: str, sha: str) -> None:
    """A pushed version is frozen: refuse to build it again from a different manifest."""
    for push in reversed(ctx.ledger.pushes(version)):
        build = ctx.ledger.build(push.build_id)
        if build and build.manifest_sha256 != sha:
            raise UsageError(
                f"version {version} was pushed ({push.digest[:19]}) with manifest sha256 {build.manifest_sha256[:12]}, "
                f"but versions/{version} now hashes to {sha[:12]}: a pushed version is frozen, "
                f"make a new one with `orchestrator new-version vX.Y.Z-NAME --from {version}`"
            )


def check_models(version: str, version_dir: Path, models: Path) -> None:
    hint = MODELS_HINT.format(version_dir=version_dir, models=models)
    if not models.is_dir():
        raise UsageError(f"models directory {models} is missing: create the demo model set with `{hint}` (or `make models`)")
    info_file = models / "model_set.json"
    if not info_file.is_file():
        raise UsageError(f"models directory {models} holds no model_set.json: recreate it with `{hint}`")
    try:
        info = json.loads(info_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{info_file} cannot be read ({e})") from None
    if info.get("version") not in (None, version):
        raise UsageError(f"models directory {models} is the model set of {info.get('version')}, not {version}")


def find_cpu_wheel() -> Path:
    env = os.environ.get("AADS_TORCH_WHEEL")
    if env:
        if not Path(env).is_file():
            raise UsageError(f"AADS_TORCH_WHEEL={env}: no such file")
        return Path(env)
    dirs = list(WHEEL_DIRS)
    try:  # pip's own find-links, where the project's machines keep the CPU wheel
        out = subprocess.run(["pip", "config", "get", "global.find-links"], capture_output=True, text=True, timeout=10)
        dirs = [d for d in out.stdout.split() if d] + dirs
    except (OSError, subprocess.SubprocessError):
        pass
    for d in dirs:
        hits = sorted(glob.glob(str(Path(d.removeprefix("file://")) / CPU_WHEEL_GLOB)))
        if hits:
            return Path(hits[-1])
    raise UsageError(f"no CPU torch wheel ({CPU_WHEEL_GLOB}) in {', '.join(dirs)}: pass --torch-wheel PATH "
                     f"or set AADS_TORCH_WHEEL")


def backbone_label(manifest: Manifest) -> str:
    return f"{manifest.backbone.family}:{manifest.backbone.model_id}"


def local_tag(registry: str, version: str, variant: str) -> str:
    """The engine-local tag of a build: `<registry>:<version>-<variant>` (push adds `:<version>`)."""
    return f"{registry}:{version}-{variant}"


# ---- the plan and the context ----------------------------------------------------------------
RESERVED_LABEL_PREFIXES = ("aads.", "org.opencontainers.")


def extra_labels(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`KEY=VALUE` strings as labels; the keys this project sets itself are refused."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(c.isspace() for c in key):
            raise UsageError(f"label {pair!r}: expected KEY=VALUE (a key without spaces)")
        if key.startswith(RESERVED_LABEL_PREFIXES):
            raise UsageError(f"label {key!r}: keys starting with {' or '.join(RESERVED_LABEL_PREFIXES)} are set by "
                             f"the build itself")
        labels[key] = value
    return labels


def plan(ctx: Context, version: str, *, variant: str, models: Path | None, base_image: str | None,
         torch_wheel: Path | None, no_cache: bool = False, labels: dict[str, str] | None = None) -> BuildPlan:
    known_version(ctx, version)
    if variant not in VARIANTS:
        raise UsageError(f"unknown variant {variant!r}: choose cuda or cpu")
    version_dir = ctx.config.versions_path / version
    manifest = load_manifest(version_dir)
    sha = manifest_sha256(version_dir)
    refuse_frozen(ctx, version, sha)
    models_dir = Path(models) if models else ctx.config.models_path / version
    check_models(version, version_dir, models_dir)
    wheel = None
    if variant == "cpu":
        wheel = Path(torch_wheel) if torch_wheel else find_cpu_wheel()
        if not wheel.is_file():
            raise UsageError(f"torch wheel {wheel}: no such file")
        torch = f"/tmp/wheels/{wheel.name}"
    else:
        torch = CUDA_TORCH
    # Labels describe the source the image bakes: the serving code of this checkout.
    project = PROJECT_ROOT
    baked = [project / "serving", project / "aads_manifest", project / "images" / "serving"]
    if version_dir.resolve().is_relative_to(project):
        baked.append(version_dir)
    revision, created, source = git_facts(project, baked)
    return BuildPlan(
        version=version, variant=variant, version_dir=version_dir, models_dir=models_dir, manifest=manifest,
        manifest_sha256=sha, base_image=base_image or DEFAULT_BASE[variant], torch=torch, torch_wheel=wheel,
        tag=local_tag(ctx.config.registry, version, variant), revision=revision, created=created,
        source=source, no_cache=no_cache, labels=dict(labels or {}),
    )


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy with normalized modes (0644 files, 0755 dirs), so layer checksums depend on content only."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    for d, dirs, files in os.walk(dst):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def assemble_context(p: BuildPlan, project_root: Path, out_root: Path) -> Path:
    """Write the build context to out_root/<version>-<variant>/ (replaced as a whole)."""
    final = out_root / f"{p.version}-{p.variant}"
    out_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{p.version}-{p.variant}.", dir=out_root))
    try:
        images = project_root / "images" / "serving"
        for name in ("Dockerfile", "requirements.txt", "torch-requirements.txt"):
            shutil.copyfile(images / name, work / name)
        if (images / ".dockerignore").is_file():
            shutil.copyfile(images / ".dockerignore", work / ".dockerignore")
        ca = Path("/etc/ssl/certs/ca-certificates.crt")
        (work / "build-ca.crt").write_bytes(ca.read_bytes() if ca.is_file() else b"")
        (work / "wheels").mkdir()
        (work / "wheels" / "README").write_text("wheels the Dockerfile may install (the CPU torch wheel)\n")
        if p.torch_wheel:
            _link_or_copy(p.torch_wheel, work / "wheels" / p.torch_wheel.name)
        _copy_tree(project_root / "serving", work / "serving")
        _copy_tree(project_root / "aads_manifest", work / "aads_manifest")  # the schema serving imports
        (work / "version").mkdir()
        for name in HASHED_FILES:
            shutil.copyfile(p.version_dir / name, work / "version" / name)
        _copy_tree(p.models_dir, work / "models")
        for f in [work / "Dockerfile", work / "requirements.txt", work / "torch-requirements.txt", work / "build-ca.crt",
                  *(work / "version").iterdir(),
                  work / "wheels" / "README"]:
            os.chmod(f, 0o644)
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


def buildargs(p: BuildPlan) -> dict[str, str]:
    return {
        "BASE_IMAGE": p.base_image, "TORCH": p.torch, "VERSION": p.version, "REVISION": p.revision,
        "CREATED": p.created, "SOURCE": p.source, "BACKBONE": backbone_label(p.manifest),
        "MANIFEST_SHA256": p.manifest_sha256, "VARIANT": p.variant,
    }


# ---- docker build with progress --------------------------------------------------------------
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)")


def ensure_base(client, p: BuildPlan, explicit: bool, console: Console) -> None:
    """The base image must be on the engine; the default python base falls back to the local one
    on machines that cannot pull (this project's)."""
    try:
        client.images.get(p.base_image)
        return
    except ImageNotFound:
        pass
    try:
        console.print(f"pulling {p.base_image}")
        client.images.pull(p.base_image)
        return
    except DockerException as e:
        reason = str(e).splitlines()[0][:160]
    if not explicit and p.base_image != LOCAL_BASE:
        try:
            client.images.get(LOCAL_BASE)
            console.print(f"[yellow]note:[/] {p.base_image} cannot be pulled here; building FROM {LOCAL_BASE}")
            p.base_image = LOCAL_BASE
            return
        except ImageNotFound:
            pass
    raise EngineError(f"base image {p.base_image} is not on the engine and cannot be pulled ({reason}): "
                      f"run `make engine` for {LOCAL_BASE} or pass --base-image")


def docker_build(client, p: BuildPlan, context_dir: Path, console: Console) -> str:
    """Run the classic builder on `context_dir`; return the image id. Progress: one bar of steps."""
    log: list[str] = []
    image_id = None
    with Progress(TextColumn("[bold]build[/] {task.fields[step]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TextColumn("{task.description}"), console=console, transient=False) as bar:
        task = bar.add_task("", total=None, step="")
        try:
            stream = client.api.build(path=str(context_dir), tag=p.tag, buildargs=buildargs(p), labels=p.labels or None, rm=True,
                                      forcerm=True, pull=False, nocache=p.no_cache, decode=True)
            for event in stream:
                if "error" in event:
                    detail = (event.get("errorDetail") or {}).get("message") or event["error"]
                    tail = [line for line in log[-6:] if line.strip()]
                    last = tail[-1] if tail else ""
                    raise BuildFailed(f"docker build of {p.version} failed: {detail.strip()}"
                                      + (f" (last output: {last[:200]})" if last and last not in detail else ""))
                if "aux" in event and "ID" in event["aux"]:
                    image_id = event["aux"]["ID"]
                text = event.get("stream") or ""
                for line in text.splitlines():
                    line = line.strip()
                    if not line:
                        continue
                    log.append(line)
                    m = _STEP.match(line)
                    if m:
                        if not console.is_terminal:  # CI logs: one line per step instead of a live bar
                            console.print(f"step {m.group(1)}/{m.group(2)}: {m.group(3)[:100]}", markup=False)
                        bar.update(task, completed=int(m.group(1)) - 1, total=int(m.group(2)),
                                   step=f"step {m.group(1)}/{m.group(2)}", description=m.group(3)[:60])
                    elif line.startswith("---> Using cache"):
                        bar.update(task, description="(cached)")
                    elif not line.startswith("--->") and not line.startswith("Removing intermediate"):
                        bar.update(task, description=line[:70])
            bar.update(task, completed=bar.tasks[0].total or 0, description="done")
        except APIError as e:
            raise EngineError(f"docker build of {p.version} refused: {e.explanation or e}") from None
    if not image_id:
        m = next((re.match(r"Successfully built ([0-9a-f]+)", x) for x in reversed(log) if x.startswith("Successfully built")), None)
        if not m:
            raise BuildFailed(f"docker build of {p.version} ended without an image id")
        image_id = client.images.get(m.group(1)).id
    return image_id


# ---- golden outputs --------------------------------------------------------------------------
def record_golden(client, image: str, version: str, sha: str, console: Console,
                  timeout_s: float = READY_TIMEOUT_S) -> tuple[list[dict[str, Any]], float]:
    """Start the image (read-only root, non-root) and ask it the golden set; (outputs, ready seconds)."""
    with probe_container(client, image, name_prefix="aads-build-probe") as probe:
        with console.status(f"starting {version} to record its golden outputs"):
            try:
                ready_s = wait_ready(probe.base_url, timeout_s, abort=probe.problem)
            except ProbeError as e:
                raise BuildFailed(f"the built image of {version} did not become ready: {e}") from None
            facts = get_json(f"{probe.base_url}/v1/version")
            if facts.get("version") != version or facts.get("manifest_sha256") not in (None, sha):
                raise BuildFailed(f"the built image reports version {facts.get('version')} / manifest "
                                  f"{str(facts.get('manifest_sha256'))[:12]}, expected {version} / {sha[:12]}")
            outputs = golden.collect(probe.base_url)
    return outputs, ready_s


def reusable_golden(ctx: Context, version: str, image_id: str) -> Build | None:
    """An earlier build of this very image whose golden outputs cover today's golden set."""
    wanted = golden.fingerprint()
    for b in reversed(ctx.ledger.builds(version)):
        if b.image_id == image_id and sorted((g["image"], g.get("sha256")) for g in b.golden) == wanted:
            return b
    return None


def image_size(client, image_id: str) -> int:
    return int(client.images.get(image_id).attrs.get("Size") or 0)


# ---- the command's flow ----------------------------------------------------------------------
def build(ctx: Context, version: str, *, variant: str = "cuda", models: Path | None = None,
          base_image: str | None = None, torch_wheel: Path | None = None, no_cache: bool = False,
          golden_outputs: bool = True, labels: dict[str, str] | None = None) -> Build:
    console = ctx.stderr
    p = plan(ctx, version, variant=variant, models=models, base_image=base_image, torch_wheel=torch_wheel,
             no_cache=no_cache, labels=labels)
    client = docker_client(timeout=3600)
    ensure_base(client, p, explicit=base_image is not None, console=console)
    root = ctx.config.root
    project_root = PROJECT_ROOT
    started = time.monotonic()
    context_dir = assemble_context(p, project_root, root / "build" / "context")
    console.print(f"building {p.tag} ({p.variant}, FROM {p.base_image}, models {p.models_dir})")
    image_id = docker_build(client, p, context_dir, console)
    build_seconds = time.monotonic() - started
    size = image_size(client, image_id)
    console.print(f"built {image_id[:19]} in {build_seconds:.1f}s, {size / 1e6:.0f} MB")
    outputs: list[dict[str, Any]] = []
    earlier = reusable_golden(ctx, version, image_id)
    if earlier is not None:
        # The same image (same id: same bytes) gives the same decisions: no need to start it again.
        outputs = earlier.golden
        console.print(f"golden outputs of build {earlier.id} reused (same image {image_id[:19]})")
    elif golden_outputs:
        outputs, ready_s = record_golden(client, image_id, version, p.manifest_sha256, console)
        console.print(f"golden outputs recorded ({len(outputs)} images; ready after {ready_s:.1f}s)")
    # The only ledger write, at the very end: a build killed before this leaves no trace.
    return ctx.ledger.record_build(
        version=version, variant=p.variant, image_id=image_id, manifest_sha256=p.manifest_sha256,
        git_commit=p.revision, size_bytes=size, golden=outputs, build_seconds=round(build_seconds, 2),
    )
