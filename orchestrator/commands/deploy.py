"""Deploy commands: up, switch, rollback, status, repair, history, logs.

Each asks the target's backend (compose or kubernetes, by the target's kind), turns what it
returns into the typed results of orchestrator/results.py and prints them as a table, or as JSON
with --json (docs/cli-json.md). Progress goes to stderr, so --json stays clean.
"""

from __future__ import annotations

import shlex
import subprocess
from typing import Any

import click

from orchestrator.backends import get_backend
from orchestrator.commands import render
from orchestrator.context import Context
from orchestrator.errors import EngineError, UsageError
from orchestrator.options import json_option, lock_timeout_option, target_option
from orchestrator.results import History, Status, SwitchPlan, SwitchResult


def _backend(ctx: Context, target: str | None) -> tuple[Any, str]:
    """The target's backend and its kind (compose | kubernetes)."""
    _, spec = ctx.config.target(target)
    return get_backend(ctx, target), spec.kind


def _repairs_of(st: dict[str, Any]) -> list[str]:
    """What a status that repairs (the backends before `repair()`) changed: the interrupted switches."""
    return [f"interrupted switch #{it['id']} ({it['action']} → {it['to_version']}, step {it['step']}): {it['repair']}"
            for it in st.get("interrupted") or [] if it.get("repair")]


def register(cli: click.Group) -> None:
    @cli.command("up")
    @click.argument("version", required=False)
    @target_option
    @json_option
    @click.pass_obj
    def up_cmd(obj: Context, version: str | None, target: str | None, as_json: bool) -> None:
        """Start the stack with a first live VERSION (default: the newest pushed version).

        \b
        Compose: builds the edge image if needed, starts the blue slot on the version's
        repo@digest, waits for /ready, runs the golden smoke test, then starts the HAProxy edge
        (127.0.0.1:8080 by default). Run again, it repairs what drifted and changes nothing else;
        with another VERSION than the live one it switches to it.
        """
        backend, kind = _backend(obj, target)
        render.print_result(obj, SwitchResult.from_backend(backend.up(version), kind), as_json)

    @cli.command("switch")
    @click.argument("version")
    @target_option
    @click.option("--keep-previous", is_flag=True,
                  help="Keep the old slot running (warm) after the switch: a rollback is then an instant flip.")
    @click.option("--dry-run", is_flag=True,
                  help="Print the plan (digest, image, slot or revision, steps) and exit 0: nothing is "
                       "started, locked or recorded. The registry tag is still checked.")
    @click.option("--canary", "canary_text", metavar="SHARES",
                  help="Move traffic in judged steps instead of at once: percentages of requests for the "
                       "candidate, e.g. 10,50,100 (default: the target's `canary`; none: one flip).")
    @click.option("--step", "step_text", metavar="DURATION",
                  help="How long each canary step runs before its analysis: 60s, 2m, 90 (default: the "
                       "target's canary_step_s, 60s).")
    @lock_timeout_option
    @json_option
    @click.pass_obj
    def switch_cmd(obj: Context, version: str, target: str | None, keep_previous: bool, dry_run: bool,
                   canary_text: str | None, step_text: str | None, lock_timeout_s: float, as_json: bool) -> None:
        """Make VERSION live with no failed request, or leave the live version serving.

        \b
        Steps (each shown on stderr, each recorded in the ledger):
          resolve   version -> recorded digest; the registry tag must still point there
          start     the idle slot on repo@digest
          ready     GET /ready on the slot (timeout: the target's ready_timeout_s)
          smoke     golden images must give the decisions recorded at build time
          flip      edge (HAProxy runtime API): enable the new slot, drain the old one
          canary    (with --canary 10,50,100 or the target's `canary`, instead of flip) the new
                    slot joins at weight 0; each step sets its share of requests, runs --step
                    long, then the analysis judges it against live from Prometheus (errors, p99,
                    review share, decision mix, OOD scores); a failed analysis sets its weight
                    to 0 at once, stops it, marks its digest failed naming the metric (exit 5)
          confirm   GET /v1/version through the public edge names VERSION
          watch     error rate through the edge for watch_s seconds; 5xx -> flip back
          drain     the old slot finishes its requests and leaves the edge
          stop      the old slot stops (unless --keep-previous)
        A failure before the flip stops the candidate (exit 5); a failure after it flips back
        (outcome 'reverted', exit 5). A switch to the live version does nothing and says so.

        \b
        Kubernetes targets: resolve, then patch the Deployment's container to the target's
        repository@digest (never loopback) with its pull secret (change-cause "orchestrator switch
        VERSION"), then wait like `kubectl rollout status` (up to replicas x pod_budget_s). A
        failed rollout is undone as `kubectl rollout undo` would and its revision kept, marked
        failed (exit 5); API errors are retried, and if the API stays unreachable the outcome is
        'unknown' and nothing is undone (exit 1). See docs/kubernetes.md.
        """
        backend, kind = _backend(obj, target)
        canary = _shares(canary_text)
        step_s = _duration(step_text, "--step") if step_text is not None else None
        if (canary or step_s) and kind != "compose":
            raise UsageError(f"--canary/--step apply to compose targets only, not {kind} (docs/operations.md)")
        extra = {"canary": canary, "step_s": step_s} if (canary or step_s) else {}
        if dry_run:
            render.print_plan(obj, _plan(obj, backend, kind, target, version, keep_previous, **extra), as_json)
            return
        res = backend.switch(version, keep_previous=keep_previous, wait_lock_s=lock_timeout_s, **extra)
        render.print_result(obj, SwitchResult.from_backend(res, kind), as_json)

    @cli.command("rollback")
    @click.option("--to-version", metavar="VERSION", help="Go to this version instead of the previous live one.")
    @target_option
    @click.option("--keep-previous", is_flag=True,
                  help="Compose: keep the slot rolled away from running (warm), to flip forward again instantly.")
    @lock_timeout_option
    @json_option
    @click.pass_obj
    def rollback_cmd(obj: Context, to_version: str | None, target: str | None, keep_previous: bool,
                     lock_timeout_s: float, as_json: bool) -> None:
        """Return to the previous live version (or --to-version).

        When the previous slot is still warm (the switch ran with --keep-previous), this is an
        instant flip in the edge; otherwise it is a full switch to the exact digest that ran before.
        On Kubernetes it is `kubectl rollout undo --to-revision` of the newest earlier revision not
        marked failed (--to-version: the newest such revision whose pods ran that version);
        `kubectl rollout undo deployment/aads-serving` works as well.
        """
        backend, kind = _backend(obj, target)
        if keep_previous and kind != "compose":  # by the target's kind: the option is compose's alone
            raise UsageError(f"--keep-previous applies to compose targets only, not {kind}")
        extra = {"keep_previous": True} if keep_previous else {}
        res = backend.rollback(to_version, wait_lock_s=lock_timeout_s, **extra)
        render.print_result(obj, SwitchResult.from_backend(res, kind), as_json)

    @cli.command("status")
    @target_option
    @json_option
    @click.pass_obj
    def status_cmd(obj: Context, target: str | None, as_json: bool) -> None:
        """Live version and its variant (cuda|cpu), digest, slot or revision, health, since when; the previous version; drift.

        Read-only, like `kubectl rollout status` or `helm status`. Drift is any difference between
        the host and the ledger (a slot running an image the ledger does not know, an edge sending
        traffic elsewhere): the next switch repairs it. A switch left half-done by a killed
        orchestrator is reported; `orchestrator repair` repairs it.
        """
        backend, kind = _backend(obj, target)
        st = Status.from_backend(backend.status(), kind)
        if as_json:
            obj.emit_json(st.to_dict())
            return
        render.print_status(obj, st.to_dict())

    @cli.command("repair")
    @target_option
    @json_option
    @click.pass_obj
    def repair_cmd(obj: Context, target: str | None, as_json: bool) -> None:
        """Repair a switch a killed orchestrator left half-done, then show the status.

        \b
        Compose: a switch left half-done (kill -9, crash) is undone (the edge back on the live
        slot, the candidate stopped) or, if it had passed the watch, finished forward. Drift
        (a hand edit) is repaired by the next switch, rollback or up, as before.
        Kubernetes: an interrupted switch's record is closed; the cluster itself finished or
        timed out the rollout, and the status reads it from there.
        Prints the status (as `orchestrator status`) plus the repairs made ("repairs": [] when
        there was nothing to repair).
        """
        backend, kind = _backend(obj, target)
        repair = getattr(backend, "repair", None)  # backends before repair(): status() repaired
        data = repair() if repair is not None else backend.status()
        if repair is None:
            data = {**data, "repairs": _repairs_of(data)}
        st = Status.from_backend(data, kind)
        if as_json:
            obj.emit_json(st.to_dict())
            return
        render.print_status(obj, st.to_dict())
        if st.repairs:
            for r in st.repairs:
                obj.stdout.print(f"[yellow]repaired[/yellow] {r}")
        else:
            obj.stdout.print("repairs: none needed")

    @cli.command("history")
    @target_option
    @click.option("--limit", "-n", type=click.IntRange(min=1), metavar="N", help="Show only the last N entries.")
    @json_option
    @click.pass_obj
    def history_cmd(obj: Context, target: str | None, limit: int | None, as_json: bool) -> None:
        """Every up, switch and rollback on the target: when, from -> to (variant), outcome, phases, who.

        The success rate counts succeeded against failed, reverted and interrupted switches over
        the shown range (no-ops are not counted). Digests that failed a switch are marked.
        """
        backend, kind = _backend(obj, target)
        h = History.from_backend(backend.history(limit), kind).to_dict()
        if as_json:
            obj.emit_json(h)
            return
        render.print_history(obj, h)

    @cli.command("logs")
    @click.argument("which", metavar="[SLOT|VERSION]", required=False)
    @target_option
    @click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until Ctrl-C.")
    @click.option("--tail", type=click.IntRange(min=0), metavar="N", help="Only the last N lines (default: all).")
    @click.option("--print", "print_only", is_flag=True, help="Print the command line instead of running it.")
    @click.pass_obj
    def logs_cmd(obj: Context, which: str | None, target: str | None, follow: bool, tail: int | None,
                 print_only: bool) -> None:
        """The serving logs of the live version, of a SLOT (blue, green, edge) or of a VERSION.

        \b
        Compose: `docker compose -p <project> -f <file> --env-file <state>/compose.env logs <slot>`,
        the slot being the one the ledger says runs VERSION (default: the live version).
        Kubernetes: `kubectl logs deployment/<name> -n <namespace> -c <container>` with the
        target's kubeconfig and context (the live pods; kubectl picks one pod).
        """
        from orchestrator.logs import logs_argv

        argv = logs_argv(obj, target, which, follow=follow, tail=tail)
        line = shlex.join(argv)
        if print_only:
            click.echo(line)
            return
        obj.note(f"$ {line}")
        try:
            code = subprocess.call(argv)
        except FileNotFoundError:
            raise EngineError(f"{argv[0]} is not installed") from None
        if code != 0:
            raise EngineError(f"`{argv[0]} ... logs` exited {code}")


def _shares(text: str | None) -> list[int] | None:
    from orchestrator.canary.steps import parse_shares

    if text is None:
        return None
    try:
        return parse_shares(text)
    except ValueError as e:
        raise UsageError(f"--canary: {e}") from None


def _duration(text: str, option: str) -> float:
    """"60s", "2m", "1h", "90", "1.5s" -> seconds (> 0)."""
    t = text.strip().lower()
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    unit = next((u for u in ("ms", "s", "m", "h") if t.endswith(u)), "")
    try:
        seconds = float(t[: len(t) - len(unit)] if unit else t) * scale.get(unit, 1)
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected a duration like 60s, 2m or 90") from None
    if not seconds > 0:
        raise UsageError(f"{option} {text!r}: must be more than 0")
    return seconds


def _plan(ctx: Context, backend: Any, kind: str, target: str | None, version: str, keep_previous: bool,
          canary: list[int] | None = None, step_s: float | None = None) -> SwitchPlan:
    """The backend's read-only facts a plan needs: compose's variant choice (GPU seen or not),
    the Kubernetes Deployment and the image its nodes would pull."""
    from orchestrator import plan

    name, spec = ctx.config.target(target)
    if kind == "kubernetes":
        return plan.kubernetes_plan(ctx, name, spec, version, deployment=backend.api.read_deployment(),
                                    image_for=backend.image_for)
    variant, why = backend.stack.variant_choice()
    return plan.compose_plan(ctx, name, spec, version, variant=variant, why=why, keep_previous=keep_previous,
                             canary=backend.canary_plan(canary, step_s))
