"""Backup archives on small synthetic images (no engine): format, checksums, tamper and truncation.

The image is a real docker save tar built here (classic layout: manifest.json, a config whose
sha256 is the image id, layer tars matching the config's diff_ids), so every check verify makes
on a real archive runs on these too.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from orchestrator.backup import format as fmt
from orchestrator.backup.archive import ArchiveInput, open_archive, write_archive
from orchestrator.backup.catalog import list_archives, sidecar_path
from orchestrator.backup.create import check_space, space_needed
from orchestrator.backup.dockersave import ImageTarError, inspect_stream
from orchestrator.backup.reader import ArchiveError, ForeignArchiveError, scan
from orchestrator.backup.verify import verify_archive
from orchestrator.errors import NoSpaceError, TamperError, UsageError
from serving.manifest import manifest_sha256
from tests.hostile_archives import tar_bytes

REPO = Path(__file__).resolve().parents[2]
VERSION = "v5.5.4-dinov3"
VERSION_DIR = REPO / "versions" / VERSION
KEY = b"unit-test host key, 32 bytes long"


# ---- synthetic docker save tars and archives -------------------------------------------------
def _tar_bytes(files: dict[str, bytes]) -> bytes:
    return tar_bytes(files, fmt_=tarfile.PAX_FORMAT)


def docker_save_tar(labels: dict[str, str], layer_sizes=(70_000, 130_001), seed: int = 7,
                    corrupt_layer: bool = False) -> tuple[bytes, str]:
    """(docker save tar, image id) of an image with random-content layers and `labels`."""
    rng = random.Random(seed)
    layers, diff_ids = [], []
    for i, size in enumerate(layer_sizes):
        layer = _tar_bytes({f"data/file{i}.bin": rng.randbytes(size)})
        diff_ids.append("sha256:" + hashlib.sha256(layer).hexdigest())
        layers.append(layer)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": labels},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    files: dict[str, bytes] = {}
    names = []
    for i, layer in enumerate(layers):
        d = hashlib.sha256(f"layer{i}".encode()).hexdigest()
        if corrupt_layer and i == len(layers) - 1:
            layer = layer[:1000] + bytes([layer[1000] ^ 1]) + layer[1001:]
        files[f"{d}/VERSION"] = b"1.0"
        files[f"{d}/layer.tar"] = layer
        names.append(f"{d}/layer.tar")
    files[f"{image_id[7:]}.json"] = config
    files["manifest.json"] = json.dumps([{"Config": f"{image_id[7:]}.json", "RepoTags": None,
                                          "Layers": names}]).encode()
    return _tar_bytes(files), image_id


def version_files() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(VERSION_DIR.iterdir()) if p.is_file()}


def make_archive(out_dir: Path, *, compress: bool = False, labels: dict[str, str] | None = None,
                 recorded_id: str | None = None, corrupt_layer: bool = False, name: str | None = None,
                 chunk: int = 65_536) -> Path:
    sha = manifest_sha256(VERSION_DIR)
    labels = {"aads.manifest-sha256": sha, "aads.version": VERSION} if labels is None else labels
    image, image_id = docker_save_tar(labels, corrupt_layer=corrupt_layer)
    image_id = recorded_id or image_id
    descriptor = {"format": fmt.FORMAT, "format_version": fmt.FORMAT_VERSION, "version": VERSION,
                  "image_id": image_id, "registry_digest": "sha256:" + "ab" * 32,
                  "repository": "127.0.0.1:5000/aads-ulora", "image_size": len(image),
                  "created_at": "2026-11-24T20:00:00+00:00", "note": "unit test"}
    build = {"id": 3, "version": VERSION, "variant": "cpu", "image_id": image_id, "manifest_sha256": sha,
             "git_commit": "abc", "built_at": "2026-11-24T19:00:00+00:00", "build_seconds": 1.0,
             "size_bytes": len(image), "golden": [{"image": "a.png", "decision": "diagnosis"}], "origin": "build"}
    data = ArchiveInput(descriptor=descriptor, ledger={"build": build, "pushes": []},
                        version_files=version_files(), adapters={"source": "/models/model_set.json",
                                                                 "files": {"adapters/tomato/x": "00" * 32}})
    import datetime as dt

    name = name or fmt.archive_name(VERSION, image_id, dt.datetime(2026, 11, 24, 20, 0, 0, tzinfo=dt.timezone.utc),
                                    compressed=compress)
    chunks = (image[i:i + chunk] for i in range(0, len(image), chunk))
    write_archive(out_dir / name, data, chunks, compress_threads=2 if compress else None)
    return out_dir / name


@pytest.fixture
def archive(tmp_path) -> Path:
    return make_archive(tmp_path)


def copy_with(path: Path, dest: Path, *, flip: int | None = None, cut: int | None = None,
              append: bytes = b"") -> Path:
    data = bytearray(path.read_bytes())
    if flip is not None:
        data[flip] ^= 0x01
    if cut is not None:
        data = data[:cut]
    dest.write_bytes(bytes(data) + append)
    return dest


# ---- format ----------------------------------------------------------------------------------
def test_archive_is_a_plain_tar_with_members_in_order(archive):
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names == [fmt.DESCRIPTOR, fmt.LEDGER, f"versions/{VERSION}/adapter_spec.json",
                     f"versions/{VERSION}/version.yaml", fmt.ADAPTERS, fmt.IMAGE, fmt.SUMS]
    assert archive.stat().st_size % fmt.BLOCK == 0
    assert archive.read_bytes().endswith(fmt.END_MARKER)


def test_sha256sums_checks_out_with_sha256sum(archive, tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    if shutil.which("sha256sum"):
        r = subprocess.run(["sha256sum", "--quiet", "-c", fmt.SUMS], cwd=out, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    sums = fmt.Sums.parse((out / fmt.SUMS).read_bytes())
    for name, digest in sums.entries.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


def test_archive_name_carries_version_and_image_id(archive):
    m = fmt.ARCHIVE_NAME_RE.match(archive.name)
    assert m and m["version"] == VERSION and archive.name.endswith(".tar")
    assert open_archive(archive).image_id[7:19] == m["id12"]


def test_header_stays_one_block_beyond_8_gib():
    big = 10 * (1 << 30) + 5
    block = fmt.header(fmt.IMAGE, big, 0)
    assert len(block) == fmt.BLOCK
    assert fmt.parse_header(block).size == big


def test_long_member_name_is_refused():
    with pytest.raises(ValueError, match="too long"):
        fmt.header("x" * 120, 1, 0)


def test_sums_round_trip_and_self_check():
    sums = fmt.Sums({"a": "0" * 64, "b c": "f" * 64})
    raw = sums.render()
    assert fmt.Sums.parse(raw) == sums
    with pytest.raises(ValueError, match="own recorded hash"):
        fmt.Sums.parse(raw.replace(b"0" * 64, b"1" + b"0" * 63))
    with pytest.raises(ValueError, match="self-check"):
        fmt.Sums.parse(raw.rsplit(b"#", 1)[0])


def test_inspect_stream_checks_layers_against_config():
    sha = manifest_sha256(VERSION_DIR)
    image, image_id = docker_save_tar({"aads.manifest-sha256": sha})
    facts = inspect_stream(io.BytesIO(image))
    assert facts.config_digest == image_id and len(facts.layers) == 2
    assert facts.labels["aads.manifest-sha256"] == sha
    bad, _ = docker_save_tar({}, corrupt_layer=True)
    with pytest.raises(ImageTarError, match="does not match its diff_id"):
        inspect_stream(io.BytesIO(bad))
    with pytest.raises(ImageTarError, match="manifest.json"):
        inspect_stream(io.BytesIO(_tar_bytes({"oci-layout": b"y"})))


# ---- verify: good archives -------------------------------------------------------------------
def test_verify_passes_and_reports_everything(archive):
    report = verify_archive(archive, host_key=KEY)
    assert report["ok"] and report["version"] == VERSION and report["layers"] == 2
    assert report["manifest_sha256"] == manifest_sha256(VERSION_DIR)
    assert [m["name"] for m in report["members"]][-1] == fmt.IMAGE
    assert json.loads(sidecar_path(archive).read_text())["verified"]["ok"] is True


def test_zstd_archive_round_trips_and_is_checked(tmp_path):
    path = make_archive(tmp_path, compress=True)
    opened = open_archive(path)
    assert opened.compressed and opened.image.name == fmt.IMAGE_ZSTD
    assert verify_archive(path)["compressed"] is True
    m = next(x for x in scan(path) if x.name == fmt.IMAGE_ZSTD)
    bad = copy_with(path, tmp_path / "bad.tar", flip=m.data_offset + m.size // 2)
    with pytest.raises(ArchiveError, match=r"member image\.tar\.zst fails its checksum"):
        verify_archive(bad)


# ---- truncation anywhere ---------------------------------------------------------------------
def _cut_points(path: Path) -> list[int]:
    size = path.stat().st_size
    points = {1, 100, 511, 512, 513, size - 1, size - 512, size - 1024, size - 1025}
    for m in scan(path):
        points |= {m.header_offset, m.header_offset + 1, m.data_offset, m.data_offset + m.size // 2,
                   m.data_offset + m.size, m.end - 1}
    points |= set(range(0, size, max(1, size // 40)))
    return sorted(p for p in points if 0 < p < size)


def test_truncation_anywhere_is_detected(archive, tmp_path):
    for cut in _cut_points(archive):
        bad = copy_with(archive, tmp_path / "cut.tar", cut=cut)
        with pytest.raises(ArchiveError, match="truncated|end marker|damaged|last member"):
            verify_archive(bad)


def test_truncated_archive_is_named_by_member(archive, tmp_path):
    m = next(x for x in scan(archive) if x.name == fmt.IMAGE)
    bad = copy_with(archive, tmp_path / "cut.tar", cut=m.data_offset + 1000)
    with pytest.raises(ArchiveError, match=r"truncated inside member image\.tar"):
        verify_archive(bad)


# ---- one byte changed, anywhere --------------------------------------------------------------
def test_one_byte_changed_in_any_member_names_it(archive, tmp_path):
    for m in scan(archive):
        for offset in {m.data_offset, m.data_offset + m.size // 2, m.data_offset + m.size - 1}:
            bad = copy_with(archive, tmp_path / "flip.tar", flip=offset)
            expected = (rf"member {m.name} is damaged" if m.name == fmt.SUMS
                        else rf"member {m.name} fails its checksum")
            with pytest.raises(ArchiveError, match=expected.replace(".", r"\.")):
                verify_archive(bad)


def test_one_byte_changed_in_headers_padding_and_end_marker(archive, tmp_path):
    size = archive.stat().st_size
    offsets = []
    for m in scan(archive):
        offsets += [m.header_offset + k for k in (0, 5, 100, 124, 130, 148, 156, 257, 300, 511)]
        if fmt.padding(m.size):
            offsets += [m.data_offset + m.size, m.end - 1]
    offsets += [size - 1024, size - 600, size - 1]
    for offset in offsets:
        bad = copy_with(archive, tmp_path / "flip.tar", flip=offset)
        with pytest.raises(ArchiveError):
            verify_archive(bad)


def test_random_single_byte_flips_never_pass(archive, tmp_path):
    rng = random.Random(11)
    size = archive.stat().st_size
    for offset in rng.sample(range(size), 150):
        bad = copy_with(archive, tmp_path / "flip.tar", flip=offset)
        with pytest.raises(ArchiveError):
            verify_archive(bad)


def test_extra_member_and_trailing_bytes_are_refused(archive, tmp_path):
    data = archive.read_bytes()[:-1024]
    extra = fmt.header("extra.txt", 3, 0) + b"hi!" + b"\0" * 509
    (tmp_path / "extra.tar").write_bytes(data + extra + fmt.END_MARKER)
    with pytest.raises(ArchiveError, match="last member is extra.txt"):
        verify_archive(tmp_path / "extra.tar")
    bad = copy_with(archive, tmp_path / "tail.tar", append=b"x" * 10)
    with pytest.raises(ArchiveError, match="unexpected bytes after the end"):
        verify_archive(bad)


# ---- wrong or foreign archives ---------------------------------------------------------------
def test_foreign_files_are_refused_as_not_backups(tmp_path):
    cases = {
        "plain.tar": _tar_bytes({"hello.txt": b"hello"}),
        "random.bin": random.Random(3).randbytes(5000),
        "empty.tar": b"",
        "gzip.tar": b"\x1f\x8b\x08" + b"\0" * 600,
        "zstd.tar": b"\x28\xb5\x2f\xfd" + b"\0" * 600,
        "docker-save.tar": docker_save_tar({})[0],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ForeignArchiveError, match="not an AADS-ULoRA backup archive"):
            verify_archive(tmp_path / name)
    with pytest.raises(ForeignArchiveError, match="zstd-compressed"):
        verify_archive(tmp_path / "zstd.tar")
    with pytest.raises(UsageError, match="no archive"):
        verify_archive(tmp_path / "missing.tar")


def test_descriptor_of_another_format_is_foreign(tmp_path):
    doc = json.dumps({"format": "something-else", "format_version": 1}).encode()
    (tmp_path / "other.tar").write_bytes(_tar_bytes({fmt.DESCRIPTOR: doc}))
    with pytest.raises((ForeignArchiveError, ArchiveError)):
        verify_archive(tmp_path / "other.tar")


def test_image_that_is_not_the_recorded_one_is_refused(tmp_path):
    path = make_archive(tmp_path, recorded_id="sha256:" + "12" * 32, name="renamed.tar")
    with pytest.raises(ArchiveError, match="config digest .* does not match the recorded image id"):
        verify_archive(path)


def test_manifest_label_must_match_the_archived_folder(tmp_path):
    path = make_archive(tmp_path, labels={"aads.manifest-sha256": "0" * 64, "aads.version": VERSION})
    with pytest.raises(ArchiveError, match="aads.manifest-sha256"):
        verify_archive(path)


def test_image_whose_layer_does_not_match_its_config_is_refused(tmp_path):
    path = make_archive(tmp_path, corrupt_layer=True)
    with pytest.raises(ArchiveError, match="not a valid image: layer .* diff_id"):
        verify_archive(path)


def test_renamed_archive_claiming_another_image_is_refused(archive, tmp_path):
    other = archive.with_name(archive.name.replace(archive.name.split("_")[2], "0" * 12))
    shutil.copy(archive, other)
    with pytest.raises(ArchiveError, match="file name says"):
        verify_archive(other)


# ---- writing: interrupted, out of space ------------------------------------------------------
def _input() -> ArchiveInput:
    return ArchiveInput(descriptor={"format": fmt.FORMAT, "format_version": 1, "version": VERSION,
                                    "image_id": "sha256:" + "0" * 64},
                        ledger={"build": {}, "pushes": []}, version_files=version_files(), adapters={})


def test_interrupted_write_leaves_no_archive_and_no_temp(tmp_path):
    def chunks():
        yield b"x" * 100_000
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_archive(tmp_path / "a.tar", _input(), chunks())
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing_is_one_clear_error(tmp_path):
    def chunks():
        yield b"x" * 1000
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(NoSpaceError, match="ran out of disk space"):
        write_archive(tmp_path / "a.tar", _input(), chunks())
    assert list(tmp_path.iterdir()) == []


def test_free_space_is_checked_before_writing(tmp_path):
    with pytest.raises(NoSpaceError, match="not enough free space"):
        check_space(tmp_path, 5 << 30, VERSION, disk_free=lambda p: 1 << 30)
    check_space(tmp_path, 5 << 30, VERSION, disk_free=lambda p: space_needed(5 << 30))


# ---- list ------------------------------------------------------------------------------------
def test_list_shows_verified_state_cheaply(tmp_path):
    a = make_archive(tmp_path)
    (tmp_path / "notes.tar").write_bytes(_tar_bytes({"x": b"y"}))      # not ours: skipped
    (tmp_path / ".aads-ulora_x.tar.partial-1-abc").write_bytes(b"")     # a create in progress: skipped
    rows = list_archives(tmp_path, KEY)
    assert [r["archive"] for r in rows] == [a.name]
    assert rows[0]["verified"] == "no" and rows[0]["version"] == VERSION and rows[0]["size"] == a.stat().st_size
    verify_archive(a, host_key=KEY)
    assert list_archives(tmp_path, KEY)[0]["verified"] == "yes"
    os.utime(a, ns=(1, 1))
    assert list_archives(tmp_path, KEY)[0]["verified"] == "changed"
    copy_with(a, a, flip=a.stat().st_size // 2)
    with pytest.raises(TamperError):
        verify_archive(a, host_key=KEY)
    row = list_archives(tmp_path, KEY)[0]
    assert row["verified"] == "failed" and "fails its checksum" in row["problem"]


def test_list_reports_damaged_archives(tmp_path):
    a = make_archive(tmp_path)
    copy_with(a, a, cut=a.stat().st_size - 2000)
    row = list_archives(tmp_path)[0]
    assert row["verified"] == "damaged" and "truncated" in row["problem"]


# ---- the CLI ---------------------------------------------------------------------------------
def test_cli_verify_json_and_one_line_errors(archive, tmp_path, capsys, monkeypatch):
    from orchestrator.cli import main

    monkeypatch.setenv("AADS_STATE_DIR", str(tmp_path / "state"))  # the host key lives there

    assert main(["backup", "verify", str(archive), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["image_id"].startswith("sha256:")
    bad = copy_with(archive, tmp_path / "bad.tar", flip=archive.stat().st_size // 2)
    assert main(["backup", "verify", str(bad)]) == TamperError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    assert main(["backup", "list", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["archive"]: r["verified"] for r in rows}[archive.name] == "yes"


def test_exported_members():
    import orchestrator.backup as backup

    assert backup.__all__ == sorted(backup.__all__)
    assert all(hasattr(backup, name) for name in backup.__all__)
