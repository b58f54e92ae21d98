"""serving.phases: phase timings add up per name and read back in order."""

from serving.phases import Phases, seconds_since_process_start


def test_phases_add_up_per_name_in_first_seen_order():
    phases = Phases()
    with phases.phase("read_weights"):
        pass
    phases.add("hash", 0.25)
    phases.add("read_weights", 1.0)
    assert list(phases.seconds) == ["read_weights", "hash"]
    assert 1.0 <= phases.seconds["read_weights"] < 1.5 and phases.rounded()["hash"] == 0.25
    assert phases.summary().startswith("read_weights 1.")


def test_a_failing_phase_still_counts():
    phases = Phases()
    try:
        with phases.phase("build_model"):
            raise ValueError("boom")
    except ValueError:
        pass
    assert "build_model" in phases.seconds


def test_the_process_age_is_positive_here():
    age = seconds_since_process_start()
    assert age is not None and age > 0
