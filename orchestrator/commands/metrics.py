"""`orchestrator metrics`: the ledger's switch and backup totals for Prometheus (print or push)."""

from __future__ import annotations

import os
import socket

import click

from orchestrator.context import Context
from orchestrator.options import json_option

METRICS_HELP = """Print the orchestrator's figures from the ledger, or push them to a pushgateway.

\b
Switches per target, action and outcome (with their durations), the latest switch per target,
backups created and restored, the latest backup. Without options: Prometheus text format on
stdout. --push URL PUTs them to a pushgateway (the compose stack runs one on
127.0.0.1:9091), which the stack's Prometheus scrapes; the values are totals recomputed from the
ledger, so pushing again is always safe. Run it after switches and backups (or from cron).

\b
  orchestrator metrics --push http://127.0.0.1:9091
"""


def register(cli: click.Group) -> None:
    @cli.command("metrics", help=METRICS_HELP)
    @click.option("--push", "push_url", metavar="URL", default=lambda: os.environ.get("AADS_PUSHGATEWAY_URL"),
                  help="pushgateway to PUT the figures to ($AADS_PUSHGATEWAY_URL)")
    @click.option("--instance", default=socket.gethostname, show_default="this host's name",
                  help="the pushgateway group's instance label (one group per machine)")
    @json_option
    @click.pass_obj
    def metrics_cmd(ctx: Context, push_url: str | None, instance: str, as_json: bool) -> None:
        from orchestrator.ledger_metrics import exposition, ledger_figures, push

        figures = ledger_figures(ctx.ledger)
        if push_url:
            group = push(figures, push_url, instance)
            if as_json:
                ctx.emit_json({"pushed": group, **figures})
            else:
                click.echo(f"pushed {len(figures['switches'])} switch series and backup totals to {group}")
        elif as_json:
            ctx.emit_json(figures)
        else:
            click.echo(exposition(figures).decode(), nl=False)
