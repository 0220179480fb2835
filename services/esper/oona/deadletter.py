"""Dead letters: records a consumer could not decode or store, moved aside to
`esper.deadletter` so that the consumer commits past them and goes on.

A dead letter is a plain Kafka record (not a TelemetryEvent: what it carries already
failed to be one). Its value is the original record's value, cut to
`MAX_DEAD_LETTER_VALUE_BYTES`; its key the original key, cut likewise; its headers say
why and where it came from (Kafka Connect's dead-letter queues use the same shape):

    esper-dlq-code        undecodable | unreadable_batch | unstorable
    esper-dlq-reason      the reason, in words (at most MAX_REASON_CHARS)
    esper-dlq-topic       the original topic
    esper-dlq-partition   the original partition (decimal)
    esper-dlq-offset      the original offset (decimal)
    esper-dlq-value-bytes the original value's length (decimal; -1 when it had none)

`DeadLetterSender.send` waits for the broker's acknowledgement: a consumer commits past
a bad record only once its dead letter is stored."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY, Counter

from esper.oona.aio import within
from esper.oona.security import kafka_security
from esper.oona.topics import DEADLETTER, ensure_topics

log = logging.getLogger(__name__)

# The reasons a record is dead-lettered (the esper-dlq-code header and the metric label).
CODE_UNDECODABLE = "undecodable"  # not a TelemetryEvent of this contract
CODE_UNREADABLE_BATCH = "unreadable_batch"  # its record batch inflates too far, or is corrupt
CODE_UNSTORABLE = "unstorable"  # a valid event the consumer's database cannot store
# Enough of the original bytes to see what was sent, not enough to make the dead-letter
# topic a second way to flood the broker (Kafka's default message limit is 1 MiB).
MAX_DEAD_LETTER_VALUE_BYTES = 64 * 1024
MAX_DEAD_LETTER_KEY_BYTES = 1024
MAX_REASON_CHARS = 1024
# How long one send of dead letters may wait for the broker's acknowledgement.
SEND_TIMEOUT_S = 10.0

HEADER_PREFIX = "esper-dlq-"

DEAD_LETTERS = Counter(
    "esper_oona_dead_letters_total",
    "Records moved to the dead-letter topic, by original topic and reason code",
    ["topic", "code"],
    registry=REGISTRY,
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be handled, and why."""

    code: str
    reason: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (HEADER_PREFIX + "code", self.code.encode()),
            (HEADER_PREFIX + "reason", self.reason[:MAX_REASON_CHARS].encode("utf-8", "replace")),
            (HEADER_PREFIX + "topic", self.topic.encode()),
            (HEADER_PREFIX + "partition", str(self.partition).encode()),
            (HEADER_PREFIX + "offset", str(self.offset).encode()),
            (HEADER_PREFIX + "value-bytes",
             str(-1 if self.value is None else len(self.value)).encode()),
        ]

    def record_key(self) -> bytes | None:
        return None if self.key is None else self.key[:MAX_DEAD_LETTER_KEY_BYTES]

    def record_value(self) -> bytes:
        return b"" if self.value is None else self.value[:MAX_DEAD_LETTER_VALUE_BYTES]


def dead_letter_headers(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    """The esper-dlq-* headers of a dead-letter record, by name without the prefix."""
    return {
        name[len(HEADER_PREFIX):]: (value or b"").decode("utf-8", "replace")
        for name, value in headers
        if name.startswith(HEADER_PREFIX)
    }


def record_sent(counts: Sequence[tuple[str, str, int]]) -> None:
    """Count in this process's metric the dead letters another process sent:
    (original topic, code, how many) increments."""
    for topic, code, count in counts:
        DEAD_LETTERS.labels(topic, code).inc(count)


class DeadLetterSender:
    """Sends dead letters and waits until the broker has them."""

    def __init__(self, bootstrap: str, *, client_id: str = "esper-oona-deadletter") -> None:
        self.bootstrap = bootstrap
        self._kafka = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            **kafka_security(),
            client_id=client_id,
            acks="all",
            enable_idempotence=False,  # tansu rejects InitProducerId (see INFRA.md)
        )
        # Dead letters sent since start, per (original topic, code): what the metric above
        # counts, kept for a process without its own /metrics to forward (record_sent).
        self.sent: Tally[tuple[str, str]] = Tally()

    async def start(self) -> None:
        await ensure_topics(self.bootstrap)
        await self._kafka.start()

    async def stop(self) -> None:
        await self._kafka.stop()

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        """Send every letter; returns once all are acknowledged. Raises KafkaError or
        TimeoutError when the broker does not take them (the caller retries: it must not
        commit past records whose dead letters are not stored)."""
        if not letters:
            return
        await within(SEND_TIMEOUT_S, self._send_all(letters))
        for letter in letters:
            DEAD_LETTERS.labels(letter.topic, letter.code).inc()
            self.sent[(letter.topic, letter.code)] += 1
        # One line per batch, not per record: a flood of garbage must not flood the log.
        first = letters[0]
        log.warning("oona: dead-lettered %d records; first %s[%d]@%d (%s): %s", len(letters),
                    first.topic, first.partition, first.offset, first.code, first.reason)

    async def _send_all(self, letters: Sequence[DeadLetter]) -> None:
        # send() itself may wait (for metadata, for room in aiokafka's buffer): the
        # caller's timeout covers it as well as the acknowledgements.
        futures = [
            await self._kafka.send(DEADLETTER, letter.record_value(), key=letter.record_key(),
                                   headers=letter.headers())
            for letter in letters
        ]
        await asyncio.gather(*futures)
