"""The checks a compose switch makes on its candidate: smoke on the slot, confirm and watch through the edge.

Each check talks HTTP to 127.0.0.1 ports the stack publishes and raises its own SwitchFailed
subclass; the switch flow marks the candidate's digest failed for these (they are its own fault).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import requests

from orchestrator import golden
from orchestrator.backends.compose.haproxy import EdgeRuntime
from orchestrator.backends.compose.stack import ComposeStack
from orchestrator.errors import SwitchFailed
from orchestrator.errors import ConfirmFailed, SmokeFailed, WatchFailed  # noqa: F401  (raised here; the tree is errors.py)
from orchestrator.polling import NotYet, PollTimeout, poll_until
from orchestrator.resolve import Deployable





@dataclass(frozen=True)
class Candidate:
    """What a switch deploys: a resolved version and the exact image a slot runs."""

    version: str
    digest: str
    image: str           # repo@sha256:... (registry) or the local image id (image_source local)
    deployable: Deployable


class Checks:
    def __init__(self, stack: ComposeStack):
        self.stack = stack

    def smoke(self, slot: str, cand: Candidate) -> None:
        """The golden images on the slot itself must give the decisions its build recorded."""
        recorded = cand.deployable.build.golden
        if not recorded:
            raise SwitchFailed(f"build of {cand.version} has no recorded golden outputs: rebuild it")
        got = golden.collect(self.stack.slot_url(slot), headers=self.stack.client_headers)
        problems = golden.compare(recorded, got)
        if problems:
            more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
            raise SmokeFailed(f"golden images differ from the build's record: {'; '.join(problems[:3])}{more}")

    def confirm(self, cand: Candidate, timeout_s: float = 15.0) -> None:
        """Three answers in a row through the public edge must name the candidate."""
        want_sha = cand.deployable.build.manifest_sha256
        url = f"{self.stack.edge_url}/v1/version"
        with requests.Session() as s:
            s.headers.update(self.stack.client_headers)

            def three_in_a_row() -> bool | NotYet:
                for _ in range(3):
                    try:
                        r = s.get(url, timeout=5)
                        body = r.json() if r.ok else {}
                    except (requests.RequestException, ValueError) as e:
                        return NotYet(type(e).__name__)
                    got_sha = body.get("manifest_sha256")
                    if not (body.get("version") == cand.version and (not got_sha or got_sha == want_sha)):
                        return NotYet(f"{r.status_code} version={body.get('version')!r}")
                return True

            try:
                poll_until(three_in_a_row, timeout=timeout_s, interval=0.1, what="the edge to serve the candidate")
            except PollTimeout as e:
                raise ConfirmFailed(f"the edge does not serve {cand.version} after {timeout_s:g}s "
                                    f"(last: {e.last or 'no answer'})") from None

    def watch(self, rt: EdgeRuntime, slot: str) -> None:
        """Requests through the edge for watch_s seconds, plus the edge's own 5xx counter of the slot."""
        spec = self.stack.spec
        before = rt.stats().get(slot)
        images = golden.golden_images()
        sent = errors = 0
        last_error = ""
        deadline = time.monotonic() + spec.watch_s
        with requests.Session() as s:
            s.headers.update(self.stack.client_headers)
            i = 0
            while time.monotonic() < deadline:  # a window that runs out, not a wait for a condition
                try:
                    if i % 4 == 3 and images:
                        name, data = images[(i // 4) % len(images)]
                        r = s.post(f"{self.stack.edge_url}/v1/diagnose",
                                   json={"image": base64.b64encode(data).decode()}, timeout=30)
                    else:
                        r = s.get(f"{self.stack.edge_url}/v1/version", timeout=5)
                    bad = r.status_code >= 500
                    if bad:
                        last_error = f"{r.request.method} {r.request.path_url} answered {r.status_code}"
                except requests.RequestException as e:
                    bad, last_error = True, f"request failed ({type(e).__name__})"
                sent += 1
                errors += bad
                i += 1
                time.sleep(0.1)
        after = rt.stats().get(slot)
        edge_5xx = edge_total = 0
        if before and after:
            edge_5xx = after.http_5xx - before.http_5xx
            edge_total = after.http_total - before.http_total
        rate = max(errors / sent if sent else 0.0, edge_5xx / edge_total if edge_total else 0.0)
        if rate > spec.watch_max_error_rate:
            raise WatchFailed(f"error rate {rate:.1%} in the watch window ({errors}/{sent} probes failed, "
                              f"edge counted {edge_5xx}/{edge_total} 5xx; last: {last_error or 'edge counter'})")
