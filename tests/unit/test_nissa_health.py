"""IngestHealth's verdict: stuck while a batch has been failing for STUCK_AFTER_S, or a
worker died STUCK_DEATHS times without storing a batch in between; the gauges follow."""

from __future__ import annotations

from prometheus_client import REGISTRY

from esper.nissa.health import STUCK_AFTER_S, STUCK_DEATHS, IngestHealth


def _gauges() -> tuple[float | None, float | None]:
    return (REGISTRY.get_sample_value("esper_nissa_ingest_stuck"),
            REGISTRY.get_sample_value("esper_nissa_ingest_stalled_seconds"))


def test_a_batch_held_too_long_is_stuck_until_it_goes_through() -> None:
    health = IngestHealth()
    health.stalled(0, 0.0)
    health.stalled(1, STUCK_AFTER_S / 2)
    assert not health.stuck and _gauges() == (0.0, STUCK_AFTER_S / 2)
    health.stalled(1, STUCK_AFTER_S)
    assert health.stuck and _gauges() == (1.0, STUCK_AFTER_S)
    health.stalled(1, 0.0)
    assert not health.stuck and _gauges() == (0.0, 0.0)


def test_a_crash_loop_is_stuck_and_a_stored_batch_ends_it() -> None:
    health = IngestHealth()
    for _ in range(STUCK_DEATHS - 1):
        health.died(2)
    assert not health.stuck
    health.stored(2)  # it stored a batch between deaths: crashes, not a loop
    for _ in range(STUCK_DEATHS - 1):
        health.died(2)
    assert not health.stuck
    health.died(2)
    assert health.stuck and _gauges()[0] == 1.0
    health.stored(2)
    assert not health.stuck and _gauges()[0] == 0.0
