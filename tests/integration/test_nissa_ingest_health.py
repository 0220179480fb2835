"""A stuck ingest says so: while PostgreSQL is away Nissa's ingest holds its batch, and
its health (esper_nissa_ingest_stuck, esper_nissa_ingest_stalled_seconds) turns stuck
once the batch has failed for long enough; the batch is stored when the database is
back, and the health recovers."""

import uuid

import pytest

from esper.leyline.v1 import signals_pb2
from esper.nissa import health as health_mod
from esper.nissa.alerts import AlertRules
from esper.nissa.db import open_database
from esper.nissa.health import IngestHealth
from esper.nissa.ingest import Ingestor
from tests.fixtures.waiting import until
from tests.integration.test_nissa_deadletter import _event_value, _send, _stored, _topic

pytestmark = pytest.mark.integration


def _snapshot(run: str, step: int):
    from esper.oona import new_event

    return new_event(source="tolaria", run_id=run,
                     snapshot=signals_pb2.TrainingSnapshot(run_id=run, step=step))


async def test_an_ingest_without_its_database_reports_stuck_then_recovers(
        fresh_database, kafka_bootstrap, monkeypatch):
    monkeypatch.setattr(health_mod, "STUCK_AFTER_S", 1.0)
    run = f"run-{uuid.uuid4().hex[:8]}"
    topic = await _topic(kafka_bootstrap)
    pool = await open_database(fresh_database, 10)
    health = IngestHealth()
    ingestor = Ingestor(pool, kafka_bootstrap, group_id=f"nissa-{uuid.uuid4().hex[:6]}",
                        rules=AlertRules(), topics=[topic], health=health)
    await ingestor.start()
    try:
        await _send(kafka_bootstrap, topic, [_event_value(_snapshot(run, 1))])
        assert await until(lambda: ingestor.ingested == 1)
        assert not health.stuck
        await pool.close()  # the database is gone for this ingest
        await _send(kafka_bootstrap, topic, [_event_value(_snapshot(run, 2))])
        assert await until(lambda: health.stuck), "a held batch never made the ingest stuck"
        assert health.stalled_s >= 1.0
        ingestor.pool = await open_database(fresh_database, 10)  # back
        assert await until(lambda: ingestor.ingested == 2)
        assert await until(lambda: not health.stuck)
        assert await _stored(fresh_database, run) == [1, 2]
    finally:
        await ingestor.stop()
        await ingestor.pool.close()
