"""Wait for a rollout as `kubectl rollout status` does, through API errors.

Only a ProgressDeadlineExceeded of this rollout's own ReplicaSet, or the switch's time limit, is a
failure (RolloutFailed, whose message says why and what the pods say). A failing API is not: the
Deployment is read again after a pause until the time is up, and only if it never answered then
is the outcome unobservable (Unobservable: nothing may be undone on a guess).
"""

from __future__ import annotations

import time
from typing import Any

from orchestrator.backends.kubernetes import rollout as kr
from orchestrator.backends.kubernetes.api import KubeError
from orchestrator.backends.kubernetes.cluster import Cluster
from orchestrator.polling import NotYet, PollTimeout, poll_until

RESYNC_DELAYS_S = (0.5, 1.0, 2.0, 4.0)  # between reads while the API does not answer during a rollout


class RolloutFailed(Exception):
    """The rollout cannot finish: deadline exceeded or our own timeout. The message says why."""


class Unobservable(Exception):
    """wait_rollout could not read the Deployment until its time ran out (the API error inside)."""


def wait_rollout(cluster: Cluster, d: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Watch the Deployment until the rollout is done (its last state returned), the controller
    reports ProgressDeadlineExceeded for this rollout's ReplicaSet, or `timeout_s` passes."""
    ctx = cluster.ctx
    end = time.monotonic() + timeout_s
    seen = {"d": d, "fresh": True, "errors": 0, "message": "", "error": ""}  # fresh: the last read worked

    def done(obj: dict[str, Any]) -> bool:
        seen["d"], seen["fresh"] = obj, True
        state = kr.rollout_status(obj)
        if state.failed:  # only a deadline of this rollout's own ReplicaSet counts
            state = kr.rollout_status(obj, cluster.new_rs_name(obj))
        if state.message != seen["message"]:
            seen["message"] = state.message
            s = obj.get("status") or {}
            ctx.stderr.print(f"  {state.message} [dim](updated {s.get('updatedReplicas', 0)}, ready "
                             f"{s.get('readyReplicas', 0)}, available {s.get('availableReplicas', 0)} of "
                             f"{obj['spec'].get('replicas', 1)})[/dim]")
        if state.failed:
            raise RolloutFailed(state.failed + cluster.why_stuck(obj))
        return state.done

    def one_watch() -> dict[str, Any] | NotYet:
        """One watch window (up to 30 s), then a fresh read; through API errors, after a pause."""
        try:
            rv = seen["d"]["metadata"]["resourceVersion"]
            for obj in cluster.api.watch_deployment(rv, min(30.0, max(end - time.monotonic(), 1.0))):
                seen["errors"] = 0
                if done(obj):
                    return obj
            # The stream ended (its timeout, or 410 Gone): read again.
            obj = cluster.api.read_deployment()
            return obj if done(obj) else NotYet(seen["message"])
        except KubeError as e:
            # The API did not answer (5xx, a dropped watch, no connection): no verdict on the
            # rollout. Read again after a pause, until the rollout's own time is up.
            seen["fresh"], seen["error"] = False, str(e)
            delay = RESYNC_DELAYS_S[min(seen["errors"], len(RESYNC_DELAYS_S) - 1)]
            seen["errors"] += 1
            if not e.transient or time.monotonic() + delay >= end:
                raise Unobservable(str(e)) from None
            ctx.stderr.print(f"  [yellow]the API did not answer ({e}); reading again in {delay:g}s[/yellow]")
            time.sleep(delay)
            try:
                obj = cluster.api.read_deployment()
            except KubeError:
                return NotYet(seen["message"])
            return obj if done(obj) else NotYet(seen["message"])

    with ctx.stderr.status(f"rollout of {cluster.where}"):
        if done(d):
            return d
        try:
            return poll_until(one_watch, timeout=max(end - time.monotonic(), 0.0), interval=0.0,
                              what=f"the rollout of {cluster.where}")  # type: ignore[return-value]
        except PollTimeout:
            if not seen["fresh"]:
                raise Unobservable(seen["error"]) from None
            raise RolloutFailed(f"the rollout did not finish within {timeout_s:g}s "
                                f"({seen['message'].rstrip('.')})" + cluster.why_stuck(seen["d"])) from None
