"""Compile events on Oona (`esper.compile.events`), keyed by blueprint ref.

The job's own event rows in PostgreSQL are the record (WatchJob reads them); these are the
bus copy for Nissa and anyone else listening. Publishing never blocks: the Oona producer
buffers, and drops (counted) when the broker stays down."""

from __future__ import annotations

from esper.leyline.v1 import telemetry_pb2
from esper.oona import OonaProducer, new_event
from esper.oona.topics import COMPILE_EVENTS
from esper.tezzeret.jobs import FAILED, Job, stage_to_proto

SOURCE = "tezzeret"


def compile_event(job: Job, *, kernel_id: str = "", target_device: str = ""
                  ) -> telemetry_pb2.TelemetryEvent:
    severity = telemetry_pb2.SEVERITY_WARNING if job.stage == FAILED else telemetry_pb2.SEVERITY_INFO
    return new_event(source=SOURCE, severity=severity, compile_event=telemetry_pb2.CompileEvent(
        job_id=job.job_id, blueprint_ref=job.blueprint_ref, stage=stage_to_proto(job.stage),
        detail=job.detail, kernel_id=kernel_id, worker_id=job.worker_id,
        target_device=target_device))


class CompileEvents:
    """Publishes a job's changes; a no-op without a producer (unit tests, CLIs)."""

    def __init__(self, producer: OonaProducer | None) -> None:
        self.producer = producer

    def job_changed(self, job: Job, *, kernel_id: str = "", target_device: str = "") -> None:
        if self.producer is None:
            return
        self.producer.publish(compile_event(job, kernel_id=kernel_id, target_device=target_device),
                              topic=COMPILE_EVENTS, key=job.blueprint_ref.encode())
