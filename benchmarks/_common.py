"""What every benchmark script shares: the machine line, a free port, progress on stderr, one
percentile definition, writing the raw JSON, stopping a child process, and replacing the script's own
section of docs/benchmarks.md.

Imported as `benchmarks._common` (each script puts the repository root on sys.path first). Needs
nothing outside the standard library: a script passes its already imported torch to `machine()`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable


def sayer(tool: str) -> Callable[[str], None]:
    """A `say(msg)` that prints `tool: msg` on stderr at once (stdout stays for --json)."""
    def say(msg: str) -> None:
        print(f"{tool}: {msg}", file=sys.stderr, flush=True)
    return say


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: Iterable[float], p: int) -> float | None:
    """The p-th percentile (1..99) by `statistics.quantiles(method="inclusive")`: linear
    interpolation between the closest ranks, numpy's default. None for no values."""
    xs = list(values)
    if not 1 <= p <= 99:
        raise ValueError(f"percentile {p}: expected a whole number from 1 to 99")
    if not xs:
        return None
    if len(xs) == 1:
        return float(xs[0])
    return statistics.quantiles(xs, n=100, method="inclusive")[p - 1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _gpu(torch: Any | None) -> str:
    if torch is not None:
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    if not shutil.which("nvidia-smi"):
        return "CPU only"
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    first = out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    m = re.match(r"GPU \d+: (.+?)(?: \(UUID|$)", first)
    return m.group(1) if m else "CPU only"


def machine(*, torch: Any | None = None, load: float | None = None) -> str:
    """One line naming the machine a figure came from: cores, CPU, memory, GPU (from `torch` when
    given, else `nvidia-smi -L`), torch's version when given, and the load average when given."""
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    line = f"{os.cpu_count()}-core {platform.machine()} ({_cpu_model()}), {mem_gib:.0f} GiB, {_gpu(torch)}"
    if torch is not None:
        line += f", torch {torch.__version__}"
    if load is not None:
        line += f", load average {load:.1f} at start" + (" (machine shared)" if load > (os.cpu_count() or 1) else "")
    return line


def write_section(doc: Path, heading: str, text: str) -> None:
    """Replace the section starting with `heading` ("## Backup") in `doc` with `text` (which starts
    with that heading), or append it; every other section stays as it is."""
    old = doc.read_text() if doc.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = text.rstrip("\n") + "\n"
    if pattern.search(old):
        new = pattern.sub(lambda m: body + ("\n" if m.end() < len(old) else ""), old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + body
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(new)


def pythonpath_first(code: Path) -> str:
    """PYTHONPATH for a child that must import `code`'s packages first while packages carried on the
    caller's PYTHONPATH (wheels on a GPU host) stay reachable."""
    return os.pathsep.join(p for p in (str(code), os.environ.get("PYTHONPATH", "")) if p)


def write_json(path: Path, doc: Any) -> None:
    """A benchmark's raw figures as indented JSON, the folder made if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def stop_process(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace_s`; reaped either way."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
