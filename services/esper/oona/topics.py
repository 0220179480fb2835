"""The topics of Oona: names, partitions, which payload kind travels where, and
creating them on a broker (idempotent)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from esper.leyline.v1 import telemetry_pb2
from esper.oona.security import kafka_security

log = logging.getLogger(__name__)

TELEMETRY_TRAINING = "esper.telemetry.training"
SEED_TRANSITIONS = "esper.seed.transitions"
CONTROL_DECISIONS = "esper.control.decisions"
CONTROL_ACKS = "esper.control.acks"
COMPILE_REQUESTS = "esper.compile.requests"
COMPILE_EVENTS = "esper.compile.events"
CATALOG_EVENTS = "esper.catalog.events"
FIELD_REPORTS = "esper.field-reports"
ALERTS = "esper.alerts"
HEARTBEATS = "esper.heartbeats"
DEADLETTER = "esper.deadletter"

# Partitions: run-keyed, high-volume topics get more so several Nissa ingest workers can
# share them; compile requests get enough for a handful of Tezzeret workers in one group;
# low-volume control-plane topics keep one or two so ordering across keys stays simple.
RUN_TOPIC_PARTITIONS = 4
WORKER_TOPIC_PARTITIONS = 4
CONTROL_TOPIC_PARTITIONS = 2
SINGLE_PARTITION = 1

# One broker on the local stack: replication above 1 would be refused.
LOCAL_REPLICATION_FACTOR = 1
# How long admin calls may take before we call the broker unreachable.
ADMIN_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its name, partition count, the payload kinds (oneof field names of
    TelemetryEvent.payload) published to it by default, and what it is for."""

    name: str
    partitions: int
    kinds: tuple[str, ...]
    description: str


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        TELEMETRY_TRAINING,
        RUN_TOPIC_PARTITIONS,
        ("snapshot",),
        "training snapshots from Tolaria, keyed by run id",
    ),
    TopicSpec(
        SEED_TRANSITIONS,
        RUN_TOPIC_PARTITIONS,
        ("seed_transition",),
        "seed stage changes from Kasmina/Tolaria, keyed by run id",
    ),
    TopicSpec(
        CONTROL_DECISIONS,
        CONTROL_TOPIC_PARTITIONS,
        ("decision",),
        "adaptation decisions issued by Tamiyo, keyed by run id",
    ),
    TopicSpec(
        CONTROL_ACKS,
        CONTROL_TOPIC_PARTITIONS,
        ("ack",),
        "decision acks from Tolaria, keyed by run id",
    ),
    TopicSpec(
        COMPILE_REQUESTS,
        WORKER_TOPIC_PARTITIONS,
        (),
        "compile requests for Tezzeret's worker group, keyed by blueprint ref",
    ),
    TopicSpec(
        COMPILE_EVENTS,
        CONTROL_TOPIC_PARTITIONS,
        ("compile_event",),
        "compile job progress from Tezzeret, keyed by blueprint ref",
    ),
    TopicSpec(
        CATALOG_EVENTS,
        SINGLE_PARTITION,
        ("catalog_event",),
        "Urza catalogue changes, one partition so the revision order holds",
    ),
    TopicSpec(
        FIELD_REPORTS,
        CONTROL_TOPIC_PARTITIONS,
        ("field_report",),
        "seed outcomes, the training data of the learned policy",
    ),
    TopicSpec(ALERTS, SINGLE_PARTITION, ("alert",), "alerts raised by Nissa's rules"),
    TopicSpec(
        HEARTBEATS,
        SINGLE_PARTITION,
        ("heartbeat",),
        "liveness beats of services and training processes",
    ),
    TopicSpec(
        DEADLETTER,
        SINGLE_PARTITION,
        (),
        "records a consumer could not decode or store: the raw bytes (bounded), with the "
        "reason and the original topic, partition and offset in headers (esper.oona.deadletter)",
    ),
)

TOPIC_NAMES: tuple[str, ...] = tuple(spec.name for spec in TOPICS)
# The topics that carry TelemetryEvents (what Nissa ingests): all but the dead letters,
# which are raw records that already failed once.
EVENT_TOPIC_NAMES: tuple[str, ...] = tuple(name for name in TOPIC_NAMES if name != DEADLETTER)
TOPICS_BY_NAME: dict[str, TopicSpec] = {spec.name: spec for spec in TOPICS}
KIND_TOPICS: dict[str, str] = {kind: spec.name for spec in TOPICS for kind in spec.kinds}


def topic_for(event: telemetry_pb2.TelemetryEvent) -> str:
    """The default topic of an event, from its payload kind."""
    kind = event.WhichOneof("payload")
    if kind is None:
        raise ValueError("TelemetryEvent.payload: no payload set, cannot pick a topic")
    return KIND_TOPICS[kind]


def event_key(event: telemetry_pb2.TelemetryEvent) -> bytes | None:
    """The partition key: the run id when the event belongs to a run, else the blueprint
    ref of compile/catalogue events, else the service of a heartbeat or alert. Events with
    one key land on one partition, so their order holds."""
    if event.run_id:
        return event.run_id.encode()
    kind = event.WhichOneof("payload")
    if kind in ("compile_event", "catalog_event"):
        ref = getattr(event, kind).blueprint_ref
        return ref.encode() if ref else None
    if kind == "heartbeat" and event.heartbeat.service:
        return event.heartbeat.service.encode()
    if kind == "alert":
        owner = event.alert.run_id or event.alert.service
        return owner.encode() if owner else None
    return None


async def ensure_topics(
    bootstrap: str, specs: tuple[TopicSpec, ...] = TOPICS, *, client_id: str = "esper-oona-admin"
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created. Idempotent:
    existing topics are left as they are (their partition count is not changed)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, client_id=client_id, request_timeout_ms=ADMIN_TIMEOUT_MS,
        **kafka_security(),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if not missing:
            return []
        new = [NewTopic(s.name, s.partitions, LOCAL_REPLICATION_FACTOR) for s in missing]
        try:
            await admin.create_topics(new, timeout_ms=ADMIN_TIMEOUT_MS)
        except TopicAlreadyExistsError:
            log.info("oona: topics created concurrently by another process")
        log.info("oona: created topics %s", [s.name for s in missing])
        return [s.name for s in missing]
    finally:
        await admin.close()


async def describe_topics(bootstrap: str) -> dict[str, int]:
    """Every topic on the broker with its partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=ADMIN_TIMEOUT_MS,
                                **kafka_security())
    await admin.start()
    try:
        names = await admin.list_topics()
        described = await admin.describe_topics(names) if names else []
        return {t["topic"]: len(t["partitions"]) for t in described}
    finally:
        await admin.close()
