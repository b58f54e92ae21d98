"""Commands of this area are added by register()."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    pass
