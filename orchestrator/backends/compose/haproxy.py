"""The edge's HAProxy, as the orchestrator drives it: the runtime API and the config on disk.

Traffic moves only through the runtime API (a unix socket inside the edge container), reached
with `docker exec` through the engine API: the host never talks to a container's bridge address
and HAProxy is never reloaded for a switch, so kept-alive client connections survive a flip.

Command builders (`runtime_argv`, `render_config`) and parsers (`parse_servers_state`,
`parse_stat`) are pure functions; `EdgeRuntime` is the one place that runs anything.
"""

from __future__ import annotations

import csv
import io
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from orchestrator.errors import EdgeError
from orchestrator.fsutil import atomic_write
from orchestrator.polling import NotYet, PollTimeout, poll_until

BACKEND = "slots"
SLOTS = ("blue", "green")
ADMIN_SOCKET = "/tmp/haproxy-admin.sock"

# srv_admin_state bits (HAProxy 2.6, include/haproxy/server-t.h).
ADMF_FMAINT = 0x01   # forced maintenance (`disable server`)
ADMF_IMAINT = 0x02   # inherited from a tracked server
ADMF_CMAINT = 0x04   # "disabled" in the config file
ADMF_FDRAIN = 0x08   # forced drain
ADMF_IDRAIN = 0x10
ADMF_RMAINT = 0x20   # DNS resolution failed
ADMF_HMAINT = 0x40   # hostname changed at runtime

# srv_op_state
OP_STATES = {0: "stopped", 1: "starting", 2: "running", 3: "stopping"}


# -- pure builders -----------------------------------------------------------------------------

def runtime_argv(commands: Iterable[str], socket_path: str = ADMIN_SOCKET) -> list[str]:
    """argv for `docker exec`: send `commands` (joined by ';', one session) to the admin socket.

    The commands travel as a positional argument, so no quoting of their text is needed.
    """
    line = "; ".join(commands)
    if not line or "\n" in line:
        raise ValueError("runtime API commands must be one non-empty line")
    return ["sh", "-c", f'printf "%s\\n" "$1" | socat -t 5 stdio unix-connect:{socket_path}', "sh", line]


def server(slot: str) -> str:
    if slot not in SLOTS:
        raise ValueError(f"unknown slot {slot!r} (expected one of {', '.join(SLOTS)})")
    return f"{BACKEND}/{slot}"


def enable_commands(slot: str) -> list[str]:
    return [f"set server {server(slot)} state ready"]


def drain_commands(slot: str) -> list[str]:
    return [f"set server {server(slot)} state drain"]


def disable_commands(slot: str) -> list[str]:
    return [f"set server {server(slot)} state maint"]


def weight_commands(slot: str, weight: int) -> list[str]:
    if not 0 <= weight <= 256:
        raise ValueError(f"weight must be 0..256, got {weight}")
    return [f"set weight {server(slot)} {weight}"]


def addr_commands(slot: str, addr: str, port: int = 8000) -> list[str]:
    return [f"set server {server(slot)} addr {addr} port {port}"]


def render_config(template: str, live: str | None) -> str:
    """haproxy.cfg with only `live` enabled (None: both slots disabled)."""
    if live is not None and live not in SLOTS:
        raise ValueError(f"unknown slot {live!r}")
    states = {f"{s}_state": ("" if s == live else "disabled") for s in SLOTS}
    return string.Template(template).substitute(states)


def config_live_slot(text: str) -> str | None:
    """Which slot a rendered haproxy.cfg enables (None when none or both)."""
    enabled = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "server" and words[1] in SLOTS and "disabled" not in words[3:]:
            enabled.append(words[1])
    return enabled[0] if len(enabled) == 1 else None


def write_config(path: Path, text: str) -> None:
    """Atomic and durable (orchestrator.fsutil); 0644: the edge runs as the haproxy user."""
    atomic_write(path, text, mode=0o644)


# -- parsers -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerState:
    """One line of `show servers state`."""

    name: str
    addr: str
    op_state: int
    admin_state: int
    weight: int

    @property
    def maint(self) -> bool:
        # CMAINT alone stays set after `set server ... state ready` on a server that was "disabled" in the
        # file; HAProxy then serves it anyway, so only the runtime flags say "in maintenance".
        return bool(self.admin_state & (ADMF_FMAINT | ADMF_IMAINT | ADMF_RMAINT | ADMF_HMAINT))

    @property
    def draining(self) -> bool:
        return bool(self.admin_state & (ADMF_FDRAIN | ADMF_IDRAIN))

    @property
    def up(self) -> bool:
        return self.op_state == 2

    @property
    def serving(self) -> bool:
        """New requests may go here."""
        return self.up and not self.maint and not self.draining and self.weight > 0


def parse_servers_state(text: str, backend: str = BACKEND) -> dict[str, ServerState]:
    """Parse `show servers state <backend>` (format version 1)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0].strip() != "1":
        raise EdgeError(f"unexpected answer to `show servers state`: {_first_line(text)}")
    header: list[str] | None = None
    out: dict[str, ServerState] = {}
    for ln in lines[1:]:
        if ln.startswith("#"):
            header = ln.lstrip("# ").split()
            continue
        if header is None:
            raise EdgeError("`show servers state` answered without a header line")
        row = dict(zip(header, ln.split()))
        if row.get("be_name") != backend:
            continue
        try:
            out[row["srv_name"]] = ServerState(
                name=row["srv_name"], addr=row["srv_addr"], op_state=int(row["srv_op_state"]),
                admin_state=int(row["srv_admin_state"]), weight=int(row["srv_uweight"]))
        except (KeyError, ValueError):
            raise EdgeError(f"cannot read `show servers state` line: {ln}") from None
    if header is None:
        raise EdgeError("`show servers state` answered without a header line")
    return out


@dataclass(frozen=True)
class ServerStat:
    """The counters of one server from `show stat`."""

    name: str
    status: str          # UP, DOWN, DRAIN, MAINT, "no check", ...
    current_sessions: int
    total_sessions: int
    http_5xx: int
    http_total: int
    check_status: str


def parse_stat(text: str, backend: str = BACKEND) -> dict[str, ServerStat]:
    """Parse the CSV of `show stat` for the servers of `backend`."""
    if not text.startswith("# "):
        raise EdgeError(f"unexpected answer to `show stat`: {_first_line(text)}")
    reader = csv.DictReader(io.StringIO(text[2:]))
    out: dict[str, ServerStat] = {}
    for row in reader:
        if row.get("pxname") != backend or row.get("svname") in ("FRONTEND", "BACKEND"):
            continue

        def num(key: str) -> int:
            v = row.get(key) or "0"
            return int(v) if v.isdigit() else 0

        out[row["svname"]] = ServerStat(
            name=row["svname"], status=row.get("status", ""), current_sessions=num("scur"),
            total_sessions=num("stot"), http_5xx=num("hrsp_5xx"),
            http_total=sum(num(f"hrsp_{k}xx") for k in range(1, 6)) + num("hrsp_other"),
            check_status=row.get("check_status", ""))
    return out


def _first_line(text: str) -> str:
    s = text.strip().splitlines()
    return s[0][:200] if s else "(empty)"


# Answers of set/enable/disable commands that mean success (HAProxy prints nothing, or these).
_OK_ANSWERS = ("", "no need to change the addr", "IP changed from", "port changed from", "nothing changed")


def check_answer(commands: list[str], answer: str) -> None:
    """Raise EdgeError when a `set ...` answer is an error (HAProxy answers errors as text)."""
    for ln in answer.splitlines():
        ln = ln.strip()
        if ln and not any(ln.startswith(ok) for ok in _OK_ANSWERS if ok):
            raise EdgeError(f"edge refused `{'; '.join(commands)}`: {ln}")


# -- the runner --------------------------------------------------------------------------------

Exec = Callable[[list[str]], tuple[int, str]]


class EdgeRuntime:
    """The runtime API of one running edge. `exec_fn(argv) -> (exit code, output)` runs argv in it."""

    def __init__(self, exec_fn: Exec, backend: str = BACKEND):
        self._exec = exec_fn
        self.backend = backend

    @classmethod
    def for_container(cls, container) -> "EdgeRuntime":
        """Through `docker exec` of a docker-py Container (the engine API, never a bridge address)."""
        def run(argv: list[str]) -> tuple[int, str]:
            try:
                code, out = container.exec_run(argv, demux=False)
            except Exception as e:  # docker.errors.APIError: the container stopped, engine gone, ...
                raise EdgeError(f"cannot reach the edge's runtime API ({type(e).__name__}: "
                                f"{getattr(e, 'explanation', None) or e})") from None
            return code, (out or b"").decode(errors="replace")
        return cls(run)

    def command(self, *commands: str) -> str:
        code, out = self._exec(runtime_argv(commands))
        if code != 0:
            raise EdgeError(f"edge runtime API failed (exit {code}): {_first_line(out)}")
        return out

    def set(self, commands: list[str]) -> None:
        check_answer(commands, self.command(*commands))

    def servers(self) -> dict[str, ServerState]:
        return parse_servers_state(self.command(f"show servers state {self.backend}"), self.backend)

    def stats(self) -> dict[str, ServerStat]:
        return parse_stat(self.command("show stat"), self.backend)

    def enable(self, slot: str) -> None:
        self.set(enable_commands(slot))

    def drain(self, slot: str) -> None:
        self.set(drain_commands(slot))

    def disable(self, slot: str) -> None:
        self.set(disable_commands(slot))

    def set_weight(self, slot: str, weight: int) -> None:
        self.set(weight_commands(slot, weight))

    def set_addr(self, slot: str, addr: str, port: int = 8000) -> None:
        self.set(addr_commands(slot, addr, port))

    def serving_slots(self) -> list[str]:
        """The slots new requests go to now."""
        return [s for s, st in self.servers().items() if s in SLOTS and st.serving]

    def wait_up(self, slot: str, timeout_s: float = 10.0) -> float:
        """Wait until HAProxy sees `slot` up and taking traffic; the seconds it took."""
        start = time.monotonic()

        def serving() -> bool | NotYet:
            st = self.servers().get(slot)
            if st is not None and st.serving:
                return True
            return NotYet("missing" if st is None else f"{OP_STATES.get(st.op_state, st.op_state)}, "
                                                       f"admin {st.admin_state}")

        try:
            poll_until(serving, timeout=timeout_s, interval=0.1, what=f"slot {slot} up in the edge")
        except PollTimeout as e:
            raise EdgeError(f"edge did not see slot {slot} up within {timeout_s:g}s ({e.last})") from None
        return time.monotonic() - start

    def wait_idle(self, slot: str, timeout_s: float = 30.0) -> float:
        """Wait until no request is in flight on `slot` (it drains); the seconds it took."""
        start = time.monotonic()

        def idle() -> bool:
            st = self.stats().get(slot)
            return st is None or st.current_sessions == 0

        # Long requests: give up waiting at the timeout, maint keeps them alive.
        poll_until(idle, timeout=timeout_s, interval=0.1, what=f"slot {slot} idle", raise_on_timeout=False)
        return time.monotonic() - start

    def shift(self, to_slot: str, from_slot: str | None, at: Callable[[str], None] = lambda point: None,
              up_timeout_s: float = 10.0) -> float:
        """Send new requests to `to_slot`: enable it, wait until HAProxy serves it, only then drain `from_slot`.

        The one traffic move every caller makes (a switch's flip step, a revert, a repair). Draining
        keeps the old slot's in-flight requests; `at(point)` is called after "enabled" and "drained"
        (the switch passes its test pause hook). Returns the seconds until `to_slot` served.
        """
        start = time.monotonic()
        self.enable(to_slot)
        self.wait_up(to_slot, up_timeout_s)
        seconds = time.monotonic() - start
        at("enabled")
        if from_slot and from_slot != to_slot:
            self.drain(from_slot)
            at("drained")
        return seconds

    def retire(self, slot: str, drain_timeout_s: float = 30.0) -> float:
        """After `shift`: wait for `slot`'s in-flight requests (bounded), then disable it; the seconds it took."""
        waited = self.wait_idle(slot, drain_timeout_s)
        self.disable(slot)
        return waited

    def flip(self, to_slot: str, from_slot: str | None, drain_timeout_s: float = 30.0) -> dict[str, float]:
        """`shift` then `retire` at once (reverts and repairs; a switch retires only after its watch window).

        In-flight requests on the old slot finish (maint does not cut established sessions); kept-alive
        client connections stay with the edge and their next request goes to the new slot.
        """
        times = {"flip": self.shift(to_slot, from_slot), "drain": 0.0}
        if from_slot and from_slot != to_slot:
            times["drain"] = self.retire(from_slot, drain_timeout_s)
        return times
