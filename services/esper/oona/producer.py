"""OonaProducer: publish TelemetryEvents without ever blocking the caller.

`publish()` encodes the event and offers it to a bounded buffer (O(1), never waits; a
full buffer drops and counts). A background task takes batches, groups them by topic
and partition into gzip-compressed record batches sent through aiokafka's batch API (one
request per partition and round, not one `send()` per event), and reconnects by itself
when the broker is down or slow. Events of a round the broker did not acknowledge are
re-queued at the front of the buffer and sent again (at least once: consumers dedupe by
event id); only when the buffer has no room for them are they dropped, and counted
(`ProducerStats.dropped`), so a caller can say how many of its events were lost.
`ThreadedOonaProducer` runs the same producer on its own event loop in a daemon thread
for the (synchronous) training process."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Self

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from prometheus_client import REGISTRY, Counter, Gauge

from esper.leyline.v1 import telemetry_pb2
from esper.oona.aio import cancel_and_join, within
from esper.oona.buffer import OutboundBuffer, OutboundRecord
from esper.oona.envelope import encode_event, kafka_headers, stamp_trace
from esper.oona.security import kafka_security
from esper.oona.topics import ensure_topics, event_key, topic_for

log = logging.getLogger(__name__)

# Events held while the broker is slow or down: at one snapshot per step this is minutes
# of a fast run, and at a few KiB per snapshot it stays well under 100 MiB.
DEFAULT_QUEUE_CAPACITY = 10_000
# Records taken from the buffer per send round: large enough to amortise the round, small
# enough that one failed round loses little.
DEFAULT_BATCH_MAX = 500
# aiokafka waits this long to fill a batch; telemetry tolerates a few ms of latency.
LINGER_MS = 5
# A request (or a metadata wait) taking longer means the broker is down or overloaded.
REQUEST_TIMEOUT_MS = 5_000
# Upper bound on one send round, so a wedged client is recycled rather than waited on.
SEND_ROUND_TIMEOUT_S = 10.0
# Reconnect backoff: quick first retry, capped so recovery is noticed within seconds.
RECONNECT_BACKOFF_MIN_S = 0.2
RECONNECT_BACKOFF_MAX_S = 5.0
# The threaded (training-process) producer lets events gather this long, or until half a
# batch is waiting, before its sender runs: every wake-up of the sender thread takes the
# GIL from the training thread (up to a 5 ms switch interval), so frequent small rounds
# cost the step far more than the sending itself. Half a second of telemetry latency is
# invisible on a dashboard.
THREADED_LINGER_S = 0.5
# Bytes of one record batch (before compression): a round's events for one partition go
# in one batch, one produce request; well under the broker's 1 MiB message limit.
MAX_BATCH_BYTES = 512 * 1024
# Partition keys whose murmur2 hash is remembered (run ids, blueprint refs): the hash is
# pure Python in aiokafka and costs more than the rest of an event's send.
KEY_HASH_CACHE = 4_096
# How often an idle sender refreshes the Prometheus metrics.
METRICS_INTERVAL_S = 1.0
# gzip works with every broker without extra libraries (snappy/lz4/zstd need them).
COMPRESSION = "gzip"

PUBLISHED = Counter(
    "esper_oona_events_published_total",
    "Events accepted into the producer's buffer",
    ["client_id"],
    registry=REGISTRY,
)
SENT = Counter(
    "esper_oona_events_sent_total",
    "Events acknowledged by the broker",
    ["client_id"],
    registry=REGISTRY,
)
DROPPED = Counter(
    "esper_oona_events_dropped_total",
    "Events dropped (queue_full: the buffer was full when published; send_failed: not "
    "acknowledged and no room left to re-queue them, or still buffered at stop)",
    ["client_id", "reason"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "esper_oona_queue_depth", "Events waiting to be sent", ["client_id"], registry=REGISTRY
)
BACKPRESSURE = Gauge(
    "esper_oona_backpressure_ratio",
    "Fill ratio of the producer buffer (1 means new events are dropped)",
    ["client_id"],
    registry=REGISTRY,
)
CONNECTED = Gauge(
    "esper_oona_broker_connected",
    "1 while the producer has a broker session",
    ["client_id"],
    registry=REGISTRY,
)


@dataclass(frozen=True)
class ProducerStats:
    """Counters of one producer."""

    published: int
    sent: int
    dropped_queue_full: int
    dropped_send_failed: int
    queue_depth: int
    backpressure: float
    connected: bool

    @property
    def dropped(self) -> int:
        return self.dropped_queue_full + self.dropped_send_failed


class OonaProducer:
    """Non-blocking TelemetryEvent producer. Call `publish` from the event loop's thread or
    any other thread; `start`/`stop` from the loop that runs the sender."""

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str = "esper",
        queue_capacity: int = DEFAULT_QUEUE_CAPACITY,
        batch_max: int = DEFAULT_BATCH_MAX,
        create_topics: bool = True,
        linger_s: float = 0.0,
        wake_at: int = 1,
    ) -> None:
        """`linger_s`/`wake_at`: with a linger, the sender waits up to `linger_s` for
        `wake_at` events before sending what it has (fewer, bigger rounds)."""
        self.bootstrap = bootstrap
        self._linger_s = linger_s
        self._idle_wait_s = linger_s if linger_s > 0 else METRICS_INTERVAL_S
        self.client_id = client_id
        self._batch_max = batch_max
        self._create_topics = create_topics
        self._buffer = OutboundBuffer(
            queue_capacity, on_ready=self._wake, wake_at=min(wake_at, queue_capacity)
        )
        self._kafka: AIOKafkaProducer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._sent = 0
        self._send_failed = 0
        self._exported = {"published": 0, "sent": 0, "queue_full": 0, "send_failed": 0}
        self._connected = asyncio.Event()
        self._sent_topics: set[str] = set()
        self._topics_lost = False
        self._broker_session: frozenset[int] | None = None
        # Times topics were found gone and recreated (a broker restarted without its data).
        self._recreations = 0
        self._key_hashes: dict[bytes, int] = {}

    # ---- the caller's side -------------------------------------------------------------

    def publish(
        self,
        event: telemetry_pb2.TelemetryEvent,
        *,
        topic: str | None = None,
        key: bytes | None = None,
    ) -> bool:
        """Queue an event; never waits. Returns False when it was dropped (buffer full or
        producer stopped). The topic defaults to the payload kind's, the key to the run id
        (or blueprint ref)."""
        if not event.trace.traceparent:
            stamp_trace(event)
        record = OutboundRecord(
            topic=topic or topic_for(event),
            key=key if key is not None else event_key(event),
            value=encode_event(event),
            headers=kafka_headers(event),
        )
        if self._closing:
            self._buffer.dropped += 1
            return False
        return self._buffer.offer(record)

    def stats(self) -> ProducerStats:
        return ProducerStats(
            published=self._buffer.accepted,
            sent=self._sent,
            dropped_queue_full=self._buffer.dropped,
            dropped_send_failed=self._send_failed,
            queue_depth=len(self._buffer),
            backpressure=self._buffer.fill_ratio,
            connected=self._kafka is not None,
        )

    def _wake(self) -> None:
        if self._loop is None or self._ready is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._ready.set()
        else:
            try:
                self._loop.call_soon_threadsafe(self._ready.set)
            except RuntimeError:
                pass  # the loop is closed: the producer was stopped

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background sender. Does not wait for the broker: when it is down the
        producer keeps accepting (and, once full, dropping) events and connects later."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._ready = asyncio.Event()
        self._connected = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"oona-producer-{self.client_id}")
        if len(self._buffer):
            self._ready.set()

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until the producer has a broker session (for CLIs and tests)."""
        try:
            await within(timeout, self._connected.wait())
            return True
        except TimeoutError:
            return False

    async def flush(self, timeout: float) -> bool:
        """Wait until the buffer is empty; True when it emptied in time."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self._buffer) or self._in_flight:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def stop(self, flush_timeout: float = 5.0) -> None:
        """Send what is buffered (up to `flush_timeout`), then close. What is left is
        counted as dropped."""
        await self.flush(flush_timeout)
        self._closing = True  # the sender's loop ends here even if a cancel went astray
        try:
            await self._stop_sender()
        finally:
            left = self._buffer.take(len(self._buffer))
            self._send_failed += len(left)
            await self._disconnect()
            self._export_metrics()

    async def _stop_sender(self) -> None:
        task, self._task = self._task, None
        if self._ready is not None:
            self._ready.set()  # an idle sender wakes, sees _closing and returns
        await cancel_and_join(task, log)

    # ---- the sender --------------------------------------------------------------------

    _in_flight = False

    async def _run(self) -> None:
        """Connect (and reconnect) eagerly; send whenever there is something buffered."""
        backoff = RECONNECT_BACKOFF_MIN_S
        assert self._ready is not None
        while not self._closing:
            if self._kafka is None and not await self._connect():
                self._export_metrics()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX_S)
                continue
            backoff = RECONNECT_BACKOFF_MIN_S
            if not len(self._buffer):
                self._export_metrics()
                try:
                    await within(self._idle_wait_s, self._ready.wait())
                except TimeoutError:
                    pass
                self._ready.clear()
                continue
            if self._linger_s > 0 and len(self._buffer) < self._buffer.wake_at:
                await self._linger()
            if not await self._check_topics_after_reconnect():
                continue
            await self._send_round(self._buffer.take(self._batch_max))

    async def _linger(self) -> None:
        assert self._ready is not None
        try:
            await within(self._linger_s, self._ready.wait())
        except TimeoutError:
            pass
        self._ready.clear()

    async def _connect(self) -> bool:
        kafka = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            **kafka_security(),
            client_id=self.client_id,
            acks="all",
            compression_type=COMPRESSION,
            linger_ms=LINGER_MS,
            max_batch_size=MAX_BATCH_BYTES,
            request_timeout_ms=REQUEST_TIMEOUT_MS,
            enable_idempotence=False,  # tansu rejects InitProducerId (see INFRA.md)
        )
        try:
            await within(REQUEST_TIMEOUT_MS / 1000, kafka.start())
            if self._create_topics:
                await within(REQUEST_TIMEOUT_MS / 1000, ensure_topics(self.bootstrap))
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning(
                "oona producer %s: broker %s unavailable: %s", self.client_id, self.bootstrap, exc
            )
            await self._close_quietly(kafka)
            return False
        except asyncio.CancelledError:  # stopped while connecting: leave no client behind
            await self._close_quietly(kafka)
            raise
        log.info("oona producer %s: connected to %s", self.client_id, self.bootstrap)
        self._kafka = kafka
        self._topics_lost = False
        self._connected.set()
        return True

    async def _check_topics_after_reconnect(self) -> bool:
        """A broker that restarted without its data (tansu keeps topics in memory) acks
        produces to topics it no longer has, and loses them. Whenever the client's broker
        connections changed since the last round, look at the broker's metadata and
        recreate the topics that vanished before sending more. False: broker trouble."""
        kafka = self._kafka
        assert kafka is not None
        session = _broker_session(kafka)
        if session is not None and session == self._broker_session and not self._topics_lost:
            return True
        self._broker_session = session
        try:
            metadata = await within(REQUEST_TIMEOUT_MS / 1000, kafka.client.fetch_all_metadata())
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("oona producer %s: metadata check failed: %s", self.client_id, exc)
            await self._disconnect()
            return False
        if self._create_topics and self._sent_topics - metadata.topics():
            self._topics_lost = True
            return await self._recreate_topics()
        return True

    async def _recreate_topics(self) -> bool:
        log.warning(
            "oona producer %s: topics vanished from the broker (restart?); recreating them",
            self.client_id,
        )
        try:
            await within(REQUEST_TIMEOUT_MS / 1000, ensure_topics(self.bootstrap))
            assert self._kafka is not None
            self._topics_lost = False
            self._recreations += 1
            await within(REQUEST_TIMEOUT_MS / 1000, self._kafka.client.force_metadata_update())
            return True
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("oona producer %s: recreating topics failed: %s", self.client_id, exc)
            await self._disconnect()
            return False

    async def _send_round(self, batch: list[OutboundRecord]) -> None:
        """Send a batch; records the broker did not acknowledge go back to the front of
        the buffer (in order) to be sent again after a reconnect. Only what no longer fits
        in the buffer is dropped, and counted: telemetry is lost only when the broker is
        away longer than the buffer lasts."""
        kafka = self._kafka
        assert kafka is not None
        self._in_flight = True
        self._sent_topics.update(r.topic for r in batch)
        failed = batch
        recreations = self._recreations
        try:
            failed = await within(SEND_ROUND_TIMEOUT_S, self._send_all(kafka, batch))
            if not failed and _broker_session(kafka) != self._broker_session:
                # aiokafka reconnected during the round and sent it again by itself: to a
                # broker that restarted without its topics, which acks and loses them.
                if (not await self._check_topics_after_reconnect()
                        or self._recreations != recreations):
                    failed = batch
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("oona producer %s: send failed, reconnecting: %s", self.client_id, exc)
        finally:
            self._in_flight = False
        self._sent += len(batch) - len(failed)
        if failed:
            dropped = self._buffer.requeue(failed)
            self._send_failed += dropped
            log.warning("oona producer %s: %d events not acknowledged, re-queued %d",
                        self.client_id, len(failed), len(failed) - dropped)
            if self._kafka is kafka and self._recreations == recreations:
                await self._disconnect()

    async def _send_all(
        self, kafka: AIOKafkaProducer, batch: list[OutboundRecord]
    ) -> list[OutboundRecord]:
        """Send `batch` as one record batch per (topic, partition), keeping the order of
        the records of each partition; returns the records the broker did not acknowledge
        (in batch order)."""
        by_partition: dict[tuple[str, int], list[OutboundRecord]] = defaultdict(list)
        partitions: dict[str, list[int]] = {}
        for record in batch:
            if record.topic not in partitions:
                partitions[record.topic] = sorted(await kafka.partitions_for(record.topic))
            partition = self._partition(record.key, partitions[record.topic])
            by_partition[(record.topic, partition)].append(record)
        pending: list[tuple[asyncio.Future, list[OutboundRecord]]] = []
        for (topic, partition), records in by_partition.items():
            builder, members = kafka.create_batch(), []
            for r in records:
                if builder.append(timestamp=None, key=r.key, value=r.value, headers=r.headers):
                    members.append(r)
                    continue
                pending.append((await kafka.send_batch(builder, topic, partition=partition),
                                members))
                builder, members = kafka.create_batch(), [r]
                builder.append(timestamp=None, key=r.key, value=r.value, headers=r.headers)
            pending.append((await kafka.send_batch(builder, topic, partition=partition), members))
        results = await asyncio.gather(*(f for f, _ in pending), return_exceptions=True)
        unacked = {
            id(r)
            for (_, members), result in zip(pending, results, strict=True)
            if isinstance(result, BaseException)
            for r in members
        }
        return [r for r in batch if id(r) in unacked]

    def _partition(self, key: bytes | None, partitions: list[int]) -> int:
        """aiokafka's DefaultPartitioner (murmur2 of the key, as the Java client), with the
        hash of each key remembered; keyless records go to a random partition."""
        if key is None:
            return random.choice(partitions)
        hashed = self._key_hashes.get(key)
        if hashed is None:
            if len(self._key_hashes) >= KEY_HASH_CACHE:
                self._key_hashes.clear()
            hashed = self._key_hashes[key] = murmur2(key) & 0x7FFFFFFF
        return partitions[hashed % len(partitions)]

    async def _disconnect(self) -> None:
        kafka, self._kafka = self._kafka, None
        self._connected.clear()
        if kafka is not None:
            await self._close_quietly(kafka)

    @staticmethod
    async def _close_quietly(kafka: AIOKafkaProducer) -> None:
        try:
            await within(REQUEST_TIMEOUT_MS / 1000, kafka.stop())
        except (KafkaError, OSError, TimeoutError) as exc:
            log.debug("oona producer: close failed: %s", exc)

    def _export_metrics(self) -> None:
        stats = self.stats()
        now = {
            "published": stats.published,
            "sent": stats.sent,
            "queue_full": stats.dropped_queue_full,
            "send_failed": stats.dropped_send_failed,
        }
        delta = {k: now[k] - self._exported[k] for k in now}
        self._exported = now
        PUBLISHED.labels(self.client_id).inc(delta["published"])
        SENT.labels(self.client_id).inc(delta["sent"])
        DROPPED.labels(self.client_id, "queue_full").inc(delta["queue_full"])
        DROPPED.labels(self.client_id, "send_failed").inc(delta["send_failed"])
        QUEUE_DEPTH.labels(self.client_id).set(stats.queue_depth)
        BACKPRESSURE.labels(self.client_id).set(stats.backpressure)
        CONNECTED.labels(self.client_id).set(1 if stats.connected else 0)


def _broker_session(kafka: AIOKafkaProducer) -> frozenset[int] | None:
    """Which broker connections the client holds (aiokafka keeps one per node): a new set
    means it reconnected."""
    conns = getattr(getattr(kafka, "client", None), "_conns", None)
    return frozenset(id(c) for c in conns.values()) if conns is not None else None


class ThreadedOonaProducer:
    """OonaProducer for synchronous code (the training loop): it owns an event loop in a
    daemon thread. `publish` is O(1), thread-safe and never blocks the calling thread."""

    def __init__(self, bootstrap: str, **kwargs: object) -> None:
        batch_max = int(kwargs.get("batch_max", DEFAULT_BATCH_MAX))  # type: ignore[call-overload]
        kwargs.setdefault("linger_s", THREADED_LINGER_S)
        kwargs.setdefault("wake_at", max(1, batch_max // 2))
        self._producer = OonaProducer(bootstrap, **kwargs)  # type: ignore[arg-type]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="oona-producer", daemon=True
        )

    @property
    def producer(self) -> OonaProducer:
        return self._producer

    def start(self, timeout: float = 10.0) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._producer.start(), self._loop).result(timeout)
        return self

    def publish(
        self,
        event: telemetry_pb2.TelemetryEvent,
        *,
        topic: str | None = None,
        key: bytes | None = None,
    ) -> bool:
        return self._producer.publish(event, topic=topic, key=key)

    def stats(self) -> ProducerStats:
        return self._producer.stats()

    def wait_connected(self, timeout: float) -> bool:
        coro = self._producer.wait_connected(timeout)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout + 1)

    def flush(self, timeout: float) -> bool:
        coro = self._producer.flush(timeout)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout + 1)

    def stop(self, flush_timeout: float = 5.0) -> None:
        if not self._thread.is_alive():
            return
        coro = self._producer.stop(flush_timeout)
        try:
            asyncio.run_coroutine_threadsafe(coro, self._loop).result(
                flush_timeout + SEND_ROUND_TIMEOUT_S
            )
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=flush_timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
