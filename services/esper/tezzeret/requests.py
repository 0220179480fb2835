"""Compile requests on Kafka (`esper.compile.requests`): a TelemetryEvent whose
compile_event names the job (stage QUEUED), keyed by blueprint ref. The request carries
no more than the job id: the job itself is read from PostgreSQL, the record."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from esper.leyline.v1 import telemetry_pb2
from esper.oona import decode_event, encode_event, ensure_topics, kafka_headers, new_event
from esper.oona.envelope import DecodeError
from esper.oona.security import kafka_security
from esper.oona.topics import COMPILE_REQUESTS
from esper.tezzeret.jobs import Job

log = logging.getLogger(__name__)

SOURCE = "tezzeret"
# A broker that does not acknowledge within this long is treated as down: the job stays
# QUEUED in the database and the republisher sends it again later.
SEND_TIMEOUT_S = 5.0


def request_event(job: Job) -> telemetry_pb2.TelemetryEvent:
    return new_event(source=SOURCE, compile_event=telemetry_pb2.CompileEvent(
        job_id=job.job_id, blueprint_ref=job.blueprint_ref,
        stage=telemetry_pb2.COMPILE_STAGE_QUEUED))


def decode_request(value: bytes | None, headers=None) -> telemetry_pb2.CompileEvent:
    """The compile event of a request record; DecodeError when it is not one."""
    event = decode_event(value, headers)
    if event.WhichOneof("payload") != "compile_event" or not event.compile_event.job_id:
        raise DecodeError("not a compile request (no compile_event with a job id)")
    return event.compile_event


class RequestPublisher:
    """Publishes compile requests and waits for the broker's acknowledgement, so a job is
    marked published only once Kafka has it. Connects lazily and again after failures."""

    def __init__(self, bootstrap: str, *, client_id: str = "esper-tezzeret") -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, client_id=self.client_id, acks="all", **kafka_security(),
            request_timeout_ms=int(SEND_TIMEOUT_S * 1000),
            enable_idempotence=False,  # tansu rejects InitProducerId (INFRA.md)
        )
        try:
            await asyncio.wait_for(producer.start(), SEND_TIMEOUT_S)
            await asyncio.wait_for(ensure_topics(self.bootstrap), SEND_TIMEOUT_S)
        except BaseException:
            await _stop_quietly(producer)
            raise
        return producer

    async def publish(self, jobs: Iterable[Job]) -> list[str]:
        """Send one request per job; returns the ids the broker acknowledged ([] when the
        broker is unreachable — the jobs stay in the database for a later attempt)."""
        jobs = list(jobs)
        if not jobs:
            return []
        async with self._lock:
            try:
                if self._producer is None:
                    self._producer = await self._connect()
                return await asyncio.wait_for(self._send(self._producer, jobs), SEND_TIMEOUT_S)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("tezzeret: cannot publish compile requests to %s: %s",
                            self.bootstrap, exc)
                producer, self._producer = self._producer, None
                if producer is not None:
                    await _stop_quietly(producer)
                return []

    @staticmethod
    async def _send(producer: AIOKafkaProducer, jobs: list[Job]) -> list[str]:
        futures = []
        for job in jobs:
            event = request_event(job)
            futures.append(await producer.send(
                COMPILE_REQUESTS, encode_event(event), key=job.blueprint_ref.encode(),
                headers=kafka_headers(event)))
        results = await asyncio.gather(*futures, return_exceptions=True)
        return [job.job_id for job, r in zip(jobs, results) if not isinstance(r, BaseException)]

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), SEND_TIMEOUT_S)
    except (KafkaError, OSError, TimeoutError) as exc:
        log.debug("tezzeret: producer close failed: %s", exc)
