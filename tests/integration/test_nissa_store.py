"""Nissa's batch writer against a real PostgreSQL: a batch of new events takes the direct
COPY path; a batch holding an event stored before (a redelivery) or the same event twice
takes the deduplicating path; either way each event, derived row and run total is stored
exactly once and the rules see each new event once, in batch order."""

import datetime as dt

import pytest

from esper.leyline.v1 import control_pb2, signals_pb2, telemetry_pb2
from esper.nissa.db import open_database
from esper.nissa.store import ingest_batch
from esper.oona import new_event

pytestmark = pytest.mark.integration


def _snapshot(run: str, step: int, epoch_end: bool = False) -> telemetry_pb2.TelemetryEvent:
    snap = signals_pb2.TrainingSnapshot(run_id=run, step=step, epoch=step // 10,
                                        epoch_end=epoch_end)
    snap.metrics.train_loss = 1.0 / (step + 1)
    return new_event(source="tolaria", run_id=run, snapshot=snap)


def _ack(run: str, step: int) -> telemetry_pb2.TelemetryEvent:
    return new_event(source="tolaria", run_id=run, ack=control_pb2.DecisionAck(
        decision_id=f"d{step}", run_id=run, step=step, status=control_pb2.ACK_STATUS_APPLIED))


def _pairs(events):
    return [(e, e.SerializeToString()) for e in events]


class _Seen:
    """A rule hook that records what the rules were shown."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, new):
        self.seen.extend((event.event_id, kind) for event, _, when, kind in new)
        assert all(isinstance(when, dt.datetime) for _, _, when, _ in new)
        return []


async def _counts(conn, run: str) -> tuple[int, int, int, int]:
    events = await conn.fetchval("SELECT count(*) FROM nissa.events WHERE run_id = $1", run)
    epochs = await conn.fetchval("SELECT count(*) FROM nissa.epochs WHERE run_id = $1", run)
    acks = await conn.fetchval("SELECT count(*) FROM nissa.acks WHERE run_id = $1", run)
    total = await conn.fetchval("SELECT event_count FROM nissa.runs WHERE run_id = $1", run)
    return events, epochs, acks, total


async def test_new_redelivered_and_self_duplicated_batches_store_each_event_once(
    fresh_database,
):
    pool = await open_database(fresh_database, 10)
    try:
        async with pool.acquire() as conn:
            first = [_snapshot("r1", s, epoch_end=s % 10 == 9) for s in range(20)]
            first += [_ack("r1", 3), _snapshot("r2", 0)]
            seen = _Seen()
            new, _ = await ingest_batch(conn, _pairs(first), seen)
            assert [e.event_id for e, *_ in new] == [e.event_id for e in first]
            assert [kind for _, kind in seen.seen][-3:] == ["snapshot", "ack", "snapshot"]
            assert await _counts(conn, "r1") == (21, 2, 1, 21)
            row = await conn.fetchrow("SELECT * FROM nissa.runs WHERE run_id = 'r1'")
            assert (row["last_step"], row["last_epoch"]) == (19, 1)
            assert row["started_at"] <= row["last_event_at"]

            # A redelivery of half the first batch plus new events: only the new count.
            later = [_snapshot("r1", s, epoch_end=s == 29) for s in range(20, 30)]
            seen = _Seen()
            new, _ = await ingest_batch(conn, _pairs(first[10:] + later), seen)
            assert [e.event_id for e, *_ in new] == [e.event_id for e in later]
            assert [eid for eid, _ in seen.seen] == [e.event_id for e in later]
            assert await _counts(conn, "r1") == (31, 3, 1, 31)
            assert (await conn.fetchrow(
                "SELECT last_step, last_epoch FROM nissa.runs WHERE run_id = 'r1'"
            ))[:] == (29, 2)

            # The same new event twice in one batch (a producer's retry): stored once.
            again = _snapshot("r1", 30)
            new, _ = await ingest_batch(conn, _pairs([again, again]))
            assert [e.event_id for e, *_ in new] == [again.event_id]
            assert await _counts(conn, "r1") == (32, 3, 1, 32)

            # A batch of nothing but old events changes nothing.
            new, _ = await ingest_batch(conn, _pairs(first))
            assert new == []
            assert await _counts(conn, "r1") == (32, 3, 1, 32)
            assert await conn.fetchval(
                "SELECT event_count FROM nissa.runs WHERE run_id = 'r2'") == 1
    finally:
        await pool.close()
