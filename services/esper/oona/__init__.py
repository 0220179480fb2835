"""Oona: the Kafka event bus. Topics, the TelemetryEvent envelope, and a typed
producer/consumer with back-pressure that never blocks a training step.

The names below are loaded on first use (PEP 562), so that `esper.oona.aio` and the
envelope can be imported where aiokafka is not installed (the light client install: the
training process publishes through Oona only when a Kafka bootstrap is configured)."""

from __future__ import annotations

import importlib

# Public name -> the module that defines it.
_EXPORTS = {
    "ConsumedEvent": "consumer", "OonaConsumer": "consumer",
    "CONTENT_TYPE": "envelope", "DecodeError": "envelope", "decode_event": "envelope",
    "encode_event": "envelope", "kafka_headers": "envelope", "new_event": "envelope",
    "payload_kind": "envelope", "trace_context_of": "envelope",
    "OonaProducer": "producer", "ProducerStats": "producer", "ThreadedOonaProducer": "producer",
    "TOPICS": "topics", "ensure_topics": "topics", "event_key": "topics", "topic_for": "topics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'esper.oona' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"esper.oona.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
