"""`orchestrator compare A B`: two versions' live figures side by side, from Prometheus."""

from __future__ import annotations

import os

import click

from orchestrator.context import Context
from orchestrator.errors import UsageError
from orchestrator.options import json_option

COMPARE_HELP = """Show two versions' figures side by side over a window, from Prometheus.

\b
Per version: images diagnosed, requests, 5xx share, p50/p99 latency, share sent to review,
OOD score p90, encoder blocks per image, images per batch, resident and CUDA memory. Between
them: p99 ratio (B / A), review share B - A, decision mix divergence (total variation of the
decision/crop/disease mixes) and OOD score shift (largest CDF gap): the figures a canary step is
judged on (docs/operations.md). Versions are matched by the `version` label of the slots'
series; --by slot compares the blue and green slots instead (e.g. the same version twice).

\b
  orchestrator compare v5.5.3-performance v5.5.4-dinov3 --window 10m
  orchestrator compare blue green --by slot --json
"""


def register(cli: click.Group) -> None:
    @cli.command("compare", help=COMPARE_HELP)
    @click.argument("a")
    @click.argument("b")
    @click.option("--window", default="10m", show_default=True, help="how far back: 90s, 10m, 2h, 1d")
    @click.option("--by", "label", type=click.Choice(["version", "slot"]), default="version", show_default=True,
                  help="the label A and B are values of")
    @click.option("--prometheus", "url", metavar="URL",
                  default=lambda: os.environ.get("AADS_PROMETHEUS_URL", "http://127.0.0.1:9090"),
                  show_default="$AADS_PROMETHEUS_URL or http://127.0.0.1:9090", help="Prometheus to ask")
    @json_option
    @click.pass_obj
    def compare_cmd(ctx: Context, a: str, b: str, window: str, label: str, url: str, as_json: bool) -> None:
        from orchestrator.canary.compare import compare, render, window_seconds
        from orchestrator.canary.prometheus import PrometheusClient

        try:
            seconds = window_seconds(window)
        except ValueError as e:
            raise UsageError(str(e)) from None
        with PrometheusClient(url) as prom:
            result = compare(prom, a, b, seconds, label)
        if as_json:
            ctx.emit_json(result)
        else:
            click.echo(render(result))
