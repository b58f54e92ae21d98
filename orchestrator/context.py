"""What every command gets: the loaded config, the ledger (opened on first use) and the console."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from rich.console import Console

from orchestrator import config as config_mod
from orchestrator.ledger import Ledger


@dataclass
class Context:
    config_path: str | None = None
    stdout: Console = field(default_factory=lambda: Console(highlight=False, soft_wrap=True))
    # Progress and notes go to stderr, so `--json` output on stdout stays machine-readable.
    stderr: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))

    @cached_property
    def config(self) -> config_mod.Config:
        return config_mod.load(self.config_path)

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.config.state_path)

    def emit_json(self, data: Any) -> None:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        sys.stdout.flush()

    def note(self, message: str) -> None:
        self.stderr.print(message)
