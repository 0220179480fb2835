"""An ingest worker: one member of Nissa's consumer group in its own process.

One Python process decodes, translates and stores about 30-40k events/s; Nissa starts
`ingest_workers` of these so ingest uses more than one core (Kafka spreads the partitions
over the group). The Nissa server starts it as `python -m esper.nissa.worker`, writes one
JSON line on its stdin ({"config": NissaConfig fields, "worker": index}) and reads frames
(`esper.nissa.report`) from its stdout: "ready" or "error" once at start, "assigned" after
every rebalance, and a "batch" report per stored batch. A ready worker joins the consumer
group when the server writes "go" on its stdin: the server does so once every worker is
ready, so they share the partitions from the first assignment. Logs go to stderr. SIGTERM stops it
cleanly (it leaves the group, so its partitions move at once); it also gets SIGTERM when
the server dies (the server wraps it in setpriv --pdeathsig)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import signal
import sys
from collections import Counter
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError

from esper.nissa.alerts import AlertRules
from esper.nissa.config import NissaConfig
from esper.nissa.db import open_database
from esper.nissa.ingest import DB_ERRORS, Ingestor
from esper.nissa.report import (
    KIND_ASSIGNED,
    KIND_ERROR,
    KIND_READY,
    BatchReport,
    ConsumerReport,
    encode_consumer_report,
    encode_frame,
    encode_report,
)
from esper.oona.aio import cancel_and_join
from esper.oona.consumer import Assignment
from esper.runtime.config import ConfigError
from esper.runtime.logs import configure_logging

log = logging.getLogger("esper.nissa.worker")

# Exit codes: 0 stopped by SIGTERM; 2 could not start (the error frame says why); 1 the
# ingest failed while running (the server restarts the worker).
EXIT_STOPPED, EXIT_FAILED, EXIT_STARTUP = 0, 1, 2
# A batch of 5,000 events allocates ~100k tracked objects; with the default gen-0
# threshold (700) the cyclic collector runs ~150 times per batch and costs ~10% of ingest.
# Nothing here builds reference cycles in bulk, so collect far less often.
GC_THRESHOLDS = (50_000, 20, 100)
# The line on stdin that lets a ready worker join the group.
GO = b"go"
# Seconds between the consumer metrics (lag, decoded, refused) a worker forwards.
CONSUMER_REPORT_S = 1.0


def config_line(config: NissaConfig, worker: int) -> bytes:
    """The JSON line the server writes on a worker's stdin."""
    return json.dumps({"config": dataclasses.asdict(config), "worker": worker}).encode() + b"\n"


def parse_setup(line: bytes) -> tuple[NissaConfig, int]:
    """The config and worker index of a setup line; ConfigError when it is not one."""
    try:
        setup = json.loads(line)
        # JSON has no tuples: the config's tuple settings (the auth grants) come back as
        # lists. No setting is a list, so every list is one of those.
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in setup["config"].items()}
        config = NissaConfig(**fields)
        worker = int(setup["worker"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"worker setup: not a setup line: {exc}") from None
    config.validate()
    return config, worker


class ReportPipe:
    """Frames to the server over the worker's report pipe, with flow control: a server
    that reads slowly slows the ingest instead of growing this process's memory."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    @classmethod
    async def open(cls, fd: int) -> ReportPipe:
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(fd, "wb", buffering=0)
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, pipe
        )
        return cls(asyncio.StreamWriter(transport, protocol, None, loop))

    def send(self, kind: str, header: dict[str, Any] | None = None) -> None:
        self._writer.write(encode_frame(kind, header))

    async def report(self, report: BatchReport) -> None:
        self._writer.write(encode_report(report))
        await self._writer.drain()

    def consumer(self, report: ConsumerReport) -> None:
        self._writer.write(encode_consumer_report(report))

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            await self._writer.drain()
            self._writer.close()


async def run(config: NissaConfig, worker: int, pipe: ReportPipe) -> int:
    """Ingest until SIGTERM; returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        pool = await open_database(config.postgres_dsn, config.postgres_connect_timeout)
    except (*DB_ERRORS, asyncpg.PostgresError) as exc:
        pipe.send(KIND_ERROR, {"message": f"postgres_dsn: cannot open the history database: {exc}"})
        return EXIT_STARTUP
    try:
        return await _ingest(config, worker, pool, pipe, stop)
    finally:
        await pool.close()


async def _ingest(config: NissaConfig, worker: int, pool: asyncpg.Pool, pipe: ReportPipe,
                  stop: asyncio.Event) -> int:
    def assigned(partitions: Assignment) -> None:
        log.info("nissa ingest worker %d owns %d partitions", worker, len(partitions))
        pipe.send(KIND_ASSIGNED, {"partitions": len(partitions)})

    ingestor = Ingestor(
        pool,
        config.kafka_bootstrap,
        group_id=config.consumer_group,
        rules=AlertRules(config.thresholds()),
        on_report=pipe.report,
        batch_max=config.ingest_batch_max,
        keep_events=False,
        on_assign=assigned,
    )
    try:
        await ingestor.start(join=False)
    except (KafkaError, OSError, TimeoutError) as exc:
        pipe.send(KIND_ERROR, {"message": f"kafka_bootstrap: cannot start the ingest: {exc}"})
        return EXIT_STARTUP
    pipe.send(KIND_READY, {"pid": os.getpid()})
    gc.freeze()  # what start-up built lives as long as the process: never scan it again
    stopped = asyncio.create_task(stop.wait())
    if not await _go_or_stop(stopped):
        stopped.cancel()
        await ingestor.stop()
        return EXIT_STOPPED
    ingestor.join()
    forwarding = asyncio.create_task(_forward_consumer_metrics(ingestor, pipe))
    try:
        await asyncio.wait({stopped, ingestor.task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        await cancel_and_join(forwarding, log)
        failed = ingestor.task.done() and not stop.is_set()
        await ingestor.stop()
    return EXIT_FAILED if failed else EXIT_STOPPED


async def _go_or_stop(stopped: asyncio.Task) -> bool:
    """Wait for the server's "go" line on stdin (sent once every worker is ready, so all
    join the group together); False when stopped first or the server went away."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    line = asyncio.ensure_future(reader.readline())
    try:
        done, _ = await asyncio.wait({stopped, line}, return_when=asyncio.FIRST_COMPLETED)
        return line in done and line.result().strip() == GO
    finally:
        line.cancel()
        transport.close()


async def _forward_consumer_metrics(ingestor: Ingestor, pipe: ReportPipe) -> None:
    """Every CONSUMER_REPORT_S, what the consumer decoded and refused since the last
    report, its lag per partition and how long the held batch has been failing: the
    server exports them on its /metrics (and judges whether the ingest is stuck)."""
    consumer = ingestor.consumer
    consumed: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    dead: Counter[tuple[str, str]] = Counter()
    while True:
        await asyncio.sleep(CONSUMER_REPORT_S)
        now_consumed = consumer.consumed_by_topic.copy()
        now_refused = consumer.decode_errors_by_topic.copy()
        now_dead = ingestor.dead_letters.sent.copy()
        pipe.consumer(ConsumerReport(
            consumed=dict(now_consumed - consumed),
            decode_errors=dict(now_refused - refused),
            lag=[(topic, partition, lag) for (topic, partition), lag in consumer.lag.items()],
            stalled_s=ingestor.stalled_s(),
            dead_letters=[(topic, code, n) for (topic, code), n in (now_dead - dead).items()],
        ))
        consumed, refused, dead = now_consumed, now_refused, now_dead


def main() -> int:
    # Frames go to the original stdout; anything else printed lands on stderr with the logs.
    report_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        config, worker = parse_setup(sys.stdin.buffer.readline())
    except ConfigError as exc:
        print(f"esper nissa worker: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    configure_logging(config.log_format, config.log_level)
    gc.set_threshold(*GC_THRESHOLDS)

    async def serve() -> int:
        pipe = await ReportPipe.open(report_fd)
        try:
            return await run(config, worker, pipe)
        finally:
            await pipe.close()

    return asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())
