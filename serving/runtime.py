"""The service's lifecycle: load the model in the background, serve, drain on shutdown.

    STARTING ──load + hash check + warm-up ok──► READY ──SIGTERM──► STOPPING
        └──────────────any failure──────────────► FAILED

`/health` answers in every state; `/ready` is 200 only in READY. Loading runs in a thread so
the event loop keeps answering probes while weights load.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from serving.batching import BatchStats, MicroBatcher
from serving.bundles import HashCheck, ModelLoadError, read_json
from serving.errors import NotReady
from serving.manifest import MANIFEST_FILE, Manifest, ManifestError, load_manifest, manifest_sha256
from serving.metrics import ServiceMetrics
from serving.phases import Phases, seconds_since_process_start
from serving.response_cache import ResponseCache
from serving.settings import Settings

MODEL_SET_FILE = "model_set.json"  # serving.pipeline's name too; not imported from there: it pulls in torch

log = logging.getLogger("serving.runtime")


class Health(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"


ALL_STATES = tuple(h.value for h in Health)


class PipelineLike(Protocol):
    """What the HTTP side needs from `serving.pipeline.Pipeline`."""

    crops: dict[str, list[str]]
    info: dict[str, Any]

    def warmup(self) -> None: ...
    def diagnose(self, images: list, crop_hints: list[str | None]) -> list: ...
    def adapter_info(self, crop: str) -> dict: ...


PipelineLoader = Callable[[Settings, Manifest], PipelineLike]


def load_pipeline(settings: Settings, manifest: Manifest) -> PipelineLike:
    """The real loader: `serving.pipeline.Pipeline.load` (imported here: it pulls in torch).

    The set's files are hashed from the start, on another core, while torch, transformers and peft
    import (seconds of GIL-bound work); that also brings the weights into the page cache.
    """
    phases = Phases()
    hashing = start_hash_check(settings.model_dir)
    with phases.phase("imports"):
        from serving.pipeline import Pipeline
    return Pipeline.load(settings.model_dir, manifest, device=settings.device, dtype=settings.precision,
                         dtype_source="AADS_PRECISION", phases=phases, hashing=hashing)


def start_hash_check(model_dir: Path) -> HashCheck | None:
    """A running check of every file `model_set.json` lists, or None when it cannot be read yet
    (then `Pipeline.load` reports what is wrong with the set, as it always did)."""
    try:
        files = read_json(Path(model_dir) / MODEL_SET_FILE).get("files")
    except (ModelLoadError, AttributeError):
        return None
    if not isinstance(files, dict):
        return None
    return HashCheck(Path(model_dir), files, f"model set {model_dir}")


def resolve_manifest_dir(path: Path) -> Path:
    """`path` itself if it holds version.yaml, else its one sub-folder that does.

    An image may mount the version folder itself or a folder holding it (`/app/version/<v>/`),
    since the manifest loader checks that the folder is named after the version.
    """
    if (path / MANIFEST_FILE).is_file():
        return path
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if (p / MANIFEST_FILE).is_file())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ManifestError(path, [f"holds {len(found)} versions ({', '.join(p.name for p in found)}); point AADS_MANIFEST_DIR at one"])
    raise ManifestError(path, [f"{MANIFEST_FILE}: not found in {path} (set AADS_MANIFEST_DIR to the version folder)"])


@dataclass(frozen=True)
class DiagnoseItem:
    image: Any  # PIL.Image.Image, decoded and checked by serving.images
    crop_hint: str | None


class Runtime:
    """Holds the state, the manifest, the pipeline and its batcher for one app."""

    def __init__(self, settings: Settings, loader: PipelineLoader, metrics: ServiceMetrics):
        self.settings = settings
        self.metrics = metrics
        self._loader = loader
        self._lock = threading.Lock()
        self.state = Health.STARTING
        self.error: str | None = None
        self.manifest: Manifest | None = None
        self.manifest_sha256: str | None = None
        self.pipeline: PipelineLike | None = None
        self.batcher: MicroBatcher[DiagnoseItem, Any] | None = None
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.load_seconds: float | None = None
        self.ready_phases: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self.cache = ResponseCache(settings.cache_entries, settings.cache_bytes)
        self.metrics.set_state(self.state.value, ALL_STATES)
        self.metrics.track_cache(self.cache)

    # -- state -------------------------------------------------------------------------------

    def _set_state(self, state: Health, error: str | None = None) -> None:
        with self._lock:
            if self.state is Health.STOPPING and state is not Health.STOPPING:
                return  # a load that finishes during shutdown does not make us ready again
            self.state, self.error = state, error
        self.metrics.set_state(state.value, ALL_STATES)

    def require_ready(self) -> PipelineLike:
        """The pipeline, or NotReady (503) naming the state."""
        pipeline = self.pipeline
        if self.state is Health.READY and pipeline is not None:
            return pipeline
        raise NotReady(self.not_ready_message(), retry_after=5 if self.state is Health.STARTING else None)

    @property
    def public_error(self) -> str | None:
        """What a client may see of a failed load: never the exception's text or a path (the log has them)."""
        if self.error is None:
            return None
        return "the model failed to load; the service log has the details"

    def require_manifest(self) -> Manifest:
        if self.manifest is None:
            raise NotReady(self.not_ready_message(), retry_after=5 if self.state is Health.STARTING else None)
        return self.manifest

    def not_ready_message(self) -> str:
        if self.state is Health.STARTING:
            return "the model is still loading; retry shortly"
        if self.state is Health.FAILED:
            return self.public_error or "the model failed to load"
        if self.state is Health.STOPPING:
            return "the service is shutting down"
        return "not ready"

    # -- loading -----------------------------------------------------------------------------

    def start_loading(self) -> None:
        self._thread = threading.Thread(target=self._load, name="model-loader", daemon=True)
        self._thread.start()

    def wait_loaded(self, timeout: float | None = None) -> Health:
        """Block until loading ended (tests and tools); returns the state."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    def _load(self) -> None:
        started = time.perf_counter()
        # Before the loader thread: interpreter start, the web stack's imports, the app's creation.
        before = seconds_since_process_start()
        try:
            manifest_started = time.perf_counter()
            version_dir = resolve_manifest_dir(self.settings.manifest_dir)
            self.manifest = load_manifest(version_dir)
            self.manifest_sha256 = manifest_sha256(version_dir)
            self.metrics.set_version(self.manifest.version)
            manifest_s = time.perf_counter() - manifest_started
            log.info("manifest %s loaded from %s; loading model set from %s",
                     self.manifest.version, version_dir, self.settings.model_dir)
            pipeline = self._loader(self.settings, self.manifest)
            warmup_started = time.perf_counter()
            pipeline.warmup()
            warmup_s = time.perf_counter() - warmup_started
        except Exception as e:  # every failure ends in FAILED with its message, never a dead thread
            message = str(e) or type(e).__name__
            log.error("model load failed: %s: %s", type(e).__name__, message)
            self._set_state(Health.FAILED, f"{type(e).__name__}: {message}")
            return
        self.load_seconds = time.perf_counter() - started
        self.metrics.model_load_seconds.set(self.load_seconds)
        phases = Phases()
        if before is not None:
            phases.add("process_start", before)
        phases.add("manifest", manifest_s)
        for name, seconds in getattr(getattr(pipeline, "phases", None), "seconds", {}).items():
            phases.add(name, seconds)
        phases.add("warmup", warmup_s)
        self.ready_phases = phases.rounded()
        self.metrics.set_ready_phases(self.ready_phases)
        info = pipeline.info
        self.metrics.model_info.labels(
            version=self.manifest.version,
            family=str(info.get("family", self.manifest.backbone.family)),
            model_id=str(info.get("model_id", self.manifest.backbone.model_id)),
            random_init=str(bool(info.get("random_init", False))).lower(),
        ).set(1)
        batcher: MicroBatcher[DiagnoseItem, Any] = MicroBatcher(
            lambda items: pipeline.diagnose([i.image for i in items], [i.crop_hint for i in items]),
            max_batch_size=self.settings.max_batch_size,
            max_wait_s=self.settings.max_wait_ms / 1000.0,
            queue_size=self.settings.queue_size,
            on_batch=self._on_batch,
        )
        batcher.start()
        self.metrics.track_queue_depth(lambda: batcher.queue_depth)
        self.metrics.start_model_series(getattr(pipeline, "crops", {}))  # test loaders may hand a bare stand-in
        self.pipeline, self.batcher = pipeline, batcher
        self.ready_at = time.time()
        self._set_state(Health.READY)
        log.info("ready: %s (%s, %s) in %.1fs; phases: %s", self.manifest.version, info.get("family"),
                 info.get("dtype", "?"), self.load_seconds, phases.summary())

    def _on_batch(self, stats: BatchStats) -> None:
        self.metrics.observe_batch(stats.size, stats.seconds)

    # -- shutdown ----------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Readiness goes 503 at once (SIGTERM); in-flight requests still finish."""
        self._set_state(Health.STOPPING)

    def stop(self) -> None:
        """After the server drained its connections: finish queued batches, end the worker."""
        self.begin_shutdown()
        if self.batcher is not None and not self.batcher.stop(timeout=self.settings.graceful_timeout_s):
            log.warning("batch worker still busy after %.0fs; exiting anyway", self.settings.graceful_timeout_s)
