"""Oona: the Kafka event bus. Topics, the TelemetryEvent envelope, and a typed
producer/consumer with back-pressure that never blocks a training step."""

from esper.oona.consumer import ConsumedEvent, OonaConsumer
from esper.oona.envelope import (
    CONTENT_TYPE,
    DecodeError,
    decode_event,
    encode_event,
    kafka_headers,
    new_event,
    payload_kind,
    trace_context_of,
)
from esper.oona.producer import OonaProducer, ProducerStats, ThreadedOonaProducer
from esper.oona.topics import TOPICS, ensure_topics, event_key, topic_for

__all__ = [
    "CONTENT_TYPE",
    "TOPICS",
    "ConsumedEvent",
    "DecodeError",
    "OonaConsumer",
    "OonaProducer",
    "ProducerStats",
    "ThreadedOonaProducer",
    "decode_event",
    "encode_event",
    "ensure_topics",
    "event_key",
    "kafka_headers",
    "new_event",
    "payload_kind",
    "topic_for",
    "trace_context_of",
]
