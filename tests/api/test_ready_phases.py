"""Start-up phases: each one timed into the ready log line and `aads_ready_phase_seconds`."""

import logging

from tests.api.conftest import serve

PHASES = {"manifest", "imports", "read_weights", "build_model", "hash", "warmup"}


def test_every_phase_is_timed_in_the_log_and_metrics(tiny_model_set, caplog):
    with caplog.at_level(logging.INFO, logger="serving.runtime"):
        with serve(tiny_model_set("dinov3")) as svc:
            phases = svc.runtime.ready_phases
            metrics = svc.client.get("/metrics").text
    assert PHASES <= set(phases) and all(s >= 0 for s in phases.values())
    for phase in PHASES:
        assert f'aads_ready_phase_seconds{{phase="{phase}",version="v5.5.4-dinov3"}}' in metrics
    ready = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ready:")]
    assert len(ready) == 1 and "phases: " in ready[0] and "read_weights" in ready[0]
