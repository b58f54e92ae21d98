"""A host of a test's own: a project root holding orchestrator.yaml, state/ (the ledger) and
versions/, and the orchestrator CLI run against it as a real process. Engine tests build on it
(the compose fault stacks in tests/integration/conftest_faults.py, the backup hosts in
tests/integration/test_backup.py), so the environment, timeouts and --json handling are one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from orchestrator.ledger import Ledger


@dataclass(kw_only=True)
class ScratchHost:
    root: Path                                          # holds orchestrator.yaml, state/, versions/
    env: dict[str, str] = field(default_factory=dict)   # added to every orchestrator process's environment

    run_timeout: ClassVar[float] = 600   # seconds an orchestrator command may take before the test fails

    @property
    def config_file(self) -> Path:
        return self.root / "orchestrator.yaml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    def process_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """This host's environment: none of the caller's AADS_* settings, our config, `env`, then `extra`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AADS_")}
        env.update({"AADS_CONFIG": str(self.config_file), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                    "COLUMNS": "200"})
        env.update(self.env)
        env.update(extra or {})
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "orchestrator", *args]

    def run(self, *args: str, env: dict[str, str] | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), env=self.process_env(env), cwd=self.root, capture_output=True,
                              text=True, timeout=timeout or self.run_timeout)

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """The orchestrator in the background, in its own process group (kill -9 reaches only it).

        SIGINT is set back to its default: a test run started in the background (`cmd &`) inherits
        it ignored, and then Python installs no Ctrl-C handler in the child either.
        """
        return subprocess.Popen(self.argv(*args), env=self.process_env(env), cwd=self.root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def json(self, *args: str, env: dict[str, str] | None = None, timeout: float | None = None) -> Any:
        r = self.run(*args, "--json", env=env, timeout=timeout)
        assert r.returncode == 0, f"orchestrator {' '.join(args)} --json: rc {r.returncode}: {r.stderr[-2000:]}"
        return json.loads(r.stdout)

    def ledger(self) -> Ledger:
        return Ledger(self.state_dir)
