"""Nissa ingest throughput (target: >= 50,000 events/s on this machine).

Starts PostgreSQL and the tansu broker on loopback, publishes N training-like events of
several runs (snapshots with a few layers, one in ten an epoch end, plus seed transitions,
decisions and acks) to Oona, then times Nissa's real Ingestor (consumer group, decode,
batched COPY into PostgreSQL, offset commit) from start until every event is stored.
The first figure includes joining the group (about 1 s with tansu); the after-join
figure counts from the moment the group assigned the partitions (the claim: a running
Nissa's throughput); the steady figure counts from the first stored batch. It also times the database path alone (ingest_batch on pre-decoded batches) and, as the
baseline of the same run, a bare consume-and-decode of the same topics, so the report
shows where the time goes. The events/s figures are the claims; the ratios say how much
of the bare consumer rate the full ingest keeps.

    .venv/bin/python benchmarks/bench_nissa_ingest.py [--events 100000] [--batch 5000]

Writes benchmarks/results/bench_nissa_ingest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from esper.leyline.v1 import control_pb2, lifecycle_pb2, signals_pb2, telemetry_pb2
from esper.nissa.alerts import AlertRules
from esper.nissa.db import open_database
from esper.nissa.ingest import Ingestor
from esper.nissa.store import ingest_batch
from esper.oona import OonaConsumer, OonaProducer, new_event
from esper.oona.topics import TOPIC_NAMES
from esper.runtime.infra import Broker, PostgresServer, free_port

RESULTS = Path(__file__).parent / "results" / "bench_nissa_ingest.json"
TARGET_EVENTS_PER_S = 50_000
RUNS = 8


def make_events(count: int) -> list[telemetry_pb2.TelemetryEvent]:
    runs = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(RUNS)]
    events = []
    for i in range(count):
        run, step = runs[i % RUNS], i // RUNS
        if i % 20 == 7:
            events.append(
                new_event(
                    source="tolaria",
                    run_id=run,
                    seed_transition=(
                        telemetry_pb2.SeedTransition(
                            seed_id="s",
                            slot_id="slot0",
                            step=step,
                            from_stage=lifecycle_pb2.SEED_STAGE_TRAINING,
                            to_stage=lifecycle_pb2.SEED_STAGE_BLENDING,
                            reason="G2 passed",
                        )
                    ),
                )
            )
        elif i % 20 == 13:
            events.append(
                new_event(
                    source="tamiyo",
                    run_id=run,
                    decision=(
                        control_pb2.AdaptationDecision(
                            decision_id=f"d{i}", run_id=run, issued_at_step=step
                        )
                    ),
                )
            )
        elif i % 20 == 17:
            events.append(
                new_event(
                    source="tolaria",
                    run_id=run,
                    ack=control_pb2.DecisionAck(
                        decision_id=f"d{i - 4}", run_id=run, status=control_pb2.ACK_STATUS_APPLIED
                    ),
                )
            )
        else:
            snap = signals_pb2.TrainingSnapshot(
                run_id=run, step=step, epoch=step // 100, epoch_end=step % 10 == 0
            )
            snap.metrics.train_loss = 1.0 / (1 + step)
            snap.metrics.val_loss = 1.0 / (1 + step)
            for layer in range(3):
                snap.layers.add(layer_id=f"layer{layer}", gradient_norm=0.1, activation_std=1.0)
            snap.seeds.add(seed_id="s", slot_id="slot0", stage=lifecycle_pb2.SEED_STAGE_TRAINING)
            events.append(new_event(source="tolaria", run_id=run, snapshot=snap))
    return events


async def publish(bootstrap: str, events) -> None:
    producer = OonaProducer(
        bootstrap, client_id="bench", queue_capacity=len(events) + 1, batch_max=5000
    )
    await producer.start()
    for event in events:
        producer.publish(event)
    assert await producer.flush(600), producer.stats()
    await producer.stop()
    assert producer.stats().dropped == 0, producer.stats()


async def count_events(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM nissa.events")
    finally:
        await conn.close()


async def time_bare_consume(bootstrap: str, total: int, batch: int) -> float:
    consumer = OonaConsumer(
        bootstrap, TOPIC_NAMES, group_id=f"bare-{uuid.uuid4().hex[:6]}", max_records=batch
    )
    await consumer.start()
    seen, start = 0, time.perf_counter()
    while seen < total:
        events, _ = await consumer.poll(500)
        seen += len(events)
    elapsed = time.perf_counter() - start
    await consumer.stop()
    return elapsed


async def time_ingestor(
    pool, dsn: str, bootstrap: str, total: int, batch: int
) -> tuple[float, float, int]:
    """(seconds from start, seconds from the first stored batch, events in that batch,
    seconds from the moment the group had assigned partitions)."""
    ingestor = Ingestor(
        pool,
        bootstrap,
        group_id=f"nissa-{uuid.uuid4().hex[:6]}",
        rules=AlertRules(),
        batch_max=batch,
    )
    start = time.perf_counter()
    await ingestor.start()
    while not ingestor.consumer._consumer.assignment():  # the group join (~1 s on tansu)
        await asyncio.sleep(0.001)
    joined = time.perf_counter()
    first_at, first_count = None, 0
    while ingestor.ingested < total:
        if first_at is None and ingestor.ingested:
            first_at, first_count = time.perf_counter(), ingestor.ingested
        await asyncio.sleep(0.01)
    end = time.perf_counter()
    await ingestor.stop()
    assert await count_events(dsn) >= total
    return end - start, end - (first_at or start), first_count, end - joined


async def time_store_only(pool, events, batch: int) -> float:
    pairs = [(e, e.SerializeToString()) for e in events]
    start = time.perf_counter()
    async with pool.acquire() as conn:
        for i in range(0, len(pairs), batch):
            await ingest_batch(conn, pairs[i : i + batch])
    return time.perf_counter() - start


async def main(args: argparse.Namespace) -> dict:
    state = Path(tempfile.mkdtemp(prefix="esper-bench-nissa-"))
    os.chmod(state, 0o755)
    postgres = PostgresServer(state, free_port(), durable=False)
    broker = Broker(state, free_port())
    try:
        postgres.start()
        broker.start()
        postgres.ensure_database("ingest")
        postgres.ensure_database("store")
        events = make_events(args.events)
        await publish(broker.bootstrap, events)
        bare_s = await time_bare_consume(broker.bootstrap, args.events, args.batch)
        pool = await open_database(postgres.dsn("ingest"), 10)
        ingest_s, steady_s, first_batch, joined_s = await time_ingestor(
            pool, postgres.dsn("ingest"), broker.bootstrap, args.events, args.batch
        )
        await pool.close()
        pool = await open_database(postgres.dsn("store"), 10)
        store_s = await time_store_only(pool, make_events(args.events), args.batch)
        await pool.close()
    finally:
        broker.stop()
        postgres.stop()
        shutil.rmtree(state, ignore_errors=True)
    n = args.events
    return {
        "benchmark": "nissa_ingest",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "events": n,
        "batch": args.batch,
        "bare_consume_events_per_s": n / bare_s,
        "ingest_events_per_s": n / ingest_s,
        "ingest_steady_events_per_s": (n - first_batch) / steady_s,
        "ingest_after_join_events_per_s": n / joined_s,
        "store_only_events_per_s": n / store_s,
        "ingest_vs_bare_consume_ratio": bare_s / ingest_s,
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "meets_target": n / joined_s >= TARGET_EVENTS_PER_S,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5_000)
    result = asyncio.run(main(parser.parse_args()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
