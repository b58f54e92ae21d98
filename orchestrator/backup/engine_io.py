"""The engine calls backups make: save and load as byte streams, inspect, tag, remove, read files.

Docker's exceptions stop here and come out as EngineError with the engine's own explanation.
Both directions stream in 1 MiB chunks, so memory stays flat however large the image.
"""

from __future__ import annotations

import io
import json
import queue
import shutil
import tarfile
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from orchestrator.errors import EngineError

CHUNK = 1 << 20
MODEL_SET_FILE = "model_set.json"


def get_image(client: docker.DockerClient, ref: str) -> Any | None:
    """The image `ref` names (an id or a tag), or None when the engine does not have it."""
    try:
        return client.images.get(ref)
    except (ImageNotFound, NotFound):
        return None
    except DockerException as e:
        raise EngineError(f"cannot inspect image {ref}: {_explain(e)}") from None


def save_chunks(client: docker.DockerClient, image_id: str) -> Iterator[bytes]:
    """`docker save <image id>` as a stream of chunks (the tar carries no tags).

    A thread reads ahead (at most PREFETCH chunks), so receiving from the engine overlaps with
    hashing and writing instead of taking turns with them.
    """
    def source() -> Iterator[bytes]:
        try:
            yield from client.api.get_image(image_id, chunk_size=CHUNK)
        except DockerException as e:
            raise EngineError(f"docker save of {image_id[:19]} failed: {_explain(e)}") from None

    return read_ahead(source(), PREFETCH)


PREFETCH = 8
_END = object()


def read_ahead(chunks: Iterator[bytes], depth: int, *, join_timeout: float | None = None) -> Iterator[bytes]:
    """Iterate `chunks` in a background thread, `depth` items ahead; errors come out in order.

    `join_timeout` set: closing the iterator waits (that long at most) for the thread to stop, so
    the caller may touch what `chunks` reads from afterwards.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():  # the consumer may have gone away: never block for good
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        # The engine's HTTP chunks are 32 KiB: hand them on in pieces of at least CHUNK, so the
        # consumer's per-chunk work (hash call, write syscall, queue hand-off) is paid per MiB.
        try:
            parts: list[bytes] = []
            size = 0
            for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size >= CHUNK:
                    if not put(b"".join(parts)):
                        return
                    parts, size = [], 0
            if parts and not put(b"".join(parts)):
                return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(e)

    thread = threading.Thread(target=pump, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        if join_timeout is not None:
            thread.join(join_timeout)


def load(client: docker.DockerClient, chunks: Iterable[bytes]) -> list[str]:
    """`docker load` from a stream of chunks; returns what the engine says it loaded.

    Raises:
        EngineError: the engine refused the stream (its message), or the connection broke.
    """
    loaded: list[str] = []
    try:
        for event in client.api.load_image(chunks):
            if not isinstance(event, dict):
                continue
            if event.get("error") or event.get("errorDetail"):
                detail = (event.get("errorDetail") or {}).get("message") or event.get("error")
                raise EngineError(f"docker load failed: {str(detail).strip()}")
            stream = str(event.get("stream") or "")
            for line in stream.splitlines():
                if line.startswith(("Loaded image ID: ", "Loaded image: ")):
                    loaded.append(line.split(": ", 1)[1].strip())
    except DockerException as e:
        raise EngineError(f"docker load failed: {_explain(e)}") from None
    except OSError as e:  # the engine closed the upload early (it stops reading on a bad tar)
        raise EngineError(f"docker load failed: the engine closed the stream ({e})") from None
    return loaded


def tag(client: docker.DockerClient, image_id: str, repository: str, tag_name: str) -> None:
    try:
        client.api.tag(image_id, repository, tag=tag_name, force=True)
    except DockerException as e:
        raise EngineError(f"cannot tag {image_id[:19]} as {repository}:{tag_name}: {_explain(e)}") from None


def remove_image(client: docker.DockerClient, image_id: str) -> None:
    """Remove an image this process loaded (after a failed check); best effort."""
    try:
        client.api.remove_image(image_id, force=True, noprune=False)
    except DockerException:
        pass


def model_set_hashes(client: docker.DockerClient, image: Any) -> dict[str, Any]:
    """sha256 of every model/adapter file baked into the image, read from its model_set.json.

    The file is copied out of a created (never started) container; an image without one gives
    an empty list and says so.
    """
    env = dict(e.split("=", 1) for e in (image.attrs.get("Config") or {}).get("Env") or [] if "=" in e)
    model_dir = env.get("AADS_MODEL_DIR", "/models").rstrip("/") or "/models"
    source = f"{model_dir}/{MODEL_SET_FILE}"
    try:
        container = client.api.create_container(image.id, command=["true"], network_disabled=True,
                                                labels={"aads.backup": "1"})
    except DockerException as e:
        raise EngineError(f"cannot read {source} from {image.id[:19]}: {_explain(e)}") from None
    try:
        stream, _ = client.api.get_archive(container["Id"], source)
        raw = b"".join(stream)
    except NotFound:
        return {"source": None, "files": {}, "note": f"the image has no {source}"}
    except DockerException as e:
        raise EngineError(f"cannot read {source} from {image.id[:19]}: {_explain(e)}") from None
    finally:
        try:
            client.api.remove_container(container["Id"], force=True)
        except DockerException:
            pass
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        member = next((m for m in tar if m.isfile()), None)
        data = tar.extractfile(member).read() if member else b""
    try:
        doc = json.loads(data)
        files = dict(sorted((doc.get("files") or {}).items()))
    except (ValueError, AttributeError):
        return {"source": source, "files": {}, "note": f"{source} in the image is not readable JSON"}
    return {"source": source, "files": files, "version": doc.get("version"),
            "adapters": {k: v for k, v in files.items() if k.startswith("adapters/")}}


def engine_free_bytes(client: docker.DockerClient) -> tuple[str, int] | None:
    """(path, free bytes) of the engine's data root when it lies on this host's filesystem."""
    try:
        root = client.info().get("DockerRootDir")
    except DockerException:
        return None
    if not root or not Path(root).is_dir():
        return None
    try:
        return root, shutil.disk_usage(root).free
    except OSError:
        return None


def _explain(e: DockerException) -> str:
    if isinstance(e, APIError):
        return str(e.explanation or e).strip()
    return str(e).strip() or type(e).__name__
