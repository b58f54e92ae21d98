"""The Kubernetes switch's outcomes through the shared switch flow (orchestrator/switchflow.py), on
the API double (tests/k8s_double): the ones the other k8s tests do not reach."""

from __future__ import annotations

import pytest

from orchestrator.errors import SwitchFailed
from tests.integration.test_k8s_backend import BROKEN, NAME, NS, digest_of, env  # noqa: F401 - env is a fixture


def test_an_undo_that_fails_too_names_the_way_back_by_hand_and_marks_nothing_but_the_revision(env):
    # The rollout of BROKEN runs out of the target's 1.5 s; then every patch of the Deployment is
    # answered 503 (after the client's retries): the undo cannot be sent.
    env.k8s.fail(503, verbs={"patch"}, times=10**6, after="patch")
    with pytest.raises(SwitchFailed) as err:
        env.backend("k8s-impatient").switch(BROKEN)
    env.k8s.faults.clear()
    message = str(err.value)
    assert err.value.exit_code == 5
    assert "did not finish within 1.5s" in message and "the automatic undo failed too" in message, message
    assert message.endswith(f"Roll back by hand: `kubectl rollout undo deployment/{NAME} -n {NS} "
                            f"--to-revision=1`"), message
    assert env.live_image() == env.image(BROKEN)  # nothing was undone
    ledger = env.ctx().ledger
    sw = ledger.history("k8s-impatient")[-1]
    assert sw.outcome == "failed" and "undo failed too" in sw.reason
    # The digest is marked failed only once the live version is back, which it is not ...
    assert digest_of(BROKEN) not in ledger.failed_digests()
    # ... but its revision is, so that no way back picks it.
    assert "aads.failed" in env.replicasets()[2]["metadata"]["annotations"]
