"""`orchestrator logs [SLOT|VERSION]`: the command line that shows a target's service logs.

Compose: `docker compose -p <project> -f <compose file> --env-file <state>/compose.env logs <slot>`,
where the slot is named (blue, green, edge) or found from the ledger (the slot the VERSION runs in,
default: the live one). Kubernetes: `kubectl logs deployment/<name> -n <namespace> -c <container>`
with the target's kubeconfig and context (the Deployment's pods run the live version only).

Builders return argv and run nothing, so the command can print the line (--print) or run it.
"""

from __future__ import annotations

from orchestrator.backends.compose import compose_cli
from orchestrator.config import ComposeTarget, KubernetesTarget
from orchestrator.context import Context
from orchestrator.errors import UsageError

COMPOSE_SERVICES = ("blue", "green", "edge")


def logs_argv(ctx: Context, target: str | None, which: str | None, *, follow: bool = False,
              tail: int | None = None) -> list[str]:
    name, spec = ctx.config.target(target)
    if isinstance(spec, KubernetesTarget):
        return _kubectl_argv(ctx, name, spec, which, follow=follow, tail=tail)
    return _compose_argv(ctx, name, spec, which, follow=follow, tail=tail)


def _options(follow: bool, tail: int | None) -> list[str]:
    return (["--follow"] if follow else []) + (["--tail", str(tail)] if tail is not None else [])


def compose_service(ctx: Context, target: str, which: str | None) -> str:
    """blue | green | edge: named, or the slot the ledger says runs VERSION (default: the live one)."""
    if which in COMPOSE_SERVICES:
        return which
    live = ctx.ledger.live(target)
    if live is None:
        raise UsageError(f"nothing is live on target {target}: name a slot ({', '.join(COMPOSE_SERVICES)})")
    if which is None or which == live.version:
        return live.slot or "blue"
    if which == live.previous_version and live.previous_slot:
        return live.previous_slot
    raise UsageError(f"{which} is neither a slot ({', '.join(COMPOSE_SERVICES)}) nor a version that runs on "
                     f"{target} (live: {live.version}" + (f", previous: {live.previous_version}"
                                                            if live.previous_version else "") + ")")


def _compose_argv(ctx: Context, target: str, spec: ComposeTarget, which: str | None, *, follow: bool,
                  tail: int | None) -> list[str]:
    env_file = ctx.config.state_path / "compose" / target / "compose.env"
    if not env_file.is_file():
        raise UsageError(f"target {target} was never started here (no {env_file}): run `orchestrator up` first")
    service = compose_service(ctx, target, which)
    project = compose_cli.project_for(compose_cli.detect(), spec.project, ctx.config.path(spec.compose_file).resolve(),
                                      env_file, gpu=False)  # logs need no GPU file
    return project.argv("logs", *_options(follow, tail), service)


def _kubectl_argv(ctx: Context, target: str, spec: KubernetesTarget, which: str | None, *, follow: bool,
                  tail: int | None) -> list[str]:
    if which in COMPOSE_SERVICES:
        raise UsageError(f"target {target} is a Kubernetes target: it has no {which} slot; "
                         f"`orchestrator logs --target {target}` shows the live pods")
    live = ctx.ledger.live(target)
    if which is not None and (live is None or which != live.version):
        raise UsageError(f"{which} is not the version the ledger last recorded live on {target}"
                         f"{f' ({live.version})' if live else ''}: only the live pods have logs to read")
    argv = ["kubectl"]
    if spec.kubeconfig:
        argv += ["--kubeconfig", str(ctx.config.path(spec.kubeconfig))]
    if spec.context:
        argv += ["--context", spec.context]
    return argv + ["logs", f"deployment/{spec.deployment}", "-n", spec.namespace, "-c", spec.container,
                   *_options(follow, tail)]
