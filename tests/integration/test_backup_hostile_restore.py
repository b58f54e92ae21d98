"""Hostile backup archives against the real engine: a refused restore leaves the engine as it was.

Each archive here is crafted from a genuine one (`backup create` on a `small` host, see
test_backup.py) and rewritten with every checksum right, as anyone handing over an archive can:
an image member that carries tags of another image (docker load would move them), a
`repositories` file, a second image, a ledger that names a registry image the archive never
held, a build record with a field missing. The victims are tags of tiny images this test makes
itself; after each refused restore their ids are compared with before, and nothing the archive
held may be left in the engine.
"""

from __future__ import annotations

import io
import json
import secrets
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from orchestrator.backup import format as fmt
from tests.hostile_archives import drop, image_parts, write_hostile
from tests.integration.conftest_faults import one_line_error
from tests.integration.test_backup import VERSION, Host, import_small_image, small  # noqa: F401 - fixture

pytestmark = [pytest.mark.engine]
pytest_plugins = ["tests.integration.conftest_faults"]


@pytest.fixture
def victim(small) -> Iterator[tuple[str, str]]:  # noqa: F811 - the fixture imported above
    """(tag, image id): a tiny image of this test under a tag of its own, which an archive tries to move."""
    image_id = import_small_image(small.client, VERSION, small.versions_dir / VERSION, size=1 << 16)
    tag = f"aads-i13b-victim-{secrets.token_hex(4)}:keep"
    repo, name = tag.split(":")
    small.client.api.tag(image_id, repo, tag=name)
    small.images.append(image_id)   # removed (with its tags) at the end
    yield tag, image_id


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _rewrite_image(image: bytes, change: Callable[[list[dict[str, Any]], dict[str, bytes]], None]) -> bytes:
    """The docker save tar with its manifest.json (and files) changed by `change`."""
    files: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(image)) as tar:
        for info in tar.getmembers():
            files[info.name] = (info, tar.extractfile(info).read() if info.isfile() else b"")
    manifest = json.loads(files["manifest.json"][1])
    extra: dict[str, bytes] = {}
    change(manifest, extra)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, (info, data) in files.items():
            if name == "manifest.json":
                continue
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
        for name, data in {**extra, "manifest.json": json.dumps(manifest).encode()}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def craft(host: Host, original: Path, *, image_change=None, build_changes: dict[str, Any] | None = None,
          pushes: list[dict[str, Any]] | None = None, compress: bool = False) -> Path:
    """A self-consistent archive made from `original` with the given changes."""
    members = _members(original)
    descriptor = json.loads(members[fmt.DESCRIPTOR])
    ledger = json.loads(members[fmt.LEDGER])
    image = members[fmt.IMAGE]
    if image_change is not None:
        image = _rewrite_image(image, image_change)
    descriptor.pop("image_tar_bytes", None)
    descriptor.update(image_size=descriptor["image_size"] + len(image),
                      image_member=fmt.IMAGE_ZSTD if compress else fmt.IMAGE)
    build = {**ledger["build"], **(build_changes or {})}
    build = {k: v for k, v in build.items() if v is not drop()}
    out = host.root / "crafted"
    out.mkdir(exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    prefix = f"{fmt.VERSIONS_PREFIX}{VERSION}/"
    return write_hostile(out, image=image, image_id=descriptor["image_id"], descriptor=descriptor, build=build,
                         pushes=ledger["pushes"] if pushes is None else pushes,
                         files={n[len(prefix):]: b for n, b in members.items() if n.startswith(prefix)},
                         compress=compress)


def _gone(host: Host) -> None:
    """The archive's own image leaves the host, and the ledger forgets it: a restore would load it."""
    host.remove_image(host.images[0])
    host.forget(VERSION)


def _tags_of(host: Host, image_id: str) -> list[str]:
    return sorted(host.client.images.get(image_id).tags) if host.has_image(image_id) else []


def _refused_and_untouched(host: Host, path: Path, victim: tuple[str, str], pattern: str,
                           strangers: tuple[str, ...] = ()) -> None:
    tag, victim_id = victim
    before = _tags_of(host, victim_id)
    r = host.run("backup", "restore", str(path))
    try:
        assert r.returncode == 4, f"rc {r.returncode}: {r.stderr[-2000:]}"
        assert pattern in one_line_error(r.stderr), r.stderr[-2000:]
        assert host.client.images.get(tag).id == victim_id, f"{tag} was moved by a refused restore"
        assert _tags_of(host, victim_id) == before
        assert not host.has_image(host.images[0]), "the refused image was left in the engine"
        for image_id in strangers:
            assert not host.has_image(image_id), f"an extra image of the archive ({image_id[:19]}) was loaded"
        assert host.records(VERSION) == ([], [])
    finally:  # what an old, trusting restore would have left: ours to clean up
        for image_id in strangers:
            if host.has_image(image_id):
                host.remove_image(image_id)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
def test_image_member_tagging_another_image_is_refused_and_moves_nothing(small, victim, compress):  # noqa: F811
    """zstd too: that upload has no Content-Length, only the held-back end marker keeps the
    engine from finishing the load."""
    original = Path(small.create()["archive"])
    path = craft(small, original, image_change=lambda manifest, extra: manifest[0].update(RepoTags=[victim[0]]),
                 compress=compress)
    _gone(small)
    _refused_and_untouched(small, path, victim, "RepoTags")


def test_image_member_with_a_repositories_file_is_refused(small, victim):  # noqa: F811
    original = Path(small.create()["archive"])
    repo, tag = victim[0].split(":")

    def add_repositories(manifest, extra):
        extra["repositories"] = json.dumps({repo: {tag: small.images[0][7:]}}).encode()

    path = craft(small, original, image_change=add_repositories)
    _gone(small)
    _refused_and_untouched(small, path, victim, "repositories")


def test_image_member_with_a_second_tagged_image_loads_neither(small, victim):  # noqa: F811
    original = Path(small.create()["archive"])
    files, stranger_id, entry = image_parts({"stranger": secrets.token_hex(4)}, seed=secrets.randbits(16),
                                            layer_sizes=(4000,))

    def add_image(manifest, extra):
        extra.update(files)
        manifest.append({**entry, "RepoTags": [victim[0]]})

    path = craft(small, original, image_change=add_image)
    _gone(small)
    _refused_and_untouched(small, path, victim, "2 images", strangers=(stranger_id,))


def test_build_record_missing_a_field_is_refused_before_loading(small, victim):  # noqa: F811
    original = Path(small.create()["archive"])
    path = craft(small, original, build_changes={"built_at": drop()})
    _gone(small)
    _refused_and_untouched(small, path, victim, "built_at")


def test_restored_records_name_only_what_was_loaded(small):  # noqa: F811
    """The archive's ledger claims a push to another registry: the restore records the local
    repository and the loaded image id, so a switch can only ever run the image it loaded."""
    original = Path(small.create()["archive"])
    evil = {"version": VERSION, "build_id": 1, "repository": "evil.example:5000/aads-ulora", "tag": VERSION,
            "digest": "sha256:" + "ee" * 32, "pushed_at": "2026-11-24T20:00:00+00:00", "origin": "push"}
    path = craft(small, original, pushes=[evil], build_changes={"origin": "build', 'evil", "size_bytes": 1})
    _gone(small)
    res = small.json("backup", "restore", str(path))
    image_id = small.images[0]
    assert res["loaded"] and res["registry_digest"] == image_id
    builds, pushes = small.records(VERSION)
    assert pushes[-1].repository == small.registry and pushes[-1].digest == image_id
    assert pushes[-1].origin == "restore-local" and builds[-1].origin == f"restore:{path.name}"
    assert builds[-1].size_bytes == small.client.images.get(image_id).attrs["Size"]
    from orchestrator.context import Context
    from orchestrator.resolve import resolve
    deployable = resolve(Context(config_path=str(small.config_file)), VERSION)
    assert "evil" not in deployable.image_ref and deployable.build.image_id == image_id


def test_build_record_fields_are_checked_for_shape(small):  # noqa: F811
    original = Path(small.create()["archive"])
    path = craft(small, original, build_changes={"golden": [{"image": 1}]})
    _gone(small)
    r = small.run("backup", "restore", str(path))
    assert r.returncode == 4 and "golden" in one_line_error(r.stderr)
    assert not small.has_image(small.images[0]) and small.records(VERSION) == ([], [])


# the archive a hostile one was made from is itself fine: the crafting changes only what it says
def test_an_unchanged_rewrite_restores(small):  # noqa: F811
    original = Path(small.create()["archive"])
    path = craft(small, original)
    _gone(small)
    res = small.json("backup", "restore", str(path))
    assert res["loaded"] and small.has_image(small.images[0])


def test_an_extra_file_in_the_version_folder_is_not_archived(small):  # noqa: F811
    """The reader accepts exactly the files the manifest hash covers, so create writes just those."""
    (small.versions_dir / VERSION / "NOTES.md").write_text("local notes\n")
    path = Path(small.create()["archive"])
    assert small.json("backup", "verify", str(path))["ok"] is True
    with tarfile.open(path) as tar:
        assert [n for n in tar.getnames() if n.startswith(fmt.VERSIONS_PREFIX)] == [
            f"{fmt.VERSIONS_PREFIX}{VERSION}/adapter_spec.json", f"{fmt.VERSIONS_PREFIX}{VERSION}/version.yaml"]
    _gone(small)
    assert small.json("backup", "restore", str(path))["folder"] == "unchanged"
