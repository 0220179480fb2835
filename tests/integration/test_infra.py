"""The infrastructure launchers against the real servers: PostgreSQL, tansu, localbucket."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from esper.runtime.infra import (
    Broker,
    ObjectStore,
    ObjectStoreEndpoint,
    PortInUseError,
    PostgresServer,
    free_port,
    proc,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A private state dir (searchable by `nobody`, which runs PostgreSQL under root)."""
    path = Path(tempfile.mkdtemp(prefix="esper-test-restart-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _assert_gone(pid: int) -> None:
    assert not proc.is_running(pid)
    assert proc.group_members(pid) == []


async def test_postgres_fixture_answers_queries(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == "esper"
        assert await conn.fetchval("SHOW fsync") == "off"
    finally:
        await conn.close()


async def test_fresh_databases_are_empty_and_separate(
    fresh_database: str, postgres_dsn: str
) -> None:
    conn = await asyncpg.connect(fresh_database)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
        await conn.execute("CREATE TABLE only_here (id int)")
    finally:
        await conn.close()
    other = await asyncpg.connect(postgres_dsn)
    try:
        assert await other.fetchval("SELECT to_regclass('only_here')") is None
    finally:
        await other.close()


async def test_broker_fixture_round_trips_a_message(kafka_bootstrap: str) -> None:
    topic = f"esper.test.{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"seed-germinated", key=b"run-1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        record = await consumer.getone()
        assert (record.key, record.value) == (b"run-1", b"seed-germinated")
    finally:
        await consumer.stop()


def test_object_store_fixture_keeps_objects(object_store: ObjectStoreEndpoint) -> None:
    client = object_store.client()
    payload = os.urandom(4096)
    client.put_object(object_store.bucket, "kernels/k1", io.BytesIO(payload), len(payload))
    assert client.get_object(object_store.bucket, "kernels/k1").read() == payload


def test_fresh_bucket_is_empty(fresh_bucket: ObjectStoreEndpoint) -> None:
    client = fresh_bucket.client()
    assert list(client.list_objects(fresh_bucket.bucket)) == []
    client.put_object(fresh_bucket.bucket, "x", io.BytesIO(b"1"), 1)


async def _write_row(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE blueprints (name text PRIMARY KEY)")
        await conn.execute("INSERT INTO blueprints VALUES ('BP-MLP-GELU@1.0.0')")
    finally:
        await conn.close()


async def _read_rows(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [row["name"] for row in await conn.fetch("SELECT name FROM blueprints")]
    finally:
        await conn.close()


async def test_postgres_data_survives_a_restart(state_dir: Path) -> None:
    server = PostgresServer(state_dir, free_port(), die_with_parent=True)
    try:
        dsn = server.start()
        await _write_row(dsn)
        first_pid = server.process.pid
        assert server.stop() is True
        assert first_pid is not None
        _assert_gone(first_pid)
        # A second launcher on the same state dir (as a later `esper up` would be).
        server = PostgresServer(state_dir, free_port(), die_with_parent=True)
        assert server.start() != dsn  # new port, same data
        assert await _read_rows(server.dsn()) == ["BP-MLP-GELU@1.0.0"]
    finally:
        server.stop()


def test_object_store_keeps_an_object_across_a_restart(state_dir: Path) -> None:
    store = ObjectStore(state_dir, free_port(), die_with_parent=True)
    try:
        endpoint = store.start()
        endpoint.client().put_object(endpoint.bucket, "kernels/k", io.BytesIO(b"weights"), 7)
        pid = store.process.pid
        store.stop()
        assert pid is not None
        _assert_gone(pid)
        store = ObjectStore(state_dir, free_port(), die_with_parent=True)
        endpoint = store.start()
        assert endpoint.client().get_object(endpoint.bucket, "kernels/k").read() == b"weights"
    finally:
        store.stop()


def test_broker_stops_without_leftovers(state_dir: Path) -> None:
    broker = Broker(state_dir, free_port(), die_with_parent=True)
    try:
        broker.start()
        pid = broker.process.pid
        assert pid is not None and broker.is_ready()
    finally:
        broker.stop()
    _assert_gone(pid)


def test_a_port_in_use_fails_fast(state_dir: Path, kafka_broker: Broker) -> None:
    with pytest.raises(PortInUseError, match=f"broker: port {kafka_broker.port}"):
        Broker(state_dir, kafka_broker.port).start()
