"""Backup bundles on the real engine: round trip of both versions, and every way an archive goes bad.

Two kinds of host, each a temp dir with its own orchestrator.yaml, state dir and versions dir,
and a registry address nothing listens on (an air-gapped host: any registry call would fail):

* `small` hosts hold a tiny imported image (a few MB of random data, real labels and a
  model_set.json) recorded as a build of v5.5.4-dinov3: fast enough for one fresh host per test,
  for the fault cases (truncation, changed bytes, foreign files, full disk, interrupted create,
  a local folder that differs, --push).
* the round trip uses the session's real serving images of both versions (`built_versions`):
  create an archive of each, remove the image and the ledger records, restore, then deploy with
  compose (`image_source: local`) and diagnose through the edge, and switch between them.

The CLI always runs as a separate process, as an operator runs it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import yaml

from orchestrator.backup import format as fmt
from orchestrator.backup.reader import scan
from orchestrator.ledger import LEDGER_FILE
from serving.manifest import manifest_sha256
from tests.integration.conftest_faults import free_port, make_stack, one_line_error
from tests.scratch_host import ScratchHost

pytestmark = [pytest.mark.engine]
pytest_plugins = ["tests.integration.conftest_faults"]

REPO = Path(__file__).resolve().parents[2]
VERSION = "v5.5.4-dinov3"
OTHER = "v5.5.3-performance"


# ---- a host of our own -----------------------------------------------------------------------
@dataclass(kw_only=True)
class Host(ScratchHost):
    client: Any
    registry: str
    images: list[str] = field(default_factory=list)   # ids this test made or loaded: removed at the end

    run_timeout = 900

    @property
    def out_dir(self) -> Path:
        return self.root / "backups"

    def records(self, version: str) -> tuple[list[Any], list[Any]]:
        ledger = self.ledger()
        try:
            return ledger.builds(version), ledger.pushes(version)
        finally:
            ledger.close()

    def forget(self, version: str) -> None:
        """Remove the version's ledger records (pushes, then the builds they point at)."""
        db = sqlite3.connect(self.state_dir / LEDGER_FILE)
        try:
            with db:
                db.execute("DELETE FROM pushes WHERE version = ?", (version,))
                db.execute("DELETE FROM builds WHERE version = ?", (version,))
        finally:
            db.close()
        assert self.records(version) == ([], [])

    def has_image(self, image_id: str) -> bool:
        from docker.errors import ImageNotFound
        try:
            self.client.images.get(image_id)
            return True
        except ImageNotFound:
            return False

    def remove_image(self, image_id: str) -> None:
        from docker.errors import ImageNotFound
        try:
            self.client.images.remove(image_id, force=True, noprune=False)
        except ImageNotFound:
            pass
        assert not self.has_image(image_id), f"{image_id} is still on the engine"

    def archives(self) -> list[Path]:
        return sorted(self.out_dir.glob("*.tar")) if self.out_dir.is_dir() else []

    def create(self, version: str = VERSION, *extra: str) -> dict[str, Any]:
        return self.json("backup", "create", version, "--out", str(self.out_dir), *extra)


def write_config(root: Path, registry: str, versions: tuple[str, ...]) -> None:
    (root / "versions").mkdir(parents=True, exist_ok=True)
    for v in versions:
        shutil.copytree(REPO / "versions" / v, root / "versions" / v)
    config = {"registry": registry, "state_dir": str(root / "state"), "versions_dir": str(root / "versions"),
              "models_dir": str(REPO / "build" / "models")}
    (root / "orchestrator.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def import_small_image(client: Any, version: str, folder: Path, size: int = 6 << 20) -> str:
    """A tiny image with the labels and model_set.json a real build has; returns its id."""
    blob = random.Random(secrets.randbits(32)).randbytes(size)
    model_set = {"version": version, "files": {"adapters/tomato/adapter_model.safetensors":
                                               hashlib.sha256(blob).hexdigest()}}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in {"models/adapters/tomato/adapter_model.safetensors": blob,
                           "models/model_set.json": json.dumps(model_set).encode()}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tag = f"it-{secrets.token_hex(4)}"
    client.api.import_image_from_data(buf.getvalue(), repository="aads-backup-test", tag=tag, changes=[
        f"LABEL aads.version={version}", f"LABEL aads.manifest-sha256={manifest_sha256(folder)}",
        "ENV AADS_MODEL_DIR=/models", 'CMD ["/models/none"]'])
    return client.images.get(f"aads-backup-test:{tag}").id


@pytest.fixture
def small(tmp_path, engine_client) -> Iterator[Host]:
    """A fresh air-gapped host holding a tiny image recorded as a build (and push) of v5.5.4-dinov3."""
    host = Host(root=tmp_path, client=engine_client, registry=f"127.0.0.1:{free_port()}/aads-airgap")
    write_config(tmp_path, host.registry, (VERSION, OTHER))
    image_id = import_small_image(engine_client, VERSION, host.versions_dir / VERSION)
    host.images.append(image_id)
    ledger = host.ledger()
    build = ledger.record_build(version=VERSION, variant="cpu", image_id=image_id,
                                manifest_sha256=manifest_sha256(host.versions_dir / VERSION), git_commit="test",
                                size_bytes=6 << 20, golden=[{"image": "leaf.png", "decision": "diagnosis"}])
    ledger.record_push(version=VERSION, build_id=build.id, repository="127.0.0.1:5000/aads-elsewhere", tag=VERSION,
                       digest="sha256:" + "5e" * 32)
    ledger.close()
    try:
        yield host
    finally:
        for image_id in host.images:
            host.remove_image(image_id)


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def refused(host: Host, archive: Path, rc: int, pattern: str, *extra: str) -> str:
    r = host.run("backup", "restore", str(archive), *extra)
    line = one_line_error(r.stderr)
    assert r.returncode == rc, f"rc {r.returncode}: {r.stderr[-1500:]}"
    assert pattern in line, line
    return line


# ---- create / verify / list ------------------------------------------------------------------
def test_create_verify_list_on_the_engine(small):
    out = small.create(VERSION, "--note", "before the field trip")
    path = Path(out["archive"])
    assert out["version"] == VERSION and out["image_id"] == small.images[0]
    assert path.name.startswith(f"aads-ulora_{VERSION}_{small.images[0][7:19]}_") and path.is_file()
    assert [p.name for p in small.out_dir.iterdir() if ".partial-" in p.name] == []
    with tarfile.open(path) as tar:
        names = tar.getnames()
        adapters = json.load(tar.extractfile(fmt.ADAPTERS))
        ledger = json.load(tar.extractfile(fmt.LEDGER))
        descriptor = json.load(tar.extractfile(fmt.DESCRIPTOR))
    assert names[0] == fmt.DESCRIPTOR and names[-1] == fmt.SUMS and fmt.IMAGE in names
    assert "adapters/tomato/adapter_model.safetensors" in adapters["files"]
    assert ledger["build"]["image_id"] == small.images[0] and ledger["build"]["golden"]
    assert ledger["pushes"][0]["digest"] == "sha256:" + "5e" * 32
    assert descriptor["note"] == "before the field trip"

    rows = small.json("backup", "list", str(small.out_dir))
    assert [(r["archive"], r["verified"]) for r in rows] == [(path.name, "no")]
    report = small.json("backup", "verify", str(path))
    assert report["ok"] and report["image_id"] == small.images[0]
    assert small.json("backup", "list", str(small.out_dir))[0]["verified"] == "yes"


def test_zstd_archive_round_trips(small):
    out = small.create(VERSION, "--compress", "zstd")
    assert out["compressed"] == "zstd" and Path(out["archive"]).name.endswith("_zstd.tar")
    small.json("backup", "verify", out["archive"])
    small.remove_image(small.images[0])
    small.forget(VERSION)
    res = small.json("backup", "restore", out["archive"])
    assert res["loaded"] and small.has_image(small.images[0])


def test_create_refuses_unknown_unbuilt_and_malformed_versions(small):
    for args, pattern in [(("v9.9.9-nothing",), "unknown version"), (("not_a_version",), "invalid version name"),
                          ((OTHER,), "is not built")]:
        r = small.run("backup", "create", *args, "--out", str(small.out_dir))
        assert r.returncode == 2 and pattern in one_line_error(r.stderr), r.stderr
    small.remove_image(small.images[0])
    r = small.run("backup", "create", VERSION, "--out", str(small.out_dir))
    assert r.returncode == 2 and "is not on this engine" in one_line_error(r.stderr)
    assert small.archives() == []


# ---- restore: the happy path, and what it leaves -----------------------------------------------
def test_restore_loads_records_and_restores_the_folder(small):
    path = Path(small.create()["archive"])
    image_id = small.images[0]
    small.remove_image(image_id)
    small.forget(VERSION)
    shutil.rmtree(small.versions_dir / VERSION)

    res = small.json("backup", "restore", str(path))
    assert res["loaded"] and res["origin"] == "restore-local" and res["folder"] == "restored"
    assert small.has_image(image_id)
    assert small.client.images.get(image_id).tags == [f"{small.registry}:{VERSION}-cpu"]  # the CPU variant's tag
    assert manifest_sha256(small.versions_dir / VERSION) == manifest_sha256(REPO / "versions" / VERSION)
    builds, pushes = small.records(VERSION)
    assert builds[-1].origin == f"restore:{path.name}" and builds[-1].image_id == image_id
    assert builds[-1].golden == [{"image": "leaf.png", "decision": "diagnosis"}]
    assert pushes[-1].origin == "restore-local" and pushes[-1].build_id == builds[-1].id
    # the record names what was loaded and verified (the local tag, the image id), never the
    # archive's registry reference; the archive's claim is kept in the event, for comparison
    assert (pushes[-1].repository, pushes[-1].digest) == (small.registry, image_id)
    ledger = small.ledger()
    try:
        event = [e for e in ledger.events() if e["kind"] == "backup"][-1]
    finally:
        ledger.close()
    assert event["data"]["archive_claims"]["registry_digest"] == "sha256:" + "5e" * 32

    # resolve (what switch uses) accepts it without any registry: the configured one is unreachable
    from orchestrator.context import Context
    from orchestrator.resolve import resolve
    ctx = Context(config_path=str(small.config_file))
    assert resolve(ctx, VERSION).build.image_id == image_id

    again = small.json("backup", "restore", str(path))
    assert again["loaded"] is False and again["ledger"] == "already recorded"
    assert len(small.records(VERSION)[0]) == 1


# ---- every way an archive goes bad -------------------------------------------------------------
def test_truncated_anywhere_is_refused_and_leaves_nothing(small):
    path = Path(small.create()["archive"])
    image_id = small.images[0]
    small.remove_image(image_id)
    small.forget(VERSION)
    members = {m.name: m for m in scan(path)}
    image = members[fmt.IMAGE]
    size = path.stat().st_size
    cuts = [100, members[fmt.LEDGER].data_offset + 10, image.header_offset + 200, image.data_offset + 1,
            image.data_offset + image.size // 2, image.data_offset + image.size - 1, members[fmt.SUMS].data_offset + 5,
            size - 1024, size - 1]
    for cut in cuts:
        bad = small.root / "cut.tar"
        with open(path, "rb") as src, open(bad, "wb") as dst:
            dst.write(src.read(cut))
        line = refused(small, bad, 4, "truncated")
        assert "Traceback" not in line
        assert not small.has_image(image_id) and small.records(VERSION) == ([], [])
        if cut in cuts[:2]:  # verify says the same as restore
            verify = small.run("backup", "verify", str(bad))
            assert verify.returncode == 4 and one_line_error(verify.stderr) == line


def test_an_upload_stopped_halfway_leaves_nothing_and_never_hangs(small):
    """An error while the image streams into the engine (here: raised by the progress callback
    halfway) aborts the upload: the engine must not wait for the rest of a Content-Length body,
    and nothing is loaded, tagged or recorded."""
    from orchestrator.backup.restore import restore_backup
    from orchestrator.context import Context

    path = Path(small.create()["archive"])
    image_id = small.images[0]
    small.remove_image(image_id)
    small.forget(VERSION)
    shutil.rmtree(small.versions_dir / VERSION)

    def progress(phase: str, done: int, total: int | None) -> None:
        if phase == "load" and total and done >= total // 2:
            raise RuntimeError("stopped halfway")

    outcome: dict[str, BaseException] = {}

    def restore() -> None:
        try:
            restore_backup(Context(config_path=str(small.config_file)), path, progress=progress)
        except BaseException as e:  # noqa: BLE001 - examined below
            outcome["error"] = e

    worker = threading.Thread(target=restore, daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "restore hung after the upload was aborted"
    assert isinstance(outcome.get("error"), RuntimeError) and "stopped halfway" in str(outcome["error"])
    assert not small.has_image(image_id)
    assert small.records(VERSION) == ([], [])
    assert not (small.versions_dir / VERSION).exists()


def test_one_byte_changed_in_any_member_is_refused_by_name(small):
    path = Path(small.create()["archive"])
    image_id = small.images[0]
    small.remove_image(image_id)
    small.forget(VERSION)
    for m in scan(path):
        ends = (m.data_offset, m.data_offset + m.size - 1) if m.name == fmt.IMAGE else ()
        for offset in (m.data_offset + m.size // 2, *ends):
            flip_byte(path, offset)
            try:
                expected = f"member {m.name} is damaged" if m.name == fmt.SUMS else f"member {m.name} fails its checksum"
                refused(small, path, 4, expected)
            finally:
                flip_byte(path, offset)
            assert not small.has_image(image_id), f"a changed {m.name} left the image loaded"
            assert small.records(VERSION) == ([], [])
    flip_byte(path, scan(path)[2].header_offset + 10)  # a byte of a member's header
    refused(small, path, 4, "damaged tar header")
    assert not small.has_image(image_id)


def test_wrong_or_foreign_archives_are_refused(small):
    path = Path(small.create()["archive"])
    saved = small.root / "docker-save.tar"
    with open(saved, "wb") as f:
        for chunk in small.client.api.get_image(small.images[0]):
            f.write(chunk)
    refused(small, saved, 2, "not an AADS-ULoRA backup archive")
    gz = small.root / "archive.tar.gz"
    gz.write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
    refused(small, gz, 2, "gzip-compressed")
    random_file = small.root / "random.tar"
    random_file.write_bytes(os.urandom(10_000))
    refused(small, random_file, 2, "not an AADS-ULoRA backup archive")
    refused(small, small.root / "missing.tar", 2, "no archive at")
    # an archive of another image under this one's name: the name and the content disagree
    renamed = small.root / path.name.replace(small.images[0][7:19], "0" * 12)
    shutil.copy(path, renamed)
    r = small.run("backup", "verify", str(renamed))
    assert r.returncode == 4 and "file name says" in one_line_error(r.stderr)


def test_not_enough_disk_space_writes_nothing(small, tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(tiny)],
                             capture_output=True).returncode == 0
    try:
        if mounted:
            # the real check: statvfs of a 2 MiB tmpfs
            r = small.run("backup", "create", VERSION, "--out", str(tiny))
            assert r.returncode == 7 and "not enough free space" in one_line_error(r.stderr), r.stderr
            assert list(tiny.iterdir()) == []
        # an injected check that lies (or the only check where mounting is not allowed): the write
        # itself then runs out of space on the tmpfs, or the injected refusal stops it before
        from orchestrator.backup.create import create_backup
        from orchestrator.context import Context
        from orchestrator.errors import NoSpaceError
        ctx = Context(config_path=str(small.config_file))
        with pytest.raises(NoSpaceError, match="not enough free space"):
            create_backup(ctx, VERSION, out_dir=tiny, disk_free=lambda p: 1 << 20)
        if mounted:
            with pytest.raises(NoSpaceError, match="ran out of disk space"):
                create_backup(ctx, VERSION, out_dir=tiny, disk_free=lambda p: 1 << 40)
        assert list(tiny.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", str(tiny)], check=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_interrupted_create_leaves_no_archive_under_the_final_name(small, sig):
    small.out_dir.mkdir()
    # test hook: the create pauses once 1 MiB of the image has streamed into the temporary file
    proc = small.start("backup", "create", VERSION, "--out", str(small.out_dir),
                       env={"AADS_BACKUP_PAUSE_AFTER_BYTES": str(1 << 20)})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            partial = [p for p in small.out_dir.iterdir() if ".partial-" in p.name]
            if partial and partial[0].stat().st_size >= 1 << 20:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        else:
            raise AssertionError("the create never got 1 MiB into its temporary file")
        os.kill(proc.pid, sig)
        # generous: a process in the middle of a large write may take a while to be reaped on a busy host
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode != 0
    assert small.archives() == [], "an interrupted create left an archive under a final name"
    left = [p.name for p in small.out_dir.iterdir() if not p.name.startswith(".")]
    assert left == []
    if sig != signal.SIGKILL:  # a clean interruption also removes its temporary file
        assert list(small.out_dir.iterdir()) == []
        assert proc.returncode == 130 and one_line_error(err) in ("error: interrupted", "error: aborted")
    assert small.json("backup", "list", str(small.out_dir)) == []
    # and the next create still works
    assert Path(small.create()["archive"]).is_file()


def test_restore_of_a_version_whose_folder_differs_needs_force(small):
    path = Path(small.create()["archive"])
    image_id = small.images[0]
    small.remove_image(image_id)
    small.forget(VERSION)
    local = small.versions_dir / VERSION / "version.yaml"
    edited = local.read_text() + "# edited on this host\n"
    local.write_text(edited)

    refused(small, path, 2, "differs from the folder in")
    assert not small.has_image(image_id) and small.records(VERSION) == ([], [])
    assert local.read_text() == edited

    res = small.json("backup", "restore", str(path), "--force")
    assert res["folder"] == "replaced" and small.has_image(image_id)
    assert manifest_sha256(small.versions_dir / VERSION) == manifest_sha256(REPO / "versions" / VERSION)
    kept = list((small.state_dir / "backup" / "replaced").glob(f"{VERSION}-*/version.yaml"))
    assert len(kept) == 1 and kept[0].read_text() == edited


def test_restore_refuses_when_the_ledger_records_another_image(small):
    path = Path(small.create()["archive"])
    ledger = small.ledger()
    ledger.record_build(version=VERSION, variant="cpu", image_id="sha256:" + "77" * 32,
                        manifest_sha256=manifest_sha256(small.versions_dir / VERSION), git_commit="x",
                        size_bytes=1, golden=[])
    ledger.close()
    refused(small, path, 2, "records another image")
    res = small.json("backup", "restore", str(path), "--force")
    assert res["ledger"] == "recorded" and small.records(VERSION)[0][-1].image_id == small.images[0]


def test_restore_with_push_records_a_normal_push(small, own_registry):
    path = Path(small.create()["archive"])
    repository = f"{own_registry.host}/aads-backup-{secrets.token_hex(3)}"
    config = yaml.safe_load(small.config_file.read_text())
    config["registry"] = repository
    small.config_file.write_text(yaml.safe_dump(config))
    small.remove_image(small.images[0])
    small.forget(VERSION)

    res = small.json("backup", "restore", str(path), "--push")
    assert res["origin"] == "push" and res["ledger"] == "recorded"
    from orchestrator.registry import RegistryClient
    assert RegistryClient(repository).tag_digest(f"{VERSION}-cpu") == res["registry_digest"]
    builds, pushes = small.records(VERSION)
    assert builds[-1].origin.startswith("restore:") and pushes[-1].origin == "push"
    assert pushes[-1].repository == repository and pushes[-1].build_id == builds[-1].id
    from orchestrator.context import Context
    from orchestrator.resolve import resolve
    assert resolve(Context(config_path=str(small.config_file)), VERSION).digest == res["registry_digest"]


# ---- the round trip of both real versions ------------------------------------------------------
def _diagnose(base_url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    from orchestrator.golden import golden_images
    name, png = golden_images()[0]
    r = requests.post(f"{base_url}/v1/diagnose", json={"image": base64.b64encode(png).decode()}, timeout=60,
                      headers=headers)
    assert r.status_code == 200, r.text[:500]
    return r.json()


@pytest.mark.slow
def test_round_trip_of_both_versions_then_deploy_and_diagnose(built_versions, engine_client, tmp_path):
    """Archive both versions, remove images and ledger records, restore on an air-gapped compose
    target (image_source: local, registry unreachable), then up + diagnose + switch + diagnose."""
    stack = make_stack(tmp_path / "host", name="backup", session_state_dir=Path(built_versions.state_dir),
                       registry=built_versions.repository, ready_timeout_s=240, watch_s=1)
    config = yaml.safe_load(stack.config_file.read_text())
    airgap = f"127.0.0.1:{free_port()}/aads-airgap-{secrets.token_hex(3)}"
    config["registry"] = airgap
    config["targets"][stack.name]["image_source"] = "local"
    stack.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    host = Host(root=stack.root, client=engine_client, registry=airgap)
    out = tmp_path / "usb"
    image_ids = {v: built_versions[v]["build"]["image_id"] for v in (OTHER, VERSION)}
    try:
        archives = {}
        for version, extra in ((OTHER, ()), (VERSION, ("--compress", "zstd"))):
            res = host.json("backup", "create", version, "--out", str(out), "--note", "round trip", *extra)
            archives[version] = Path(res["archive"])
            assert res["image_id"] == image_ids[version]
        for version in (OTHER, VERSION):
            host.remove_image(image_ids[version])
            host.forget(version)
        shutil.rmtree(stack.versions_dir / OTHER)  # this host never had one of the folders

        for version, path in archives.items():
            res = host.json("backup", "restore", str(path))
            assert res["loaded"] and res["origin"] == "restore-local" and host.has_image(image_ids[version])
        assert (stack.versions_dir / OTHER / "version.yaml").is_file()

        up = stack.json("up", OTHER)
        assert up["outcome"] == "succeeded", up  # a fresh target: nothing was live, so never a noop
        assert stack.edge_version() == OTHER
        first = _diagnose(stack.edge_url, stack.api_headers)
        assert first["version"] == OTHER
        switched = stack.json("switch", VERSION)
        assert switched["outcome"] == "succeeded", switched
        assert stack.edge_version() == VERSION
        second = _diagnose(stack.edge_url, stack.api_headers)
        assert second["version"] == VERSION
        for row in stack.json("status")["slots"]:
            image = str(row.get("image") or "")
            assert not image.startswith(built_versions.repository), f"a slot runs a registry image: {row}"

        # a changed byte deep inside the real (1 GB) image member is caught while loading
        path = archives[OTHER]
        image_member = next(m for m in scan(path) if m.name == fmt.IMAGE)
        offset = image_member.data_offset + image_member.size * 2 // 3
        stack.down()
        host.remove_image(image_ids[OTHER])
        host.forget(OTHER)
        flip_byte(path, offset)
        try:
            refused(host, path, 4, "member image.tar fails its checksum")
            assert not host.has_image(image_ids[OTHER])
        finally:
            flip_byte(path, offset)
        host.json("backup", "restore", str(path))
    finally:
        stack.down()
        # put the session's images back as the session tagged them, drop the air-gap tags
        for version, image_id in image_ids.items():
            if host.has_image(image_id):
                engine_client.api.tag(image_id, built_versions.repository, tag=version, force=True)
                try:
                    engine_client.api.remove_image(f"{airgap}:{version}", noprune=True)
                except Exception:
                    pass
