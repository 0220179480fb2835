"""OonaConsumer: a typed consumer of TelemetryEvents with manual commits.

Offsets are committed only after the caller's handler succeeded, so a consumer that dies
mid-batch has the batch redelivered to the group. Records that do not decode, and record
batches that cannot be read (a batch that would inflate past its bound, a corrupt one:
esper.oona.inflate), are counted, skipped and kept as dead letters of the poll
(`refused`) for the caller to send to the dead-letter topic; their offsets are committed
with the batch: they can never succeed."""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Self

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from opentelemetry import context as otel_context
from prometheus_client import REGISTRY, Counter, Gauge

from esper.leyline.v1 import telemetry_pb2
from esper.oona import inflate
from esper.oona.deadletter import CODE_UNDECODABLE, CODE_UNREADABLE_BATCH, DeadLetter
from esper.oona.envelope import DecodeError, decode_event, trace_context_of
from esper.oona.security import kafka_security

log = logging.getLogger(__name__)

# INFRA.md: with aiokafka's defaults a group join against tansu takes 5 s and a rejoin
# after a restart 18 s; these make both about 1 s (500 ms session timeout fails).
SESSION_TIMEOUT_MS = 1_000
HEARTBEAT_INTERVAL_MS = 200
REBALANCE_TIMEOUT_MS = 1_000
# Records handed to the handler at most per batch (one DB transaction in Nissa).
DEFAULT_MAX_RECORDS = 2_000
# How long one poll waits for records before returning an empty batch.
DEFAULT_POLL_TIMEOUT_MS = 500
# Bytes one fetch may bring per partition: a full batch of a few thousand events of a few
# hundred bytes each arrives in one round trip instead of several (aiokafka's 1 MiB
# default holds ~4,000 snapshots, fewer than one DEFAULT_MAX_RECORDS batch of bigger ones).
MAX_PARTITION_FETCH_BYTES = 8 * 1024 * 1024

DECODE_ERRORS = Counter(
    "esper_oona_decode_errors_total",
    "Records that were not valid TelemetryEvents",
    ["topic"],
    registry=REGISTRY,
)
CONSUMED = Counter(
    "esper_oona_events_consumed_total",
    "Events decoded by consumers",
    ["group", "topic"],
    registry=REGISTRY,
)
LAG = Gauge(
    "esper_oona_consumer_lag_records",
    "Records behind the partition's high watermark after the last batch (the consumer's lag)",
    ["group", "topic", "partition"],
    registry=REGISTRY,
)


@dataclass(frozen=True, slots=True)
class ConsumedEvent:
    """A decoded event with where it came from."""

    event: telemetry_pb2.TelemetryEvent
    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]
    # The record's raw value: the serialized event, for stores that keep it verbatim.
    value: bytes

    def trace_context(self) -> otel_context.Context:
        """The context to continue the producer's trace in."""
        return trace_context_of(self.event, self.headers)


Handler = Callable[[list[ConsumedEvent]], Awaitable[None]]


def record_forwarded(
    group: str,
    consumed: dict[str, int],
    decode_errors: dict[str, int],
    lag: list[tuple[str, int, int]],
) -> None:
    """Count in this process's metrics what a consumer in another process reported:
    events decoded and records refused per topic (increments), lag per partition."""
    for topic, count in consumed.items():
        CONSUMED.labels(group, topic).inc(count)
    for topic, count in decode_errors.items():
        DECODE_ERRORS.labels(topic).inc(count)
    for topic, partition, records in lag:
        LAG.labels(group, topic, str(partition)).set(records)
# The partitions a group member owns after a rebalance.
Assignment = frozenset[TopicPartition]


class _AssignmentListener(ConsumerRebalanceListener):
    """Tells `on_assign` what the member owns after every rebalance."""

    def __init__(self, on_assign: Callable[[Assignment], None]) -> None:
        self._on_assign = on_assign

    def on_partitions_revoked(self, revoked) -> None:
        pass

    def on_partitions_assigned(self, assigned) -> None:
        self._on_assign(frozenset(assigned))


class OonaConsumer:
    """Consumes TelemetryEvents from `topics`. With a `group_id` partitions are shared
    within the group and offsets are committed by `commit()` / `run()`; without one the
    consumer reads every partition and commits nothing (for tails)."""

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        *,
        group_id: str | None,
        from_beginning: bool = True,
        client_id: str = "esper-oona-consumer",
        max_records: int = DEFAULT_MAX_RECORDS,
        on_assign: Callable[[Assignment], None] | None = None,
    ) -> None:
        """`on_assign`: called with the member's partitions after every rebalance (only
        with a `group_id`)."""
        if not topics:
            raise ValueError("topics: at least one topic is required")
        self.topics = tuple(topics)
        self.group_id = group_id
        self.max_records = max_records
        self.decode_errors = 0
        # The records of the last poll that were refused, as dead letters.
        self.refused: list[DeadLetter] = []
        # What the Prometheus metrics above record, also kept here so a process without
        # its own /metrics (a Nissa ingest worker) can forward it: events decoded and
        # records refused per topic since start, and the lag per (topic, partition).
        self.consumed_by_topic: Tally[str] = Tally()
        self.decode_errors_by_topic: Tally[str] = Tally()
        self.lag: dict[tuple[str, int], int] = {}
        listened = on_assign is not None and group_id is not None
        inflate.install()  # before the first fetch: bounded inflation, guarded batches
        self._consumer = AIOKafkaConsumer(
            *(() if listened else self.topics),  # subscribed in start(), with the listener
            bootstrap_servers=bootstrap,
            **kafka_security(),
            group_id=group_id,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
            metadata_max_age_ms=5_000,  # notice topics created after start quickly
            max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        )
        self._on_assign = on_assign
        self._listener = _AssignmentListener(self._assigned) if listened else None

    async def start(self, *, join: bool = True) -> None:
        """Connect. A consumer with `on_assign` joins its group here, or, with
        `join=False`, only at `join()`: members started together that join at the same
        moment share the partitions from the first assignment, instead of the first one
        taking everything until the others' joins rebalance the group."""
        await self._consumer.start()
        if join:
            self.join()

    def _assigned(self, partitions: Assignment) -> None:
        # Forget the lag of partitions another member owns now: reported on, it would
        # contradict what their new owner reports.
        owned = {(tp.topic, tp.partition) for tp in partitions}
        self.lag = {key: lag for key, lag in self.lag.items() if key in owned}
        if self._on_assign is not None:
            self._on_assign(partitions)

    def join(self) -> None:
        """Subscribe (join the group) if start() did not."""
        if self._listener is not None and not self._consumer.subscription():
            self._consumer.subscribe(self.topics, listener=self._listener)

    async def stop(self) -> None:
        await self._consumer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def poll(
        self, timeout_ms: int = DEFAULT_POLL_TIMEOUT_MS
    ) -> tuple[list[ConsumedEvent], dict[TopicPartition, int]]:
        """One batch of decoded events, plus the offsets to commit once it is handled
        (next offset per partition, covering records that failed to decode). The records
        refused in this poll are in `refused` until the next poll."""
        self.refused = []
        records = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=self.max_records)
        events: list[ConsumedEvent] = []
        offsets: dict[TopicPartition, int] = {}
        for tp, batch in records.items():
            if not batch:
                continue
            offsets[tp] = batch[-1].offset + 1
            before = len(events)
            for record in batch:
                consumed = self._decode(record)
                if consumed is not None:
                    events.append(consumed)
            # One counter update per partition batch: a labelled inc per event costs more
            # than decoding the event.
            CONSUMED.labels(self.group_id or "", tp.topic).inc(len(events) - before)
            self.consumed_by_topic[tp.topic] += len(events) - before
            self._observe_lag(tp, offsets[tp])
        return events, offsets

    def _observe_lag(self, tp: TopicPartition, next_offset: int) -> None:
        highwater = self._consumer.highwater(tp)
        if highwater is not None:
            lag = self.lag[(tp.topic, tp.partition)] = max(0, highwater - next_offset)
            LAG.labels(self.group_id or "", tp.topic, str(tp.partition)).set(lag)

    def _decode(self, record: ConsumerRecord) -> ConsumedEvent | None:
        headers = tuple(record.headers or ())
        refusal = inflate.refusal_of(headers, record.value)
        if refusal is not None:
            self._refuse(record, CODE_UNREADABLE_BATCH, refusal)
            return None
        try:
            event = decode_event(record.value, headers)
        except DecodeError as exc:
            self._refuse(record, CODE_UNDECODABLE, str(exc))
            return None
        return ConsumedEvent(
            event=event,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            timestamp_ms=record.timestamp,
            headers=headers,
            value=record.value,
        )

    def _refuse(self, record: ConsumerRecord, code: str, reason: str) -> None:
        self.decode_errors += 1
        self.decode_errors_by_topic[record.topic] += 1
        DECODE_ERRORS.labels(record.topic).inc()
        log.warning("oona: undecodable record %s[%d]@%d: %s", record.topic, record.partition,
                    record.offset, reason)
        self.refused.append(DeadLetter(code, reason, record.topic, record.partition,
                                       record.offset, record.key, record.value))

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit handled offsets (no-op without a group or with nothing to commit)."""
        if self.group_id is not None and offsets:
            await self._consumer.commit(offsets)

    async def run(
        self, handler: Handler, *, poll_timeout_ms: int = DEFAULT_POLL_TIMEOUT_MS
    ) -> None:
        """Forever: poll a batch, await `handler(batch)`, then commit. A handler that
        raises propagates without a commit, so the batch is redelivered."""
        while True:
            events, offsets = await self.poll(poll_timeout_ms)
            if events:
                await handler(events)
            await self.commit(offsets)

    async def events(
        self, poll_timeout_ms: int = DEFAULT_POLL_TIMEOUT_MS
    ) -> AsyncIterator[ConsumedEvent]:
        """Iterate decoded events one by one (commits nothing; for tails)."""
        while True:
            batch, _ = await self.poll(poll_timeout_ms)
            for consumed in batch:
                yield consumed
