"""The share of requests each slot gets at the edge: server weights set through HAProxy's runtime API.

`set weight slots/<slot> N` changes a server's weight at once, without a reload (kept-alive
client connections stay), and `get weight` reads it back. With round-robin balancing, a slot's
share of new requests is its weight over the sum of the weights, so a canary share of p percent is
the weights (100 - p, p). The socket lives inside the edge container; `for_container` reaches it
with `docker exec` + socat through the engine API, as the rest of the orchestrator does.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from orchestrator.errors import EdgeWeightError

ADMIN_SOCKET = "/tmp/haproxy-admin.sock"
BACKEND = "slots"
MAX_WEIGHT = 256  # HAProxy's limit for `set weight`
_WEIGHT = re.compile(r"^(\d+) \(initial (\d+)\)$")

Send = Callable[[str], str]  # one runtime API command line -> its answer




def weights_for_share(candidate_percent: int) -> tuple[int, int]:
    """(live weight, candidate weight) that send `candidate_percent` % of new requests to the candidate."""
    if not 0 <= candidate_percent <= 100:
        raise ValueError(f"a canary share is 0..100 percent, got {candidate_percent}")
    return 100 - candidate_percent, candidate_percent


def weight_command(server: str, weight: int, backend: str = BACKEND) -> str:
    if not 0 <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight must be 0..{MAX_WEIGHT}, got {weight}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", server):
        raise ValueError(f"not a server name: {server!r}")
    return f"set weight {backend}/{server} {weight}"


def parse_weight(answer: str) -> int:
    """`get weight` answers "10 (initial 1)": the current weight."""
    m = _WEIGHT.match(answer.strip())
    if not m:
        raise EdgeWeightError(f"unexpected answer to `get weight`: {answer.strip()[:200]!r}")
    return int(m.group(1))


def socat_argv(line: str, socket_path: str = ADMIN_SOCKET) -> list[str]:
    """argv run inside the edge: send one command line to the admin socket (the line is an argument,
    never spliced into the shell text)."""
    if not line or "\n" in line:
        raise ValueError("a runtime API command is one non-empty line")
    return ["sh", "-c", f'printf "%s\\n" "$1" | socat -t 5 stdio unix-connect:{socket_path}', "sh", line]


class EdgeWeights:
    """Weights of the servers of one backend, through `send` (a runtime API command -> its answer)."""

    def __init__(self, send: Send, backend: str = BACKEND):
        self._send = send
        self.backend = backend

    @classmethod
    def for_container(cls, container, backend: str = BACKEND) -> EdgeWeights:
        """Through `docker exec` of a docker-py Container (the edge)."""
        def send(line: str) -> str:
            try:
                code, out = container.exec_run(socat_argv(line), demux=False)
            except Exception as e:  # noqa: BLE001 - docker's APIError and transport errors: the edge stopped, the engine is gone
                raise EdgeWeightError(f"cannot reach the edge's runtime API ({type(e).__name__}: {e})") from None
            text = (out or b"").decode(errors="replace")
            if code != 0:
                raise EdgeWeightError(f"edge runtime API failed (exit {code}): {text.strip()[:200]}")
            return text
        return cls(send, backend)

    def get(self, server: str) -> int:
        return parse_weight(self._send(f"get weight {self.backend}/{server}"))

    def set(self, server: str, weight: int) -> None:
        """Set and read back; HAProxy answers nothing on success, a message otherwise."""
        answer = self._send(weight_command(server, weight, self.backend)).strip()
        if answer:
            raise EdgeWeightError(f"the edge refused `{weight_command(server, weight, self.backend)}`: {answer[:200]}")
        got = self.get(server)
        if got != weight:
            raise EdgeWeightError(f"{self.backend}/{server}: weight {got} after setting {weight}")

    def set_share(self, live: str, candidate: str, candidate_percent: int) -> tuple[int, int]:
        """Send `candidate_percent` % of new requests to `candidate`. The candidate's weight goes
        down first and up last, so no moment gives it more than either the old or the new share."""
        live_w, cand_w = weights_for_share(candidate_percent)
        current = self.get(candidate)
        if cand_w <= current:
            self.set(candidate, cand_w)
            self.set(live, live_w)
        else:
            self.set(live, live_w)
            self.set(candidate, cand_w)
        return live_w, cand_w
