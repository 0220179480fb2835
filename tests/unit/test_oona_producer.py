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
