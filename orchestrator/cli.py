"""`orchestrator`: build, push and switch AADS-ULoRA versions.

One rescue at the top: an OrchestratorError, a manifest error or a usage error (bad option,
missing argument) becomes one `error: ...` line on stderr and its exit code (the table in
orchestrator/errors.py, printed by --help); a traceback only with AADS_DEBUG=1.
"""

from __future__ import annotations

import os
import sys

import click

from orchestrator.context import Context
from orchestrator.errors import (
    INTERNAL,
    INTERRUPTED,
    OrchestratorError,
    UsageError,
    exit_code_epilog,
)
from aads_manifest import ManifestError

HELP = """Build, push and switch AADS-ULoRA versions.

\b
A version is a folder versions/<name>/ (version.yaml + adapter_spec.json).
It becomes one immutable image, pushed to the registry and deployed by digest.
Typical flow:
  orchestrator build v5.5.4-dinov3       build the image, record it in the ledger
  orchestrator push v5.5.4-dinov3        push it, record its registry digest
  orchestrator verify v5.5.4-dinov3      tag -> digest, labels, golden outputs
  orchestrator switch v5.5.4-dinov3      blue/green switch of the live version
  orchestrator rollback                  back to the previous live version
  orchestrator status | repair | logs    read the target; repair what a crash left; its logs

Config: orchestrator.yaml (or --config / $AADS_CONFIG); every key can be set by env (AADS_*).
"""


@click.group(help=HELP, epilog=exit_code_epilog(), context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", metavar="FILE", envvar="AADS_CONFIG",
              help="Config file (default: orchestrator.yaml in the repository, or built-in defaults).")
@click.version_option(package_name="aads-ulora", prog_name="orchestrator")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    ctx.obj = Context(config_path=config_path)


def _register_commands() -> None:
    # Each area keeps its commands in its own module; importing it adds them to `cli`.
    from orchestrator.commands import backup, compare, deploy, kubernetes, metrics, registry, versions  # noqa: F401

    for module in (versions, deploy, backup, kubernetes, registry, compare, metrics):
        module.register(cli)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="orchestrator", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return INTERRUPTED
    except click.exceptions.NoArgsIsHelpError as e:  # `orchestrator` alone: the help, as click prints it
        click.echo(e.format_message(), err=True)
        return UsageError.exit_code
    except click.UsageError as e:  # bad option or argument: one line like every error, no usage dump
        command = e.ctx.command_path if e.ctx is not None else "orchestrator"
        click.echo(f"error: {e.format_message().rstrip('.')} (see `{command} --help`)", err=True)
        return UsageError.exit_code
    except click.ClickException as e:  # click's other errors (a file it cannot open): one line
        click.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except OrchestratorError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except ManifestError as e:
        click.echo(f"error: invalid manifest {e}", err=True)
        return UsageError.exit_code
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return INTERRUPTED
    except Exception as e:  # a bug: still one line unless asked for the traceback
        if os.environ.get("AADS_DEBUG"):
            raise
        click.echo(f"error: internal error ({type(e).__name__}: {e}); rerun with AADS_DEBUG=1 for the traceback",
                   err=True)
        return INTERNAL
    return 0


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
