"""The options many commands share, each defined once with one help text.

    @json_option           --json            the result as JSON on stdout (docs/cli-json.md)
    @target_option         --target/-t NAME  the deployment target
    @lock_timeout_option   --lock-timeout S  how long to wait for the target's lock

`--wait` was the lock option's old name; it stays as a hidden alias that warns, because in helm
and kubectl `--wait` means "wait for readiness", which this never did.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

JSON_HELP = "Print the result as JSON on stdout (shape: docs/cli-json.md); progress stays on stderr."
TARGET_HELP = "Deployment target from orchestrator.yaml (default: the config's default_target, `local`)."
LOCK_TIMEOUT_HELP = ("Wait up to SECONDS for another switch on the target to finish and release its lock "
                     "(default 0: refuse at once, exit 3).")
WAIT_DEPRECATED = "warning: --wait is deprecated and will be removed; use --lock-timeout SECONDS (same meaning)"


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help=JSON_HELP)(f)


def target_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--target", "-t", metavar="NAME", help=TARGET_HELP)(f)


def lock_timeout_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--lock-timeout SECONDS, passed to the command as `lock_timeout_s`; --wait is its hidden alias."""

    @functools.wraps(f)
    def wrapper(*args: Any, lock_timeout_s: float | None, deprecated_wait_s: float | None, **kwargs: Any) -> Any:
        if deprecated_wait_s is not None:
            click.echo(WAIT_DEPRECATED, err=True)
            if lock_timeout_s is None:
                lock_timeout_s = deprecated_wait_s
        return f(*args, lock_timeout_s=lock_timeout_s or 0.0, **kwargs)

    seconds = click.FloatRange(min=0)
    wrapper = click.option("--wait", "deprecated_wait_s", type=seconds, default=None, hidden=True)(wrapper)
    return click.option("--lock-timeout", "lock_timeout_s", type=seconds, default=None, metavar="SECONDS",
                        help=LOCK_TIMEOUT_HELP)(wrapper)
