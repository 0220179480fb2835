"""Nissa's ingest: a consumer group on every Oona topic that writes each batch to
PostgreSQL in one transaction and commits the Kafka offsets only after it. A crash
between the two redelivers the batch, which the event-id keys make harmless.

Two stages run at once: the fetcher polls and decodes the next batch (and builds its
rows) while the writer stores the current one, so Kafka, Python and PostgreSQL work in
parallel. The writer handles batches strictly in order, one transaction each, and
commits a batch's offsets only after its transaction committed.

No record stops the ingest. Records that are not events (esper.oona.consumer), events
PostgreSQL cannot store (a NUL in a text field: rows.unstorable_reason), and, should the
database still refuse a batch with a data error, the events that bisecting the batch
isolates as the cause, go to the dead-letter topic with the reason; every other event of
the batch is stored, and the offsets are committed past them once their dead letters are
acknowledged."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from esper.leyline.v1 import telemetry_pb2
from esper.nissa import metrics, queries
from esper.nissa.alerts import AlertRules
from esper.nissa.fanout import publish_alerts
from esper.nissa.health import IngestHealth
from esper.nissa.report import BatchReport
from esper.nissa.rows import IngestRows, rows_for, unstorable_reason
from esper.nissa.store import NewEvent, ingest_batch, store_alerts
from esper.nissa.tracing import trace_parents
from esper.oona.aio import cancel_and_join
from esper.oona.consumer import Assignment, ConsumedEvent, OonaConsumer
from esper.oona.deadletter import CODE_UNSTORABLE, DeadLetter, DeadLetterSender
from esper.oona.producer import OonaProducer
from esper.oona.topics import EVENT_TOPIC_NAMES, ensure_topics
from esper.runtime.postgres import CONNECTION_ERRORS

log = logging.getLogger(__name__)

# Retry a failed database write with this backoff (the batch is held, not re-polled).
DB_RETRY_MIN_S = 0.2
DB_RETRY_MAX_S = 5.0
# Errors that mean "the database is unreachable for now" rather than "this batch is bad".
DB_ERRORS = CONNECTION_ERRORS
# Called with the report of every stored batch, after its offsets were committed.
ReportSink = Callable[[BatchReport], Awaitable[None]]
# What the broker may answer when it cannot take dead letters now (retried like the DB).
BROKER_ERRORS = (KafkaError, OSError, TimeoutError)
# How often the in-process ingest tells its IngestHealth how long it has been stalled.
HEALTH_REPORT_S = 1.0
# The worker index of the in-process ingest in IngestHealth.
IN_PROCESS_WORKER = 0
# Decoded batches waiting for the writer: one is enough to keep the fetcher busy while a
# batch is written; more would only hold memory (and more work redelivered after a crash).
PIPELINE_DEPTH = 1


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A polled batch, decoded, with its rows and the offsets to commit once stored."""

    consumed: list[ConsumedEvent]
    rows: IngestRows
    offsets: dict[TopicPartition, int]
    # Records of the batch refused before the database saw them (undecodable, unstorable).
    dead: list[DeadLetter]
    # Wall-clock time the batch was polled (ns): where its ingest spans start.
    fetched_ns: int = 0

    @property
    def batch(self) -> list[tuple[telemetry_pb2.TelemetryEvent, bytes]]:
        return _pairs(self.consumed)


class Ingestor:
    """Consume → store → commit → fan out, until stopped."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        bootstrap: str,
        *,
        group_id: str,
        rules: AlertRules,
        on_report: ReportSink | None = None,
        batch_max: int = 5_000,
        topics: Sequence[str] = EVENT_TOPIC_NAMES,
        keep_events: bool = True,
        on_assign: Callable[[Assignment], None] | None = None,
        health: IngestHealth | None = None,
    ) -> None:
        """`on_report`: where each stored batch's report goes (the server's Fanout, or an
        ingest worker's pipe). `keep_events`: reports carry the decoded events too (for a
        sink in this process; a worker's pipe carries only their bytes). `health`: told
        how long a batch has been failing, every HEALTH_REPORT_S (the in-process ingest;
        a worker's stall travels in its consumer reports instead)."""
        self.pool = pool
        self.bootstrap = bootstrap
        self.rules = rules
        self.on_report = on_report
        self.keep_events = keep_events
        self.topics = tuple(topics)
        self.consumer = OonaConsumer(
            bootstrap,
            self.topics,
            group_id=group_id,
            client_id="esper-nissa-ingest",
            max_records=batch_max,
            on_assign=on_assign,
        )
        self.dead_letters = DeadLetterSender(bootstrap, client_id="esper-nissa-deadletter")
        self.ingested = 0
        # Records sent to the dead-letter topic since start.
        self.dead_lettered = 0
        # Monotonic time of the first failure of the batch being written (database or
        # broker unavailable), None while batches go through: how long the ingest has
        # been stuck (IngestHealth).
        self.failing_since: float | None = None
        self.health = health
        self._task: asyncio.Task[None] | None = None

    async def start(self, *, join: bool = True) -> None:
        """Connect to Kafka and ingest; with `join=False` only connect, and ingest from
        `join()` (see OonaConsumer.start)."""
        await ensure_topics(self.bootstrap)
        try:
            await self.dead_letters.start()
            await self.consumer.start(join=False)
        except BaseException:
            # A half-started client leaves no connections behind.
            await self.consumer.stop()
            await self.dead_letters.stop()
            raise
        if join:
            self.join()

    def join(self) -> None:
        """Join the consumer group and start ingesting."""
        self.consumer.join()
        self._task = asyncio.create_task(self._run(), name="nissa-ingest")
        self._task.add_done_callback(log_task_failure)

    @property
    def task(self) -> asyncio.Task[None]:
        """The running ingest: done only when stopped or failed (after start())."""
        if self._task is None:
            raise RuntimeError("the ingest is not running")
        return self._task

    async def stop(self) -> None:
        """Stop at once; a batch stored but not yet committed is redelivered later. The
        consumer always leaves its group, also when the ingest task had failed (a member
        that never leaves makes the next join wait for its session to time out)."""
        task, self._task = self._task, None
        try:
            await cancel_and_join(task, log)
        finally:
            try:
                await self.consumer.stop()
            finally:
                await self.dead_letters.stop()

    async def _run(self) -> None:
        prepared: asyncio.Queue[_Prepared] = asyncio.Queue(PIPELINE_DEPTH)
        async with asyncio.TaskGroup() as stages:  # one failing cancels the other
            stages.create_task(self._fetch(prepared), name="nissa-ingest-fetch")
            stages.create_task(self._write(prepared), name="nissa-ingest-write")
            if self.health is not None:
                stages.create_task(self._report_health(self.health), name="nissa-ingest-health")

    async def _report_health(self, health: IngestHealth) -> None:
        while True:
            health.stalled(IN_PROCESS_WORKER, self.stalled_s())
            await asyncio.sleep(HEALTH_REPORT_S)

    async def _fetch(self, prepared: asyncio.Queue[_Prepared]) -> None:
        """Poll, decode and build rows; hand the batches to the writer in order."""
        while True:
            consumed, offsets = await self.consumer.poll()
            if not offsets:
                continue
            fetched_ns = time.time_ns()
            dead = list(self.consumer.refused)
            storable = _storable(consumed, dead)
            rows = rows_for(_pairs(storable))
            await prepared.put(_Prepared(storable, rows, offsets, dead, fetched_ns))

    async def _write(self, prepared: asyncio.Queue[_Prepared]) -> None:
        """Store each batch (one transaction), dead-letter what was refused, then commit
        its offsets, then fan out."""
        while True:
            item = await prepared.get()
            new, alerts, dead = await self._store(item)
            stored_ns = time.time_ns()
            await self._send_dead_letters([*item.dead, *dead])
            await self._commit(item.offsets)
            self.failing_since = None
            self.ingested += len(new)
            if item.consumed and self.on_report is not None:
                await self.on_report(
                    self._report(new, len(item.consumed), alerts, item.fetched_ns, stored_ns))

    async def _store(self, item: _Prepared) -> tuple[list[NewEvent], list, list[DeadLetter]]:
        """Store a batch; when PostgreSQL refuses its data, bisect it to store every event
        it can and dead-letter the ones it refuses."""
        if not item.consumed:
            return [], [], []
        try:
            new, alerts = await self._store_with_retry(item.batch, item.rows)
            return new, alerts, []
        except asyncpg.DataError as exc:
            log.warning("nissa ingest: PostgreSQL refused a batch of %d events (%s); "
                        "isolating the events at fault", len(item.consumed), exc)
            return await self._isolate(item.consumed, exc)

    async def _isolate(self, consumed: list[ConsumedEvent], error: asyncpg.DataError
                       ) -> tuple[list[NewEvent], list, list[DeadLetter]]:
        """Store the halves of a refused batch separately, down to single events: a
        refused single event is dead-lettered. Each part is its own transaction (the
        event ids make a redelivery of parts already stored harmless)."""
        if len(consumed) == 1:
            return [], [], [_dead_letter(consumed[0], f"PostgreSQL refused it: {error}")]
        new: list[NewEvent] = []
        alerts: list = []
        dead: list[DeadLetter] = []
        middle = len(consumed) // 2
        for part in (consumed[:middle], consumed[middle:]):
            batch = _pairs(part)
            try:
                part_new, part_alerts = await self._store_with_retry(batch, rows_for(batch))
                part_dead: list[DeadLetter] = []
            except asyncpg.DataError as exc:
                part_new, part_alerts, part_dead = await self._isolate(part, exc)
            new += part_new
            alerts += part_alerts
            dead += part_dead
        return new, alerts, dead

    async def _send_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Send the dead letters of a batch; hold the batch until the broker has them
        (its offsets are committed only after: a lost dead letter would be silent loss)."""
        backoff = DB_RETRY_MIN_S
        while letters:
            try:
                await self.dead_letters.send(letters)
                self.dead_lettered += len(letters)
                return
            except BROKER_ERRORS as exc:
                self._failing()
                log.warning("nissa ingest: cannot send %d dead letters, retrying: %s",
                            len(letters), exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, DB_RETRY_MAX_S)

    def _failing(self) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()

    def stalled_s(self) -> float:
        """How long the batch being written has been failing (0 while batches go through)."""
        since = self.failing_since
        return 0.0 if since is None else time.monotonic() - since

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit offsets of a stored batch. A failed commit (a rebalance took the
        partitions, the broker went away) only means the batch is delivered again, which
        its event ids make harmless: log it and go on rather than stop ingesting."""
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("nissa ingest: offset commit failed, batch will be redelivered: %s", exc)

    async def _store_with_retry(
        self, batch: list[tuple[telemetry_pb2.TelemetryEvent, bytes]], rows: IngestRows
    ):
        backoff = DB_RETRY_MIN_S
        while True:
            try:
                async with self.pool.acquire() as conn:
                    return await ingest_batch(conn, batch, self._evaluate, rows)
            except DB_ERRORS as exc:
                self._failing()
                log.warning("nissa ingest: database unavailable, retrying: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, DB_RETRY_MAX_S)

    def _evaluate(self, new: list[NewEvent]) -> list[telemetry_pb2.Alert]:
        alerts: list[telemetry_pb2.Alert] = []
        evaluate = self.rules.evaluate
        for event, _, when, kind in new:
            if kind != "alert":  # never alert on alerts
                raised = evaluate(event, when, kind)
                if raised:
                    alerts.extend(raised)
        return alerts

    def _report(
        self,
        new: list[NewEvent],
        received: int,
        alerts: list[telemetry_pb2.Alert],
        fetched_ns: int,
        stored_ns: int,
    ) -> BatchReport:
        events = [event for event, _, _, _ in new]
        latest: dict[str, int] = {}
        for i, (event, _, _, kind) in enumerate(new):
            if kind == "snapshot":
                latest[event.run_id] = i
        return BatchReport(
            received=received,
            bodies=[body for _, body, _, _ in new],
            kinds=dict(Counter(kind for _, _, _, kind in new)),
            latest_snapshots=[i for run, i in latest.items() if run],
            alerts=[alert.SerializeToString() for alert in alerts],
            spans=trace_parents(events),
            fetched_ns=fetched_ns,
            stored_ns=stored_ns,
            events=events if self.keep_events else None,
        )


def log_task_failure(task: asyncio.Task[None]) -> None:
    """A background task that ended on its own (not cancelled) stopped ingesting: say so."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped", task.get_name(), exc_info=task.exception())


def _pairs(consumed: list[ConsumedEvent]) -> list[tuple[telemetry_pb2.TelemetryEvent, bytes]]:
    return [(c.event, c.value) for c in consumed]


def _storable(consumed: list[ConsumedEvent], dead: list[DeadLetter]) -> list[ConsumedEvent]:
    """The events PostgreSQL can store; a dead letter for each of the others."""
    storable = []
    for c in consumed:
        reason = unstorable_reason(c.event)
        if reason is None:
            storable.append(c)
        else:
            dead.append(_dead_letter(c, reason))
    return storable


def _dead_letter(consumed: ConsumedEvent, reason: str) -> DeadLetter:
    return DeadLetter(CODE_UNSTORABLE, reason, consumed.topic, consumed.partition,
                      consumed.offset, consumed.key, consumed.value)


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
        self._task.add_done_callback(log_task_failure)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_join(task, log)

    async def check(self) -> list[telemetry_pb2.Alert]:
        async with self.pool.acquire() as conn:
            beats = await queries.heartbeats(conn)
            alerts = self.rules.missing_heartbeats(beats, dt.datetime.now(dt.UTC))
            stored = await store_alerts(conn, alerts) if alerts else []
        metrics.observe({}, 0, [a.rule for a in stored], [], dt.datetime.now(dt.UTC))
        publish_alerts(self.alert_producer, stored)
        return stored

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except DB_ERRORS as exc:
                log.warning("nissa heartbeats: database unavailable: %s", exc)
