"""Version commands: new-version, build, push, list, show, verify, release."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from orchestrator.context import Context
from orchestrator.errors import UsageError
from orchestrator.ledger import Build, Push
from orchestrator.options import json_option
from orchestrator.resolve import known_version
from orchestrator.variants import VARIANTS, registry_tag
from aads_manifest import ManifestError, load_manifest, manifest_sha256, version_key

pass_ctx = click.make_pass_decorator(Context)


# ---- state of every version ------------------------------------------------------------------
def _build_dict(b: Build | None) -> dict[str, Any] | None:
    if b is None:
        return None
    return {"id": b.id, "variant": b.variant, "image_id": b.image_id, "manifest_sha256": b.manifest_sha256,
            "git_commit": b.git_commit, "built_at": b.built_at, "build_seconds": b.build_seconds,
            "size_bytes": b.size_bytes, "origin": b.origin, "golden": b.golden}


def _push_dict(p: Push | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"id": p.id, "build_id": p.build_id, "variant": p.variant, "repository": p.repository, "tag": p.tag,
            "digest": p.digest, "image_ref": p.image_ref, "pushed_at": p.pushed_at, "origin": p.origin}


def version_state(ctx: Context, version: str) -> dict[str, Any]:
    """One version as list/show report it: manifest validity, latest build/push, live targets, marks."""
    version_dir = ctx.config.versions_path / version
    row: dict[str, Any] = {"version": version, "valid": True, "error": None, "backbone": None, "fallback": None,
                           "manifest_sha256": None}
    try:
        manifest = load_manifest(version_dir)
        row.update(backbone=f"{manifest.backbone.family}:{manifest.backbone.model_id}", fallback=manifest.fallback,
                   manifest_sha256=manifest_sha256(version_dir))
    except ManifestError as e:
        row.update(valid=False, error="; ".join(e.errors))
    ledger = ctx.ledger
    build, push = ledger.latest_build(version), ledger.latest_push(version)
    live = [lv.target for lv in ledger.all_live() if lv.version == version]
    failed_marks = ledger.failed_digests()
    failed = sorted({d for p in ledger.pushes(version) for d in [p.digest] if d in failed_marks})
    state = "live" if live else "pushed" if push else "built" if build else "defined"
    frozen_sha = ledger.build(push.build_id).manifest_sha256 if push else None
    variants = {}
    for v in VARIANTS:  # each variant's own latest build and push (its tag: orchestrator/variants.py)
        vb, vp = ledger.latest_build(version, v), ledger.latest_push(version, v)
        variants[v] = {"tag": registry_tag(version, v), "state": "pushed" if vp else "built" if vb else None,
                       "build": _build_dict(vb), "push": _push_dict(vp)}
    # Pushes from before variant tags: a CPU image under the plain tag, which belongs to the CUDA image.
    misplaced = sorted({f"{p.tag} holds the {p.variant} image {_short(p.digest)}" for p in ledger.pushes(version)
                        if p.tag != registry_tag(version, p.variant)})
    row.update(
        state=state, live_on=live, variants=variants, misplaced_tags=misplaced,
        build=_build_dict(build), push=_push_dict(push),
        failed_digests={d: [f"{m['target']}: {m['reason']}" for m in failed_marks[d]] for d in failed},
        manifest_changed_since_push=bool(frozen_sha and row["manifest_sha256"] and frozen_sha != row["manifest_sha256"]),
    )
    return row


def all_versions(ctx: Context) -> list[str]:
    root = ctx.config.versions_path
    if not root.is_dir():
        raise UsageError(f"versions directory {root} does not exist")
    names = [d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return sorted(names, key=version_key)


def _short(digest: str | None, n: int = 19) -> str:
    return digest[:n] if digest else "-"


def _variant_cell(v: dict[str, Any]) -> str:
    if v["push"]:
        return f"pushed {_short(v['push']['digest'])}"
    if v["build"]:
        return f"built {v['build']['image_id'][7:19]}"
    return "-"


# ---- commands --------------------------------------------------------------------------------
@click.command("new-version")
@click.argument("name")
@click.option("--from", "source", required=True, metavar="VERSION", help="existing version to start from")
@pass_ctx
def new_version_cmd(ctx: Context, name: str, source: str) -> None:
    """Create versions/NAME/ from an existing version (NAME: vMAJOR.MINOR.PATCH-OPTIMIZATION).

    The copy gets its own `version:` and `created:`, and `fallback:` names the source version.
    Refuses an existing NAME. Edit the new version.yaml, then build it.
    """
    from orchestrator.newversion import new_version

    path = new_version(ctx, name, source)
    ctx.stdout.print(f"created {path} from {source}")
    ctx.note(f"next: edit {path}/version.yaml (description, changes, backbone), then `orchestrator build {name}`")


@click.command("build")
@click.argument("version")
@click.option("--variant", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="cuda: CUDA torch from the package index; cpu: the local CPU torch wheel (CI, tests)")
@click.option("--models", type=click.Path(path_type=Path), metavar="DIR",
              help="model set to bake [default: <models_dir>/<version> from the config]")
@click.option("--base-image", metavar="IMAGE",
              help="FROM image [default: python:3.11-slim-bookworm for cuda (aads-base:bookworm where it "
                   "cannot be pulled), aads-base:bookworm for cpu]")
@click.option("--torch-wheel", type=click.Path(path_type=Path), metavar="FILE",
              help="CPU torch wheel for --variant cpu [default: found in pip's find-links, or $AADS_TORCH_WHEEL]")
@click.option("--no-cache", is_flag=True, help="build every layer again")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="extra image label (repeatable), e.g. ci.pipeline=1234; aads.* and org.opencontainers.* "
                   "are set by the build. A label makes a different image id than the same build without it")
@click.option("--no-golden", is_flag=True, help="skip recording golden outputs (verify and switches then fail)")
@json_option
@pass_ctx
def build_cmd(ctx: Context, version: str, variant: str, models: Path | None, base_image: str | None,
              torch_wheel: Path | None, no_cache: bool, labels: tuple[str, ...], no_golden: bool,
              as_json: bool) -> None:
    """Build the image of VERSION and record it in the ledger.

    Bakes the version's manifest and model set, starts the built image once to record its
    decisions on the golden image set, then records version, image id, manifest sha256, git
    commit, build time, size and variant. A version pushed under another manifest hash is
    frozen and refused.
    """
    from orchestrator.build import build, extra_labels

    b = build(ctx, version, variant=variant, models=models, base_image=base_image, torch_wheel=torch_wheel,
              no_cache=no_cache, golden_outputs=not no_golden, labels=extra_labels(labels))
    if as_json:
        ctx.emit_json(_build_dict(b))
    else:
        ctx.stdout.print(f"{version}: build {b.id} {b.image_id[:19]} ({b.variant}, {(b.size_bytes or 0) / 1e6:.0f} MB, "
                         f"{b.build_seconds:.1f}s)")


@click.command("push")
@click.argument("version")
@click.option("--variant", type=click.Choice(["cuda", "cpu"]), help="push the latest build of this variant "
              "[default: the variant of the latest build]")
@json_option
@pass_ctx
def push_cmd(ctx: Context, version: str, variant: str | None, as_json: bool) -> None:
    """Push the latest build of VERSION under its variant's tag and record its digest.

    \b
    cuda (the version's image): <registry>:VERSION
    cpu:                        <registry>:VERSION-cpu
    A tag that already names another digest is never moved: the push is refused.
    """
    from orchestrator.push import push

    record, new = push(ctx, version, variant=variant)
    if as_json:
        ctx.emit_json({**_push_dict(record), "new": new})
    else:
        ctx.stdout.print(f"{version} ({record.variant}): {record.repository}:{record.tag} = {record.image_ref}"
                         + ("" if new else " (already pushed)"))


@click.command("list")
@json_option
@pass_ctx
def list_cmd(ctx: Context, as_json: bool) -> None:
    """Every version with its state: defined, built, pushed, or live (on which targets).

    The CUDA and CPU columns say whether each variant is built or pushed (with its digest):
    CUDA is <registry>:VERSION, CPU <registry>:VERSION-cpu. Digests a switch marked as failed
    are flagged.
    """
    rows = [version_state(ctx, v) for v in all_versions(ctx)]
    if as_json:
        ctx.emit_json(rows)
        return
    lines, notes = [("VERSION", "STATE", "BACKBONE", "CUDA", "CPU")], {}
    for r in rows:
        state = r["state"] + (f" on {', '.join(r['live_on'])}" if r["live_on"] else "")
        lines.append((r["version"], state, r["backbone"] or "-",
                      *(_variant_cell(r["variants"][v]) for v in VARIANTS)))
        notes[r["version"]] = (
            ([f"invalid manifest: {r['error']}"] if not r["valid"] else [])
            + (["manifest changed after push: the version is frozen, make a new one"]
               if r["manifest_changed_since_push"] else [])
            + [f"failed digest {_short(d)}: {'; '.join(why)}" for d, why in r["failed_digests"].items()]
            + [f"{m} (pushed before variant tags): delete that tag in the registry before pushing the CUDA image"
               for m in r["misplaced_tags"]]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    for line in lines:
        ctx.stdout.print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip(), markup=False)
        for note in notes.get(line[0], []):
            ctx.stdout.print(f"  [red]![/] {note}", soft_wrap=True)


@click.command("show")
@click.argument("version")
@json_option
@pass_ctx
def show_cmd(ctx: Context, version: str, as_json: bool) -> None:
    """The manifest of VERSION with its build, push and deployment records."""
    known_version(ctx, version)
    manifest = load_manifest(ctx.config.versions_path / version)
    state = version_state(ctx, version)
    ledger = ctx.ledger
    data = {
        **state,
        "manifest": manifest.model_dump(mode="json"),
        "builds": [_build_dict(b) for b in ledger.builds(version)],
        "pushes": [_push_dict(p) for p in ledger.pushes(version)],
        "live": [vars(lv) for lv in ledger.all_live() if lv.version == version],
    }
    if as_json:
        ctx.emit_json(data)
        return
    out = ctx.stdout
    out.print(f"[bold]{version}[/]  {state['state']}" + (f" on {', '.join(state['live_on'])}" if state["live_on"] else ""))
    out.print(f"  {' '.join(manifest.description.split())}")
    bb = manifest.backbone
    prev = f" (was {bb.previous.family}:{bb.previous.model_id})" if bb.previous else ""
    out.print(f"  backbone        {bb.family}:{bb.model_id}{prev}")
    out.print(f"  manifest sha256 {state['manifest_sha256']}")
    out.print(f"  created         {manifest.created.isoformat()}   fallback: {manifest.fallback or '-'}")
    dyn = manifest.dynamic_blocks
    out.print(f"  dynamic blocks  {'on' if dyn.enabled else 'off'}"
              + (f" (claimed latency reduction {dyn.claimed_latency_reduction})" if dyn.claimed_latency_reduction else ""))
    t = manifest.training
    out.print(f"  training        lr {t.learning_rate:g}, batch {t.batch_size}, epochs {t.epochs}")
    out.print(f"  crops           {', '.join(f'{c} ({len(k)})' for c, k in manifest.crops.items())}")
    out.print(f"  breaking        {', '.join(manifest.breaking_changes) or 'none'}")
    out.print(f"  compatibility   {manifest.backward_compatibility}")
    if state["manifest_changed_since_push"]:
        out.print("  [red]the manifest changed after the version was pushed: make a new version[/]")
    for title, rows, cols in (
        ("builds", data["builds"], ("id", "variant", "image_id", "built_at", "size_bytes", "git_commit")),
        ("pushes", data["pushes"], ("id", "variant", "tag", "build_id", "image_ref", "pushed_at")),
        ("live", data["live"], ("target", "digest", "slot", "since")),
    ):
        if not rows:
            out.print(f"  {title}: none")
            continue
        table = Table(title=title, title_justify="left", box=None, pad_edge=False)
        for c in cols:
            table.add_column(c)
        for r in rows:
            table.add_row(*[str(r.get(c) if r.get(c) is not None else "-")[:72] for c in cols])
        out.print(table)
    for d, why in state["failed_digests"].items():
        out.print(f"  [red]failed digest[/] {d}: {'; '.join(why)}")


@click.command("verify")
@click.argument("version")
@click.option("--variant", type=click.Choice(["cuda", "cpu"]),
              help="the variant to check [default: cuda when it is pushed, else the last pushed or built]")
@click.option("--no-start", is_flag=True, help="check registry, labels and user only; do not start the image")
@click.option("--timeout", "timeout_s", type=float, default=300, show_default=True, help="seconds to wait for /ready")
@json_option
@pass_ctx
def verify_cmd(ctx: Context, version: str, variant: str | None, no_start: bool, timeout_s: float,
               as_json: bool) -> None:
    """Check that VERSION's pushed image (one variant) is still what was built.

    The variant's registry tag resolves to the recorded digest, the labels match the manifest
    and the variant, the image
    runs as non-root, starts with a read-only root filesystem, becomes ready, and gives the
    golden outputs recorded at build time. Exit 0 only when every check passes.
    """
    from orchestrator.verify import verify

    known_version(ctx, version)
    if variant is None:  # the version's image (CUDA) when pushed, else what was pushed or built last
        last = ctx.ledger.latest_push(version) or ctx.ledger.latest_build(version)
        variant = "cuda" if ctx.ledger.latest_push(version, "cuda") else last.variant if last else "cuda"
    report = verify(ctx, version, variant=variant, start=not no_start, ready_timeout_s=timeout_s)
    if as_json:
        ctx.emit_json(report.to_dict())
    else:
        for c in report.checks:
            mark = "[green]ok[/]  " if c.ok else "[red]FAIL[/]"
            ctx.stdout.print(f"{mark} {c.name:<9} {c.detail}")
    if not report.ok:
        raise report.error(f"{version} ({variant}) failed verification")


@click.command("release")
@click.argument("version")
@click.option("--push", "push_tag", is_flag=True, help="also push the tag (starts the CI release workflow)")
@click.option("--remote", default="origin", show_default=True, help="git remote for --push")
@json_option
@pass_ctx
def release_cmd(ctx: Context, version: str, push_tag: bool, remote: str, as_json: bool) -> None:
    """Create the annotated git tag VERSION once the version builds and verifies.

    The tag message holds the manifest's description and sha256. A tag that already exists on
    another commit is refused. Pushing the tag starts .github/workflows/release.yml, which
    builds and pushes the version's image through the orchestrator.
    """
    from orchestrator.release import release

    rel, _ = release(ctx, version, push=push_tag, remote=remote)
    if as_json:
        ctx.emit_json(vars(rel))
        return
    what = "created" if rel.created else "already exists"
    ctx.stdout.print(f"tag {rel.tag} {what} on {rel.commit[:12]}" + (f", pushed to {remote}" if rel.pushed else ""))
    if not rel.pushed:
        ctx.note(f"next: `git push {remote} {rel.tag}` starts the release workflow")


COMMANDS = (new_version_cmd, build_cmd, push_cmd, list_cmd, show_cmd, verify_cmd, release_cmd)


def register(cli: click.Group) -> None:
    for command in COMMANDS:
        cli.add_command(command)
