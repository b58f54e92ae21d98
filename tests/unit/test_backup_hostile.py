"""Backup archives are untrusted input: hostile archives crafted here, every checksum right.

Each test writes an archive an attacker could hand over (tests/hostile_archives.py) and checks
that verify / open / list refuse it with one clear error, write nothing outside their temporary
directory, stay within memory and time bounds, and never trust a sidecar this host did not write.
No engine: the restore side (tags, images, ledger records) is in
tests/integration/test_backup_hostile_restore.py.
"""

from __future__ import annotations

import json
import os
import signal
import tarfile
import tempfile
import tracemalloc
from pathlib import Path

import pytest

from orchestrator.backup import catalog
from orchestrator.backup import format as fmt
from orchestrator.backup.archive import open_archive
from orchestrator.backup.catalog import list_archives, sidecar_path
from orchestrator.backup.dockersave import ImageTarError, inspect_stream
from orchestrator.backup.reader import ArchiveError, scan
from orchestrator.backup.verify import verify_archive
from orchestrator.errors import OrchestratorError
from tests.hostile_archives import (VERSION, build_record, docker_save, drop, good_labels, negative_size,
                                    octal_size, raw_header, tar_bytes, version_files, write_hostile)

KEY = b"k" * 32


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """Temporary directories of the code under test go here, so an escape lands where we can see it."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.fixture
def alarm():
    """Fail instead of hanging: a loop that never ends is interrupted after 20 s."""
    def stop(signum, frame):
        raise TimeoutError("did not finish within 20 s (endless loop?)")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ---- 1. names from an archive never become paths unchecked ---------------------------------------
HOSTILE_VERSIONS = ["../escaped", "v5.5.4-dinov3/../../escaped", "v5.5.4-dinov3\n", "v5.5.4-dinov3\nx",
                    " v5.5.4-dinov3", "..", ".", "", "v5.5.4-DINOV3", "v5.5.4-dinov3/"]


@pytest.mark.parametrize("version", HOSTILE_VERSIONS)
def test_hostile_version_names_are_refused_before_any_path_is_made(version, tmp_path, private_tmp):
    out = tmp_path / "in"
    out.mkdir()
    # a newline in a member name breaks SHA256SUMS itself: name the folder as usual, lie in the descriptor
    path = write_hostile(out, version=version, member_version=VERSION if "\n" in version else None)
    before = _tree(tmp_path)
    with pytest.raises(ArchiveError, match="invalid version name"):
        open_archive(path)
    with pytest.raises(ArchiveError, match="invalid version name"):
        verify_archive(path, host_key=KEY)
    assert _tree(tmp_path) - before <= {f"in/{sidecar_path(path).name}"}
    assert list(private_tmp.iterdir()) == []


def test_absolute_version_name_writes_nothing_there(tmp_path, private_tmp):
    import shutil

    short = Path(tempfile.mkdtemp(prefix="bk", dir="/tmp"))  # a tar header holds 100 bytes of name
    target = short / "t"
    try:
        path = write_hostile(tmp_path, version=str(target))
        with pytest.raises(ArchiveError, match="invalid version name"):
            verify_archive(path, host_key=KEY)
        assert not target.exists()
    finally:
        shutil.rmtree(short)


@pytest.mark.parametrize("file_name", ["a b", "-rf", "x\\..\\y", "v" * 90, "ver\tsion.yaml"])
def test_hostile_version_file_names_are_refused(file_name, tmp_path, private_tmp):
    files = {**version_files(), file_name: b"x"}
    try:
        path = write_hostile(tmp_path, files=files)
    except ValueError:  # too long for one tar header: the writer refuses it, so can an archive not hold it
        return
    with pytest.raises(ArchiveError, match="version folder"):
        open_archive(path)
    assert list(private_tmp.iterdir()) == []


def test_version_names_are_matched_in_full():
    from serving.manifest import validate_version_name

    validate_version_name("v5.5.4-dinov3")
    for bad in ("v5.5.4-dinov3\n", "v5.5.4-dinov3\n\n"):
        with pytest.raises(ValueError, match="invalid version name"):
            validate_version_name(bad)


# ---- 2. the image member: one image, no tags, nothing docker load would act on -------------------
def test_image_carrying_repo_tags_is_refused(tmp_path):
    image, image_id = docker_save(repo_tags=["aads-base:bookworm"])
    path = write_hostile(tmp_path, image=image, image_id=image_id)
    with pytest.raises(ArchiveError, match="RepoTags"):
        verify_archive(path)


def test_image_with_a_repositories_file_is_refused(tmp_path):
    repos = json.dumps({"aads-base": {"bookworm": "0" * 64}}).encode()
    image, image_id = docker_save(extra_files={"repositories": repos})
    path = write_hostile(tmp_path, image=image, image_id=image_id)
    with pytest.raises(ArchiveError, match="repositories"):
        verify_archive(path)


def test_image_member_holding_two_images_is_refused(tmp_path):
    image, image_id = docker_save(extra_images=1)
    path = write_hostile(tmp_path, image=image, image_id=image_id)
    with pytest.raises(ArchiveError, match="2 images"):
        verify_archive(path)


@pytest.mark.parametrize("extra", [{"../outside": b"x"}, {"etc/passwd": b"x"}, {"index.json": b"{}"},
                                   {"a" * 64 + "/layer.tar.extra": b"x"}])
def test_image_member_with_unexpected_files_is_refused(extra, tmp_path):
    image, image_id = docker_save(extra_files=extra)
    path = write_hostile(tmp_path, image=image, image_id=image_id)
    with pytest.raises(ArchiveError, match="not a valid image"):
        verify_archive(path)


def test_image_member_with_links_devices_or_long_names_is_refused():
    for typeflag in (b"1", b"3", b"4", b"6", b"L", b"K", b"g", b"S"):
        raw = raw_header("manifest.json", octal_size(0), typeflag) + b"\0" * 1024
        with pytest.raises(ImageTarError):
            inspect_stream(_bytes_io(raw))


def test_index_json_naming_an_image_is_refused():
    files = {"index.json": json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "1" * 64, "size": 2,
         "annotations": {"io.containerd.image.name": "docker.io/library/aads-base:bookworm"}}]}).encode()}
    image, _ = docker_save(extra_files=files)
    with pytest.raises(ImageTarError, match="names an image"):
        inspect_stream(_bytes_io(image))


# ---- 3. records: every field present and well-formed, or refused before anything else ------------
@pytest.mark.parametrize("field,value,pattern", [
    ("built_at", drop(), "built_at"), ("built_at", "yesterday", "built_at"), ("variant", drop(), "variant"),
    ("variant", "cpu; rm -rf /", "variant"), ("golden", "x", "golden"), ("golden", [{"decision": 1}], "golden"),
    ("build_seconds", "fast", "build_seconds"), ("size_bytes", -5, "size_bytes"), ("git_commit", 12, "git_commit"),
    ("manifest_sha256", drop(), "manifest_sha256"),
])
def test_malformed_build_records_are_refused_with_the_field_named(field, value, pattern, tmp_path):
    from orchestrator.backup.records import check_build_record

    image, image_id = docker_save()
    path = write_hostile(tmp_path, image=image, image_id=image_id,
                         build=build_record(image_id, **{field: value}))
    with pytest.raises(ArchiveError, match=pattern):
        check_build_record(open_archive(path))


def test_a_well_formed_build_record_passes_and_keeps_only_known_fields(tmp_path):
    from orchestrator.backup.records import check_build_record

    image, image_id = docker_save()
    path = write_hostile(tmp_path, image=image, image_id=image_id,
                         build=build_record(image_id, origin="build; evil", extra_field="x"))
    fields = check_build_record(open_archive(path))
    assert fields["image_id"] == image_id and "extra_field" not in fields and "origin" not in fields


# ---- 4. resource bounds ------------------------------------------------------------------------
def _with_negative_size(path: Path) -> None:
    """Replace the archive's second header (ledger.json) by one whose size is -512."""
    members = scan(path)
    with open(path, "r+b") as f:
        f.seek(members[1].header_offset)
        f.write(raw_header(fmt.LEDGER, negative_size()))


def test_negative_size_header_fails_fast_instead_of_looping(tmp_path, alarm):
    path = write_hostile(tmp_path)
    _with_negative_size(path)
    assert tarfile.TarInfo.frombuf(raw_header("x", negative_size()), "utf-8", "strict").size == -512
    with pytest.raises(ArchiveError, match="size"):
        scan(path)
    with pytest.raises(ArchiveError):
        verify_archive(path)


def test_backup_list_does_not_hang_on_a_negative_size(tmp_path, alarm):
    path = write_hostile(tmp_path)
    _with_negative_size(path)
    rows = list_archives(tmp_path)
    assert [(r["archive"], r["verified"]) for r in rows] == [(path.name, "damaged")]


def test_a_huge_metadata_member_is_refused_without_reading_it(tmp_path):
    """ledger.json claims 200 MiB (a sparse file): refused by its header, never read into memory."""
    path = tmp_path / "big.tar"
    good = write_hostile(tmp_path)
    first = scan(good)[0]
    big = 200 << 20
    with open(good, "rb") as src, open(path, "wb") as f:
        f.write(src.read(first.end))
        f.write(raw_header(fmt.LEDGER, octal_size(big)))
        f.seek(big, os.SEEK_CUR)
        f.write(fmt.END_MARKER)
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError, match="too large"):
            open_archive(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak >> 20} MiB held while refusing"


def test_too_many_members_are_refused(tmp_path, alarm):
    good = write_hostile(tmp_path)
    first = scan(good)[0]
    path = tmp_path / "many.tar"
    with open(good, "rb") as src, open(path, "wb") as f:
        f.write(src.read(first.end))
        for i in range(5000):
            f.write(raw_header(f"m{i}", octal_size(0)))
        f.write(fmt.END_MARKER)
    with pytest.raises(ArchiveError, match="members"):
        scan(path)


def test_a_pax_header_bomb_in_the_image_is_refused_without_inflating_it(tmp_path):
    """A few KB of zstd that inflate to a 256 MiB extended header: refused before it is read."""
    huge = 256 << 20
    image = raw_header("././@PaxHeader", octal_size(huge), b"x") + b"\0" * huge + b"\0" * 1024
    path = write_hostile(tmp_path, image=image, image_id="sha256:" + "0" * 64, compress=True,
                         descriptor={"image_size": 1 << 20})
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError):
            verify_archive(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak >> 20} MiB held while refusing"


def test_decompressed_image_is_capped_by_the_descriptor(tmp_path):
    """A valid image whose 64 MiB layer compresses to almost nothing, in an archive that declares
    a 1 MiB image: refused once it inflates past what the descriptor allows."""
    layer = tar_bytes({"zeros.bin": b"\0" * (64 << 20)})
    image, image_id = docker_save(layer_blob=layer)
    path = write_hostile(tmp_path, image=image, image_id=image_id, compress=True,
                         descriptor={"image_size": 1 << 20, "image_tar_bytes": 1 << 20})
    with pytest.raises(ArchiveError, match="more than"):
        verify_archive(path)


@pytest.mark.parametrize("size", [-1, "big", None, 1 << 50, True])
def test_descriptor_image_size_must_be_a_sane_number(size, tmp_path):
    path = write_hostile(tmp_path, descriptor={"image_size": size})
    with pytest.raises(ArchiveError, match="image_size"):
        open_archive(path)


# ---- 5. sidecars: created exclusively, trusted only when this host wrote them -------------------
def test_sidecar_is_never_written_through_a_planted_symlink(tmp_path):
    path = write_hostile(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    side = sidecar_path(path)
    for name in (f"{side.name}.tmp-{os.getpid()}", f"{side.name}.tmp"):
        (tmp_path / name).symlink_to(victim)
    verify_archive(path, host_key=KEY)
    assert victim.read_text() == "precious\n"
    assert json.loads(side.read_text())["verified"]["ok"] is True


def test_sidecar_write_is_durable_and_leaves_no_temp(tmp_path, monkeypatch):
    """The verify record survives a power cut: its bytes are fsynced before the rename, then the directory."""
    path = write_hostile(tmp_path)
    side = sidecar_path(path)
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        st = os.fstat(fd)
        synced.append("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else st.st_size)
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", spy)
    verify_archive(path, host_key=KEY)
    assert json.loads(side.read_text())["verified"]["ok"] is True
    assert side.stat().st_size in synced and "dir" in synced
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, side.name])


def test_list_says_verified_only_for_sidecars_this_host_wrote(tmp_path):
    path = write_hostile(tmp_path)
    verify_archive(path, host_key=KEY)
    assert list_archives(tmp_path, host_key=KEY)[0]["verified"] == "yes"
    assert list_archives(tmp_path, host_key=b"another host key")[0]["verified"] == "no"
    assert list_archives(tmp_path)[0]["verified"] == "no"

    # a sidecar forged by whoever handed over the archive: right file identity, "ok", no valid MAC
    forged = json.loads(sidecar_path(path).read_text())
    forged["version"] = "v9.9.9-forged"
    sidecar_path(path).write_text(json.dumps(forged))
    row = list_archives(tmp_path, host_key=KEY)[0]
    assert row["verified"] == "no" and row["version"] == VERSION
    forged.pop("hmac", None)
    sidecar_path(path).write_text(json.dumps(forged))
    assert list_archives(tmp_path, host_key=KEY)[0]["verified"] == "no"


def test_host_key_is_made_once_with_0600_and_never_through_a_symlink(tmp_path):
    state = tmp_path / "state"
    key = catalog.host_key(state)
    assert len(key) >= 32 and catalog.host_key(state) == key
    key_file = catalog.host_key_path(state)
    assert (key_file.stat().st_mode & 0o777) == 0o600
    other = tmp_path / "other-state"
    (other / "backup").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    catalog.host_key_path(other).symlink_to(victim)
    with pytest.raises(OrchestratorError, match="host key"):
        catalog.host_key(other)
    assert victim.read_text() == "precious\n"


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


def test_the_good_archive_still_passes(tmp_path):
    image, image_id = docker_save(good_labels())
    path = write_hostile(tmp_path, image=image, image_id=image_id)
    assert verify_archive(path, host_key=KEY)["ok"] is True


def test_list_prints_an_archive_s_words_as_plain_text(tmp_path, capsys, monkeypatch):
    """A descriptor's free-text fields reach the terminal: no markup, no escape sequences."""
    from orchestrator.cli import main

    monkeypatch.setenv("AADS_STATE_DIR", str(tmp_path / "state"))
    out = tmp_path / "in"
    out.mkdir()
    write_hostile(out, descriptor={"created_at": "[bold red]\x1b[2J\x1b]0;pwned\x07", "registry_digest": "[link=x]y"})
    assert main(["backup", "list", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\x07" not in printed and "[bold" in printed  # shown, not applied


class _FakeMember:
    def __init__(self, size: int):
        self.member = type("M", (), {"size": size})()
        self.done = 0


def _fed(data: bytes, release_check) -> tuple[bytes, BaseException | None]:
    """What restore's feed hands the engine for `data`, and the error it stopped with."""
    import io

    from orchestrator.backup import restore

    holder: dict = {}
    got = []
    try:
        for chunk in restore._feed(io.BytesIO(data), _FakeMember(len(data)), lambda *a: None, holder, 1 << 30,
                                   release_check):
            got.append(chunk)
    except restore._UploadAborted:
        pass
    return b"".join(got), holder.get("error")


def test_restore_holds_the_end_marker_back_until_the_image_checked_out():
    """docker load cannot finish without the tar's end-of-archive marker: the feed must not send
    it (nor anything after it) before every check passed; a refusal then drops the upload."""
    from orchestrator.backup.dockersave import ImageTarGate

    image, _ = docker_save()
    gate = ImageTarGate()
    gate.feed(image)
    marker = gate.safe
    assert image[marker:marker + 1024] == b"\0" * 1024
    data = image + b"\0" * (3 << 20)   # zeros after the marker: it sits inside a full first chunk

    def refuse(gate, problem=None):
        raise ArchiveError("refused")

    sent, error = _fed(data, refuse)
    assert str(error) == "refused"
    assert len(sent) <= marker and data.startswith(sent), "bytes from the end marker on reached the engine"
    sent, error = _fed(data, lambda gate, problem=None: None)
    assert error is None and sent == data


def test_verify_still_checks_when_the_host_key_cannot_be_made(tmp_path, capsys, monkeypatch):
    from orchestrator.cli import main

    not_a_dir = tmp_path / "state"
    not_a_dir.write_text("a file where the state dir should be\n")
    monkeypatch.setenv("AADS_STATE_DIR", str(not_a_dir))
    path = write_hostile(tmp_path)
    assert main(["backup", "verify", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ok"] is True and "host key" in captured.err
    assert not sidecar_path(path).exists()
