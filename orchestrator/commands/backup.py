"""Backup commands: `orchestrator backup create|verify|restore|list`."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from orchestrator.context import Context
from orchestrator.options import json_option

pass_ctx = click.make_pass_decorator(Context)

GROUP_HELP = """Back up a version as one verified archive, for hosts without a registry.

\b
An archive holds the image (docker save, by image id), the version folder, the ledger
records (build with golden outputs, pushes), the adapters' hashes and a SHA256SUMS over
every member. It is a plain tar: `tar tf` lists it, `sha256sum -c SHA256SUMS` checks it.
  orchestrator backup create v5.5.4-dinov3 --out /mnt/usb
  orchestrator backup verify /mnt/usb/aads-ulora_v5.5.4-dinov3_....tar
  orchestrator backup restore /mnt/usb/aads-ulora_v5.5.4-dinov3_....tar
  orchestrator switch v5.5.4-dinov3          (compose target with image_source: local)
"""


@contextmanager
def _progress(ctx: Context, label: str) -> Iterator[Any]:
    """A byte progress bar on stderr, drawn from the first update on; yields the callback flows call."""
    state: dict[str, Any] = {"bar": None, "tasks": {}}

    def update(phase: str, done: int, total: int | None) -> None:
        if not ctx.stderr.is_terminal:  # logs get the summary line, not a redrawn bar
            return
        bar = state["bar"]
        if bar is None:
            bar = state["bar"] = Progress(TextColumn("[bold]{task.description}[/]"), BarColumn(), DownloadColumn(),
                                          TransferSpeedColumn(), TimeElapsedColumn(), console=ctx.stderr)
            bar.start()
        tasks = state["tasks"]
        if phase not in tasks:
            tasks[phase] = bar.add_task(label if phase == label else f"{label}: {phase}", total=total)
        bar.update(tasks[phase], completed=done, total=total if total and total >= done else None)

    try:
        yield update
    finally:
        if state["bar"] is not None:
            state["bar"].stop()


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so a killed create still removes its temporary file."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _plain(value: Any) -> Text:
    """An archive's own words as plain text: no rich markup, no terminal control characters."""
    return Text("".join(ch if ch.isprintable() else "?" for ch in str(value))[:200])


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.1f} MB"


@click.group("backup", help=GROUP_HELP)
def backup_group() -> None:
    pass


@backup_group.command("create")
@click.argument("version")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="directory for the archive [default: <state_dir>/backups]")
@click.option("--note", metavar="TEXT", help="why this backup was made (kept in the archive)")
@click.option("--compress", type=click.Choice(["zstd"]), default=None,
              help="store the image zstd-compressed (multithreaded; smaller, slower) [default: uncompressed]")
@json_option
@pass_ctx
def create_cmd(ctx: Context, version: str, out_dir: Path | None, note: str | None, compress: str | None,
               as_json: bool) -> None:
    """Write VERSION's latest build as one archive.

    Streams `docker save` of the build's image id into a temporary file next to the archive
    (memory stays flat), checks free space first, and renames it to
    aads-ulora_<version>_<image id>_<time>[_zstd].tar only when complete: an interrupted
    create leaves nothing under that name.
    """
    from orchestrator.backup.create import create_backup

    with _sigterm_interrupts(), _progress(ctx, f"backup {version}") as progress:
        result = create_backup(ctx, version, out_dir=out_dir, note=note, compress=compress, progress=progress)
    if as_json:
        ctx.emit_json(result)
        return
    ratio = f", {result['ratio']}x smaller image" if result["ratio"] else ""
    ctx.stdout.print(f"wrote {result['archive']}")
    ctx.stdout.print(f"  {_mb(result['size'])} ({_mb(result['image_bytes'])} image{ratio}) in {result['seconds']}s"
                     f" ({result['mb_per_s']} MB/s)")
    ctx.note(f"check it with `orchestrator backup verify {result['archive']}`")


@backup_group.command("verify")
@click.argument("archive", type=click.Path(path_type=Path))
@json_option
@pass_ctx
def verify_cmd(ctx: Context, archive: Path, as_json: bool) -> None:
    """Check every byte of ARCHIVE (no engine needed).

    Truncation and damaged headers anywhere, every member against SHA256SUMS, the image's
    layers against its config, the config digest against the recorded image id, and the
    manifest label against the archived version folder. The first bad member is named; exit 4.
    """
    from orchestrator.backup.catalog import host_key
    from orchestrator.backup.verify import verify_archive
    from orchestrator.errors import OrchestratorError

    try:
        key = host_key(ctx.config.state_path)
    except OrchestratorError as e:  # verify needs no state: check anyway, keep no sidecar
        ctx.note(f"{e}: the outcome is not kept for `backup list`")
        key = None
    with _progress(ctx, "verify") as progress:
        report = verify_archive(archive, progress=progress, host_key=key)
    if as_json:
        ctx.emit_json(report)
        return
    ctx.stdout.print(f"OK {report['archive']}")
    ctx.stdout.print(f"  {report['version']}  image {report['image_id'][:19]}  {report['layers']} layers, "
                     f"{len(report['members'])} members, {_mb(report['size'])}")


@backup_group.command("restore")
@click.argument("archive", type=click.Path(path_type=Path))
@click.option("--push", is_flag=True, help="also push the image to the configured registry and record the push")
@click.option("--force", is_flag=True,
              help="restore even where the local version folder or the ledger's image differ (the local "
                   "folder is replaced and kept under <state_dir>/backup/replaced/)")
@json_option
@pass_ctx
def restore_cmd(ctx: Context, archive: Path, push: bool, force: bool, as_json: bool) -> None:
    """Load ARCHIVE into this engine and ledger, ready to switch to.

    Refuses a damaged or changed archive (nothing is tagged or recorded before every check
    passed). Without --push the ledger gets a push record of origin restore-local: a compose
    target with `image_source: local` then switches to the loaded image id with no registry.
    A version whose local folder differs is refused unless --force.
    """
    from orchestrator.backup.restore import restore_backup

    with _progress(ctx, "restore") as progress:
        result = restore_backup(ctx, archive, push=push, force=force, progress=progress)
    if as_json:
        ctx.emit_json(result)
        return
    ctx.stdout.print(f"restored {result['version']} (image {result['image_id'][:19]}, origin {result['origin']}, "
                     f"ledger {result['ledger']}, folder {result['folder']}) in {result['seconds']}s")
    ctx.note(f"next: `orchestrator switch {result['version']}`")


@backup_group.command("list")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@json_option
@pass_ctx
def list_cmd(ctx: Context, directory: Path | None, as_json: bool) -> None:
    """Archives in DIRECTORY [default: <state_dir>/backups], newest first.

    VERIFIED is "yes" when the last `backup verify` (or restore) on this host passed and the
    file has not changed since; "no" for archives never verified here (a sidecar this host did
    not sign counts for nothing); "failed" / "changed" / "damaged".
    """
    from orchestrator.backup.catalog import host_key, list_archives
    from orchestrator.backup.create import default_dir

    directory = directory or default_dir(ctx)
    if directory == default_dir(ctx) and not directory.exists():
        rows: list[dict[str, Any]] = []
    else:
        rows = list_archives(directory, host_key(ctx.config.state_path, create=False))
    if as_json:
        ctx.emit_json(rows)
        return
    if not rows:
        ctx.note(f"no backup archives in {directory}")
        return
    table = Table(box=None, header_style="bold")
    for col in ("archive", "version", "image id", "registry digest", "size", "created", "verified"):
        table.add_column(col)
    for r in rows:
        cells = (r["archive"], r.get("version") or "-", (r.get("image_id") or "-")[:19],
                 (r.get("registry_digest") or "-")[:19], _mb(r.get("size")), r.get("created_at") or "-", r["verified"])
        table.add_row(*(_plain(c) for c in cells))
    ctx.stdout.print(table)


def register(cli: click.Group) -> None:
    cli.add_command(backup_group)
