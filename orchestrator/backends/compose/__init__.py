"""The compose backend package: backend (the flow and the ledger) on stack (files, slots, edge, compose).

Modules: backend.py (ComposeBackend), switch.py (the switch flow's compose steps), stack.py,
checks.py (smoke, confirm, watch), repair.py (crash repair, drift), gpu_room.py, haproxy.py (the
edge's runtime API and config), compose_cli.py (`docker compose` v2 or `docker-compose` v1).
"""

from orchestrator.backends.compose.backend import ComposeBackend
from orchestrator.backends.compose.checks import Candidate, ConfirmFailed, SmokeFailed, WatchFailed
from orchestrator.backends.compose.gpu_room import GpuRoomError

__all__ = ["Candidate", "ComposeBackend", "ConfirmFailed", "GpuRoomError", "SmokeFailed", "WatchFailed"]
