"""Nissa ingest throughput (target: >= 50,000 events/s on this machine).

Starts PostgreSQL and the tansu broker on loopback, publishes N training-like events of
several runs (snapshots with a few layers, one in ten an epoch end, plus seed transitions,
decisions and acks) to Oona, then times Nissa's real ingest (consumer group, decode,
batched COPY into PostgreSQL, offset commit, batch reports to the server) until every
event is stored, in three set-ups, each on a fresh database and consumer group:

- in-process: the ingest inside the server process (ingest_workers = 0), timed from the
  moment the group assigned the partitions;
- 1 and 2 worker processes (ingest_workers = 1, 2; 2 is Nissa's default), timed from the
  moment every worker owns partitions (events a worker stored before the last one joined
  are not counted). The report gives each worker's share of the timed window: when the
  first worker to join had already taken most of the other's partitions' backlog (a late
  join), the window is mostly one worker finishing alone, and the figure drops to about
  one worker's rate; `workers_2_settled` says whether the split was even enough (the
  smaller share >= 30%) for the figure to be a two-worker rate.

Baselines of the same run: a bare consume-and-decode of the same topics in one process
(what one process can take from the broker) and the database path alone (ingest_batch on
pre-decoded batches). The claim is the default set-up's events/s; the ratios say what a
second worker adds and how much of the bare consumer rate the full ingest keeps.

    .venv/bin/python benchmarks/bench_nissa_ingest.py [--events 200000] [--batch 5000]

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

from esper.cli.numbers import positive_int
from esper.leyline.v1 import control_pb2, lifecycle_pb2, signals_pb2, telemetry_pb2
from esper.nissa.alerts import AlertRules
from esper.nissa.config import NissaConfig
from esper.nissa.db import open_database
from esper.nissa.fanout import Fanout
from esper.nissa.ingest import Ingestor
from esper.nissa.store import ingest_batch
from esper.nissa.workers import IngestWorkers
from esper.oona import OonaConsumer, OonaProducer, new_event
from esper.oona.topics import TOPIC_NAMES
from esper.runtime.infra import Broker, PostgresServer, free_port

RESULTS = Path(__file__).parent / "results" / "bench_nissa_ingest.json"
TARGET_EVENTS_PER_S = 50_000
# Concurrent runs in the events. A run's events share a partition (its key), so they go
# to one worker: one run alone is ingested at one worker's rate, and with few runs the
# split between workers is hashing luck (8 runs over 2 workers: a 6:2 split or worse 29% of
# the time). 128 runs split close to evenly; the report gives each worker's share.
RUNS = 128


def make_events(count: int, runs_count: int = RUNS) -> list[telemetry_pb2.TelemetryEvent]:
    runs = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(runs_count)]
    events = []
    for i in range(count):
        run, step = runs[i % runs_count], i // runs_count
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


async def time_ingestor(pool, dsn: str, bootstrap: str, total: int, batch: int) -> float:
    """Seconds the in-process ingest takes from the moment the group assigned it the
    partitions until every event is stored and reported."""
    fanout = Fanout()

    async def report(batch_report) -> None:
        fanout.apply(batch_report)

    ingestor = Ingestor(
        pool,
        bootstrap,
        group_id=f"nissa-{uuid.uuid4().hex[:6]}",
        rules=AlertRules(),
        batch_max=batch,
        on_report=report,
    )
    await ingestor.start()
    while not ingestor.consumer._consumer.assignment():  # the group join (~1 s on tansu)
        await asyncio.sleep(0.001)
    joined = time.perf_counter()
    while fanout.ingested < total:
        await asyncio.sleep(0.005)
    end = time.perf_counter()
    await ingestor.stop()
    assert await count_events(dsn) >= total
    return end - joined


async def time_workers(dsn: str, bootstrap: str, total: int, batch: int,
                       workers: int) -> tuple[float, list[float]]:
    """Events/s of `workers` ingest worker processes, once every worker owns partitions,
    and each worker's share of the events stored in that window."""
    config = NissaConfig(port=0, metrics_port=-1, postgres_dsn=dsn, kafka_bootstrap=bootstrap,
                         consumer_group=f"nissa-{uuid.uuid4().hex[:6]}",
                         ingest_batch_max=batch, ingest_workers=workers)
    config.validate()
    fanout = Fanout()
    group = IngestWorkers(config, workers, fanout.apply)
    await group.start()
    try:
        while len([n for n in group.partitions.values() if n]) < workers:
            await asyncio.sleep(0.001)
        start, before = time.perf_counter(), fanout.ingested
        each_before = dict(group.ingested)
        while fanout.ingested < total:
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - start
        window = [group.ingested.get(i, 0) - each_before.get(i, 0) for i in range(workers)]
    finally:
        await group.stop()
    assert await count_events(dsn) >= total
    return (total - before) / elapsed, [n / max(1, sum(window)) for n in window]


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
        for name in ("inprocess", "workers1", "workers2", "store"):
            postgres.ensure_database(name)
        events = make_events(args.events, args.runs)
        await publish(broker.bootstrap, events)
        bare_s = await time_bare_consume(broker.bootstrap, args.events, args.batch)
        pool = await open_database(postgres.dsn("inprocess"), 10)
        inprocess_s = await time_ingestor(
            pool, postgres.dsn("inprocess"), broker.bootstrap, args.events, args.batch
        )
        await pool.close()
        one, _ = await time_workers(postgres.dsn("workers1"), broker.bootstrap, args.events,
                                    args.batch, 1)
        two, shares = await time_workers(postgres.dsn("workers2"), broker.bootstrap,
                                         args.events, args.batch, 2)
        pool = await open_database(postgres.dsn("store"), 10)
        store_s = await time_store_only(pool, make_events(args.events), args.batch)
        await pool.close()
    finally:
        broker.stop()
        postgres.stop()
        shutil.rmtree(state, ignore_errors=True)
    n = args.events
    bare = n / bare_s
    return {
        "benchmark": "nissa_ingest",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "events": n,
        "batch": args.batch,
        "bare_consume_events_per_s": bare,
        "store_only_events_per_s": n / store_s,
        "inprocess_events_per_s": n / inprocess_s,
        "workers_1_events_per_s": one,
        "workers_2_events_per_s": two,
        "workers_2_shares": shares,
        "workers_2_settled": min(shares) >= 0.3,
        "runs": args.runs,
        "ingest_events_per_s": two,
        "workers_2_vs_inprocess_ratio": two / (n / inprocess_s),
        "workers_2_vs_1_ratio": two / one,
        "ingest_vs_bare_consume_ratio": two / bare,
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "meets_target": two >= TARGET_EVENTS_PER_S,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=positive_int, default=200_000)
    parser.add_argument("--batch", type=positive_int, default=5_000)
    parser.add_argument("--runs", type=positive_int, default=RUNS)
    result = asyncio.run(main(parser.parse_args()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
