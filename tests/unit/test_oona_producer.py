"""Producer drop logic, the outbound buffer and topic routing (no broker)."""

import threading

import pytest

from esper.leyline.v1 import signals_pb2, telemetry_pb2
from esper.oona.buffer import OutboundBuffer, OutboundRecord
from esper.oona.envelope import PAYLOAD_KINDS, new_event
from esper.oona.producer import OonaProducer
from esper.oona.topics import (
    KIND_TOPICS,
    TELEMETRY_TRAINING,
    TOPIC_NAMES,
    TOPICS,
    event_key,
    topic_for,
)


def _record(i: int = 0) -> OutboundRecord:
    return OutboundRecord("t", b"k", str(i).encode(), [])


def test_buffer_drops_and_counts_when_full():
    buffer = OutboundBuffer(3)
    assert [buffer.offer(_record(i)) for i in range(5)] == [True, True, True, False, False]
    assert buffer.accepted == 3 and buffer.dropped == 2
    assert buffer.fill_ratio == 1.0
    assert [r.value for r in buffer.take(2)] == [b"0", b"1"]
    assert buffer.offer(_record(9))
    assert [r.value for r in buffer.take(10)] == [b"2", b"9"]
    assert buffer.fill_ratio == 0.0


def test_buffer_signals_only_when_it_becomes_non_empty():
    calls = []
    buffer = OutboundBuffer(10, on_ready=lambda: calls.append(1))
    buffer.offer(_record())
    buffer.offer(_record())
    assert len(calls) == 1
    buffer.take(10)
    buffer.offer(_record())
    assert len(calls) == 2


def test_buffer_is_thread_safe():
    buffer = OutboundBuffer(1000)

    def offer_many():
        for i in range(500):
            buffer.offer(_record(i))

    threads = [threading.Thread(target=offer_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert buffer.accepted == 1000 and buffer.dropped == 1000 and len(buffer) == 1000


def test_buffer_rejects_zero_capacity():
    with pytest.raises(ValueError):
        OutboundBuffer(0)


def _snapshot(run_id: str = "run-1") -> telemetry_pb2.TelemetryEvent:
    return new_event(source="tolaria", run_id=run_id, snapshot=signals_pb2.TrainingSnapshot())


def test_unstarted_producer_queues_then_drops_without_blocking():
    producer = OonaProducer("127.0.0.1:1", queue_capacity=4)
    results = [producer.publish(_snapshot()) for _ in range(6)]
    assert results == [True] * 4 + [False] * 2
    stats = producer.stats()
    assert stats.published == 4 and stats.dropped == 2 and stats.dropped_queue_full == 2
    assert stats.queue_depth == 4 and stats.backpressure == 1.0 and not stats.connected


def test_publish_routes_by_payload_and_keys_by_run():
    producer = OonaProducer("127.0.0.1:1", queue_capacity=4)
    producer.publish(_snapshot("run-9"))
    (record,) = producer._buffer.take(1)
    assert record.topic == TELEMETRY_TRAINING and record.key == b"run-9"
    assert dict(record.headers)["content-type"].startswith(b"application/x-protobuf")


def test_every_payload_kind_has_a_topic_and_topics_are_unique():
    assert set(KIND_TOPICS) == set(PAYLOAD_KINDS)
    assert len(set(TOPIC_NAMES)) == len(TOPICS)
    assert all(name.startswith("esper.") for name in TOPIC_NAMES)
    with pytest.raises(ValueError, match="payload"):
        topic_for(telemetry_pb2.TelemetryEvent(event_id="e"))


def test_keys_fall_back_to_blueprint_and_service():
    compile_event = new_event(
        source="tezzeret", compile_event=telemetry_pb2.CompileEvent(blueprint_ref="BP-MLP@1.0.0")
    )
    assert event_key(compile_event) == b"BP-MLP@1.0.0"
    beat = new_event(source="tamiyo", heartbeat=telemetry_pb2.ServiceHeartbeat(service="tamiyo"))
    assert event_key(beat) == b"tamiyo"
    anonymous = new_event(source="x", alert=telemetry_pb2.Alert())
    assert event_key(anonymous) is None


class _Builder:
    """aiokafka's batch builder, as far as the producer uses it."""

    def __init__(self) -> None:
        self.values: list[bytes] = []

    def append(self, *, timestamp, key, value, headers):
        self.values.append(value)
        return object()  # record metadata: truthy while the batch has room


class _Kafka:
    """The aiokafka producer at its batch API; sends to `failing` partitions fail."""

    def __init__(self, failing: set[int]) -> None:
        self.failing = failing
        self.acked: list[bytes] = []

    async def partitions_for(self, topic):
        return {0, 1}

    def create_batch(self):
        return _Builder()

    async def send_batch(self, builder, topic, partition):
        import asyncio

        from aiokafka.errors import KafkaConnectionError

        future = asyncio.get_running_loop().create_future()
        if partition in self.failing:
            future.set_exception(KafkaConnectionError("broker went away"))
        else:
            self.acked += builder.values
            future.set_result(None)
        return future

    async def stop(self):
        pass


def _keyed(producer: OonaProducer, key: bytes, partition: int) -> bytes:
    assert producer._partition(key, [0, 1]) == partition
    return key


async def test_a_failed_send_is_requeued_in_order_and_sent_again():
    producer = OonaProducer("127.0.0.1:1", queue_capacity=10, create_topics=False)
    on_0, on_1 = _keyed(producer, b"run-a", 0), _keyed(producer, b"run-d", 1)
    for i in range(6):
        producer.publish(new_event(source="t", run_id="r", snapshot=signals_pb2.TrainingSnapshot(
            step=i)), key=on_0 if i % 2 else on_1)
    first = producer._buffer.take(10)
    producer._kafka = _Kafka(failing={1})
    await producer._send_round(first)
    # Partition 0's records were acknowledged; partition 1's are back, first, in order.
    assert len(producer._buffer) == 3 and producer._kafka is None  # reconnects before retrying
    stats = producer.stats()
    assert (stats.sent, stats.dropped) == (3, 0)
    retry = producer._buffer.take(10)
    assert retry == [r for r in first if r.key == on_1]
    producer._kafka = kafka = _Kafka(failing=set())
    await producer._send_round(retry)
    assert kafka.acked == [r.value for r in retry]
    assert (producer.stats().sent, producer.stats().dropped) == (6, 0)


async def test_failed_events_that_no_longer_fit_are_dropped_and_counted():
    producer = OonaProducer("127.0.0.1:1", queue_capacity=4, create_topics=False)
    events = [new_event(source="t", run_id="r", snapshot=signals_pb2.TrainingSnapshot(step=i))
              for i in range(7)]
    for event in events[:4]:
        assert producer.publish(event)
    batch = producer._buffer.take(4)
    for event in events[4:]:  # published while the round was in flight
        assert producer.publish(event)
    producer._kafka = _Kafka(failing={0, 1})
    await producer._send_round(batch)
    stats = producer.stats()
    # One of the four failed fits beside the three new ones; three are dropped.
    assert stats.queue_depth == 4 and stats.sent == 0
    assert stats.dropped_send_failed == 3 and stats.dropped == 3
    assert producer._buffer.take(1) == batch[-1:]
