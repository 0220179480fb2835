"""Nissa's ingest: a consumer group on every Oona topic that writes each batch to
PostgreSQL in one transaction and commits the Kafka offsets only after it. A crash
between the two redelivers the batch, which the event-id keys make harmless."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence

import asyncpg
from esper.leyline.v1 import telemetry_pb2
from esper.nissa import metrics, queries
from esper.nissa.alerts import AlertRules
from esper.nissa.hub import EventHub
from esper.nissa.store import ingest_batch, store_alerts
from esper.oona.consumer import ConsumedEvent, OonaConsumer
from esper.oona.envelope import new_event
from esper.oona.producer import OonaProducer
from esper.oona.topics import ALERTS, TOPIC_NAMES, ensure_topics

log = logging.getLogger(__name__)

# Retry a failed database write with this backoff (the batch is held, not re-polled).
DB_RETRY_MIN_S = 0.2
DB_RETRY_MAX_S = 5.0
# Errors that mean "the database is unreachable for now" rather than "this batch is bad".
DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)
SOURCE = "nissa"


class Ingestor:
    """Consume → store → commit → fan out, until stopped."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        bootstrap: str,
        *,
        group_id: str,
        rules: AlertRules,
        hub: EventHub | None = None,
        alert_producer: OonaProducer | None = None,
        batch_max: int = 5_000,
        topics: Sequence[str] = TOPIC_NAMES,
    ) -> None:
        self.pool = pool
        self.bootstrap = bootstrap
        self.rules = rules
        self.hub = hub
        self.alert_producer = alert_producer
        self.topics = tuple(topics)
        self.consumer = OonaConsumer(
            bootstrap,
            self.topics,
            group_id=group_id,
            client_id="esper-nissa-ingest",
            max_records=batch_max,
        )
        self.ingested = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await ensure_topics(self.bootstrap)
        await self.consumer.start()
        self._task = asyncio.create_task(self._run(), name="nissa-ingest")

    async def stop(self) -> None:
        """Stop at once; a batch stored but not yet committed is redelivered later."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.consumer.stop()

    async def _run(self) -> None:
        while True:
            consumed, offsets = await self.consumer.poll()
            if consumed:
                new, alerts = await self._store_with_retry(consumed)
                await self.consumer.commit(offsets)
                self._after_commit(new, len(consumed), alerts)
            elif offsets:
                await self.consumer.commit(offsets)  # only undecodable records

    async def _store_with_retry(self, consumed: list[ConsumedEvent]):
        batch = [(c.event, c.value) for c in consumed]
        backoff = DB_RETRY_MIN_S
        while True:
            try:
                async with self.pool.acquire() as conn:
                    return await ingest_batch(conn, batch, self._evaluate)
            except DB_ERRORS as exc:
                log.warning("nissa ingest: database unavailable, retrying: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, DB_RETRY_MAX_S)

    def _evaluate(
        self, new: list[tuple[telemetry_pb2.TelemetryEvent, dt.datetime]]
    ) -> list[telemetry_pb2.Alert]:
        alerts: list[telemetry_pb2.Alert] = []
        for event, when in new:
            if event.WhichOneof("payload") != "alert":  # never alert on alerts
                alerts.extend(self.rules.evaluate(event, when))
        return alerts

    def _after_commit(
        self,
        new: list[telemetry_pb2.TelemetryEvent],
        received: int,
        alerts: list[telemetry_pb2.Alert],
    ) -> None:
        self.ingested += len(new)
        metrics.observe(new, received, alerts, dt.datetime.now(dt.UTC))
        if self.hub is not None and new:
            self.hub.publish(new)
        publish_alerts(self.alert_producer, alerts)


def publish_alerts(producer: OonaProducer | None, alerts: list[telemetry_pb2.Alert]) -> None:
    """Put stored alerts on `esper.alerts` (Nissa ingests them back; their ids dedupe)."""
    if producer is None:
        return
    for alert in alerts:
        event = new_event(
            source=SOURCE,
            run_id=alert.run_id,
            severity=alert.severity,
            event_id=f"alert-{alert.alert_id}",
            alert=alert,
        )
        producer.publish(event, topic=ALERTS)


class HeartbeatWatcher:
    """Every `interval_s`, raises `heartbeat_missing` alerts for overdue services."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        rules: AlertRules,
        interval_s: float,
        alert_producer: OonaProducer | None = None,
    ) -> None:
        self.pool = pool
        self.rules = rules
        self.interval_s = interval_s
        self.alert_producer = alert_producer
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="nissa-heartbeats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def check(self) -> list[telemetry_pb2.Alert]:
        async with self.pool.acquire() as conn:
            beats = await queries.heartbeats(conn)
            alerts = self.rules.missing_heartbeats(beats, dt.datetime.now(dt.UTC))
            stored = await store_alerts(conn, alerts) if alerts else []
        metrics.observe([], 0, stored, dt.datetime.now(dt.UTC))
        publish_alerts(self.alert_producer, stored)
        return stored

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except DB_ERRORS as exc:
                log.warning("nissa heartbeats: database unavailable: %s", exc)
