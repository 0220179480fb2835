"""No poison pill: Nissa's ingest against the real broker and PostgreSQL stores every
good event of a batch, moves what it cannot decode or store to `esper.deadletter` with
the reason and where it came from, commits past it and keeps ingesting — also when a
record batch is a compression bomb, which is refused without being inflated."""

import time
import tracemalloc
import uuid

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from esper.leyline.v1 import signals_pb2
from esper.nissa.alerts import AlertRules
from esper.nissa.db import open_database
from esper.nissa.ingest import Ingestor
from esper.oona import encode_event, kafka_headers, new_event
from esper.oona.deadletter import (
    CODE_UNDECODABLE,
    CODE_UNREADABLE_BATCH,
    CODE_UNSTORABLE,
    dead_letter_headers,
)
from esper.oona.inflate import MAX_INFLATED_BATCH_BYTES
from esper.oona.topics import DEADLETTER, TOPICS_BY_NAME, TopicSpec, ensure_topics
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration

# Inflated size of the bomb: far past the bound, small once compressed (~64 KB).
BOMB_BYTES = 64 * 1024 * 1024
# What the ingest may allocate (Python-traced) while refusing the bomb: the bound plus
# slack for the batch it handles meanwhile; inflating the bomb would take BOMB_BYTES.
MEMORY_CEILING = MAX_INFLATED_BATCH_BYTES * 3 // 2


def _snapshot(run: str, step: int):
    return new_event(source="tolaria", run_id=run,
                     snapshot=signals_pb2.TrainingSnapshot(run_id=run, step=step))


async def _topic(bootstrap: str) -> str:
    """A topic of this test alone (one partition: the order of its records holds)."""
    name = f"esper.test.poison.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, (TopicSpec(name, 1, (), "test"),
                                    TOPICS_BY_NAME[DEADLETTER]))
    return name


async def _send(bootstrap: str, topic: str, values: list[bytes], compression=None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=compression,
                                max_request_size=BOMB_BYTES * 2, enable_idempotence=False)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, headers=[])
    finally:
        await producer.stop()


def _event_value(event) -> bytes:
    assert kafka_headers(event)  # our producers send a content type; raw records may not
    return encode_event(event)


async def _stored(dsn: str, run: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT step FROM nissa.events WHERE run_id = $1 ORDER BY step",
                                run)
        return [r["step"] for r in rows]
    finally:
        await conn.close()


async def _dead_letters(bootstrap: str, topic: str, count: int, where=None) -> list[dict]:
    """The first `count` dead letters of `topic` (headers, plus the value as "value") for
    which `where(letter)` holds."""
    consumer = AIOKafkaConsumer(DEADLETTER, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: list[dict] = []
    deadline = time.monotonic() + 60
    try:
        while len(found) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    letter = {**dead_letter_headers(record.headers), "value": record.value}
                    if letter.get("topic") == topic and (where is None or where(letter)):
                        found.append(letter)
    finally:
        await consumer.stop()
    return found


async def _ingestor(dsn: str, bootstrap: str, topic: str) -> tuple[Ingestor, asyncpg.Pool]:
    pool = await open_database(dsn, 10)
    ingestor = Ingestor(pool, bootstrap, group_id=f"nissa-{uuid.uuid4().hex[:6]}",
                        rules=AlertRules(), topics=[topic])
    await ingestor.start()
    return ingestor, pool


async def test_a_poison_event_is_dead_lettered_and_the_rest_is_stored(
        fresh_database, kafka_bootstrap):
    run = f"run-{uuid.uuid4().hex[:8]}"
    topic = await _topic(kafka_bootstrap)
    nul = _snapshot(run + "\x00evil", 99)  # PostgreSQL text cannot hold NUL
    values = [_event_value(_snapshot(run, 1)), _event_value(nul), b"\x08\x96\x01garbage",
              _event_value(_snapshot(run, 2))]
    await _send(kafka_bootstrap, topic, values)
    ingestor, pool = await _ingestor(fresh_database, kafka_bootstrap, topic)
    try:
        assert await eventually(lambda: _stored_is(fresh_database, run, [1, 2]))
        letters = await _dead_letters(kafka_bootstrap, topic, 2)
        by_offset = {int(letter["offset"]): letter for letter in letters}
        assert by_offset[1]["code"] == CODE_UNSTORABLE
        assert "run_id holds a NUL character" in by_offset[1]["reason"]
        assert by_offset[1]["value"] == values[1]  # the raw bytes, whole (they are small)
        assert by_offset[1]["partition"] == "0"
        assert by_offset[2]["code"] == CODE_UNDECODABLE
        assert by_offset[2]["value"] == values[2]
        # The ingest goes on after them.
        await _send(kafka_bootstrap, topic, [_event_value(_snapshot(run, 3))])
        assert await eventually(lambda: _stored_is(fresh_database, run, [1, 2, 3]))
        assert not ingestor.task.done()
        assert ingestor.dead_lettered == 2
    finally:
        await ingestor.stop()
        await pool.close()


async def test_a_compression_bomb_is_dead_lettered_without_being_inflated(
        fresh_database, kafka_bootstrap):
    run = f"run-{uuid.uuid4().hex[:8]}"
    topic = await _topic(kafka_bootstrap)
    await _send(kafka_bootstrap, topic, [bytes(BOMB_BYTES)], compression="gzip")
    await _send(kafka_bootstrap, topic, [_event_value(_snapshot(run, 1))], compression="gzip")
    tracemalloc.start()
    try:
        ingestor, pool = await _ingestor(fresh_database, kafka_bootstrap, topic)
        try:
            assert await eventually(lambda: _stored_is(fresh_database, run, [1]))
            _, peak = tracemalloc.get_traced_memory()
            assert peak < MEMORY_CEILING, f"the ingest allocated {peak} bytes"
            assert not ingestor.task.done()
        finally:
            await ingestor.stop()
            await pool.close()
    finally:
        tracemalloc.stop()
    (letter,) = await _dead_letters(kafka_bootstrap, topic, 1)
    assert letter["code"] == CODE_UNREADABLE_BATCH
    assert f"inflates past {MAX_INFLATED_BATCH_BYTES} bytes" in letter["reason"]
    assert letter["offset"] == "0"


async def _stored_is(dsn: str, run: str, steps: list[int]) -> bool:
    return await _stored(dsn, run) == steps


async def test_nissa_ingest_workers_dead_letter_a_poison_event_and_count_it(
        fresh_database, kafka_bootstrap):
    """The same through the server and its worker processes, on the real topic."""
    from prometheus_client import REGISTRY

    from esper.nissa.service import SPEC
    from esper.oona.topics import TELEMETRY_TRAINING
    from esper.runtime.server import start_server
    from tests.integration.test_nissa import _config

    def dead_lettered() -> float:
        return REGISTRY.get_sample_value("esper_oona_dead_letters_total", {
            "topic": TELEMETRY_TRAINING, "code": CODE_UNSTORABLE}) or 0.0

    run = f"run-{uuid.uuid4().hex[:8]}"
    before = dead_lettered()
    running = await start_server(SPEC, _config(fresh_database, kafka_bootstrap,
                                               f"nissa-{uuid.uuid4().hex[:6]}", ingest_workers=1))
    try:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
        await producer.start()
        try:
            for step, bad in ((1, False), (2, True), (3, False)):
                event = _snapshot(run + "\x00" if bad else run, step)
                sent = await producer.send_and_wait(TELEMETRY_TRAINING, encode_event(event),
                                                    key=run.encode(), headers=kafka_headers(event))
                if bad:
                    poison = sent
        finally:
            await producer.stop()
        assert await eventually(lambda: _stored_is(fresh_database, run, [1, 3]))
        ours = await _dead_letters(kafka_bootstrap, TELEMETRY_TRAINING, 1, lambda x: (
            x["partition"], x["offset"]) == (str(poison.partition), str(poison.offset)))
        assert len(ours) == 1 and ours[0]["code"] == CODE_UNSTORABLE
        assert "run_id holds a NUL character" in ours[0]["reason"]

        async def counted() -> bool:
            return dead_lettered() >= before + 1

        assert await eventually(counted, 10)  # forwarded by the worker to the server
    finally:
        await running.stop()


async def test_a_batch_postgresql_refuses_is_bisected_to_the_event_at_fault(
        fresh_database, kafka_bootstrap, monkeypatch):
    """Should an event PostgreSQL cannot store pass the checks before the COPY, the
    database's refusal is narrowed down by bisecting the batch: every other event is
    stored, the one at fault is dead-lettered with PostgreSQL's reason."""
    from esper.nissa import ingest as ingest_mod

    monkeypatch.setattr(ingest_mod, "unstorable_reason", lambda event: None)  # no pre-check
    run = f"run-{uuid.uuid4().hex[:8]}"
    topic = await _topic(kafka_bootstrap)
    steps = list(range(1, 12))
    values = [_event_value(_snapshot(run + ("\x00" if step == 7 else ""), step))
              for step in steps]
    await _send(kafka_bootstrap, topic, values)
    ingestor, pool = await _ingestor(fresh_database, kafka_bootstrap, topic)
    try:
        good = [step for step in steps if step != 7]
        assert await eventually(lambda: _stored_is(fresh_database, run, good))
        (letter,) = await _dead_letters(kafka_bootstrap, topic, 1)
        assert letter["code"] == CODE_UNSTORABLE and letter["offset"] == "6"
        assert letter["reason"].startswith("PostgreSQL refused it:")
        assert letter["value"] == values[6]
        assert not ingestor.task.done()
    finally:
        await ingestor.stop()
        await pool.close()
