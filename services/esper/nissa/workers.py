"""The Nissa server's ingest workers: `ingest_workers` processes (esper.nissa.worker),
each a member of the ingest consumer group, started with the server, restarted when one
dies, stopped with it. Their batch reports are applied here (`on_report`: the server's
Fanout), so the live tail, the run gauges, alerts on Kafka and ingest spans work as with
the in-process ingest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable

from prometheus_client import REGISTRY, Counter, Gauge

from esper.nissa.config import NissaConfig
from esper.nissa.health import IngestHealth
from esper.nissa.ingest import log_task_failure
from esper.nissa.report import (
    KIND_ASSIGNED,
    KIND_BATCH,
    KIND_CONSUMER,
    KIND_ERROR,
    KIND_READY,
    BatchReport,
    FrameError,
    consumer_report_of,
    decode_frame,
    frame_length,
    report_of,
)
from esper.nissa.worker import GO, config_line
from esper.oona.aio import cancel_and_join
from esper.oona.consumer import record_forwarded
from esper.oona.deadletter import record_sent
from esper.runtime.infra.process import with_death_signal

log = logging.getLogger(__name__)

# A worker imports its libraries, connects to PostgreSQL and Kafka: slow on a loaded box.
START_TIMEOUT_S = 60.0
# SIGTERM lets a worker leave the group (its partitions move at once); then SIGKILL.
STOP_TIMEOUT_S = 10.0
# Restart backoff after a worker died; reset once a worker has run this long.
RESTART_MIN_S, RESTART_MAX_S, STABLE_S = 0.5, 30.0, 60.0

RESTARTS = Counter(
    "esper_nissa_ingest_worker_restarts_total",
    "Ingest worker processes restarted after they died",
    registry=REGISTRY,
)
PARTITIONS = Gauge(
    "esper_nissa_ingest_worker_partitions",
    "Partitions each ingest worker owns since the last rebalance",
    ["worker"],
    registry=REGISTRY,
)


class WorkerStartError(RuntimeError):
    """A worker could not start; the message names the setting at fault."""


class IngestWorkers:
    """Starts, supervises and stops the ingest worker processes."""

    def __init__(self, config: NissaConfig, count: int,
                 on_report: Callable[[BatchReport], None],
                 health: IngestHealth | None = None) -> None:
        self.config = config
        self.count = count
        self.on_report = on_report
        # Whether the workers make progress (stalled batches, crash loops).
        self.health = health or IngestHealth()
        # Partitions per worker index, from their latest "assigned" frames.
        self.partitions: dict[int, int] = {}
        # New events each worker index has stored (a run's events go to one partition, so
        # few runs may keep one worker busier than the others).
        self.ingested: dict[int, int] = {}
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        """Start every worker and wait until each is ingesting; WorkerStartError (with
        the first worker's reason) when one cannot start, leaving none running."""
        try:
            readies = await asyncio.gather(*(self._spawn(i) for i in range(self.count)))
            # All join the group together: the first assignment then spreads the partitions,
            # rather than the first to join taking a backlog the others' joins rebalance.
            for proc in readies:
                await _go(proc)
        except BaseException:
            await self._kill_all()
            raise
        for index, proc in enumerate(readies):
            task = asyncio.create_task(self._supervise(index, proc), name=f"nissa-worker-{index}")
            task.add_done_callback(log_task_failure)
            self._tasks.append(task)

    async def stop(self) -> None:
        self._stopping = True
        for proc in self._procs.values():
            _signal(proc, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(p.wait() for p in self._procs.values())), STOP_TIMEOUT_S)
        await self._kill_all()
        for task in self._tasks:
            await cancel_and_join(task, log)
        self._tasks.clear()

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        """A started worker that has sent "ready"."""
        argv = with_death_signal([sys.executable, "-m", "esper.nissa.worker"], signal.SIGTERM)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        self._procs[index] = proc
        assert proc.stdin is not None
        proc.stdin.write(config_line(self.config, index))
        await proc.stdin.drain()
        try:
            header, _ = await asyncio.wait_for(_read_frame(proc), START_TIMEOUT_S)
        except (TimeoutError, EOFError, FrameError) as exc:
            _signal(proc, signal.SIGKILL)
            raise WorkerStartError(
                f"ingest_workers: worker {index} did not start ({exc or type(exc).__name__}; "
                f"exit code {await proc.wait()})") from None
        if header["kind"] != KIND_READY:
            _signal(proc, signal.SIGKILL)
            await proc.wait()
            if header["kind"] == KIND_ERROR:
                raise WorkerStartError(str(header.get("message", "unknown error")))
            raise WorkerStartError(f"ingest_workers: worker {index} sent {header['kind']!r} "
                                   "before ready")
        return proc

    async def _supervise(self, index: int, proc: asyncio.subprocess.Process) -> None:
        """Apply the worker's frames until it exits; restart it unless we are stopping."""
        backoff = RESTART_MIN_S
        while True:
            started = time.monotonic()
            await self._pump(index, proc)
            code = await proc.wait()
            PARTITIONS.labels(str(index)).set(0)
            self.partitions.pop(index, None)
            if self._stopping:
                return
            self.health.died(index)
            if time.monotonic() - started > STABLE_S:
                backoff = RESTART_MIN_S
            log.error("nissa ingest worker %d (pid %d) exited with code %s; restarting in "
                      "%.1f s", index, proc.pid, code, backoff)
            RESTARTS.inc()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_MAX_S)
            try:
                proc = await self._spawn(index)
                await _go(proc)
            except (WorkerStartError, ConnectionError) as exc:
                log.error("nissa ingest worker %d: %s", index, exc)
                proc = self._procs[index]

    async def _pump(self, index: int, proc: asyncio.subprocess.Process) -> None:
        """Read frames until the worker's pipe closes; a garbled pipe ends the worker."""
        while True:
            try:
                header, blobs = await _read_frame(proc)
                if header["kind"] == KIND_BATCH:
                    self._apply(index, report_of(header, blobs))
                elif header["kind"] == KIND_CONSUMER:
                    stats = consumer_report_of(header)
                    record_forwarded(self.config.consumer_group, stats.consumed,
                                     stats.decode_errors, stats.lag)
                    record_sent(stats.dead_letters)
                    self.health.stalled(index, stats.stalled_s)
                elif header["kind"] == KIND_ASSIGNED:
                    self.partitions[index] = int(header.get("partitions", 0))
                    PARTITIONS.labels(str(index)).set(self.partitions[index])
            except EOFError:
                return
            except (ValueError, TypeError) as exc:  # FrameError, or a field of a wrong type
                log.error("nissa ingest worker %d sent a bad frame (%s): stopping it",
                          index, exc)
                _signal(proc, signal.SIGKILL)
                return

    def _apply(self, index: int, report: BatchReport) -> None:
        """Apply a report; a failure here (a bug) is logged, never ends the supervision:
        the batch is stored either way, only its gauges or live-tail delivery are lost."""
        self.ingested[index] = self.ingested.get(index, 0) + len(report.bodies)
        self.health.stored(index)
        try:
            self.on_report(report)
        except Exception:
            log.exception("nissa ingest worker %d: applying a batch report failed", index)

    async def _kill_all(self) -> None:
        for proc in self._procs.values():
            _signal(proc, signal.SIGKILL)
        for proc in self._procs.values():
            await proc.wait()


async def _go(proc: asyncio.subprocess.Process) -> None:
    """Let a ready worker join the group (and close its stdin: nothing more is said)."""
    assert proc.stdin is not None
    proc.stdin.write(GO + b"\n")
    await proc.stdin.drain()
    proc.stdin.close()


async def _read_frame(proc: asyncio.subprocess.Process):
    """The next (header, blobs) from a worker's stdout; EOFError when it closed."""
    assert proc.stdout is not None
    try:
        prefix = await proc.stdout.readexactly(4)
        payload = await proc.stdout.readexactly(frame_length(prefix))
    except asyncio.IncompleteReadError:
        raise EOFError("the worker closed its report pipe") from None
    return decode_frame(payload)


def _signal(proc: asyncio.subprocess.Process, signum: int) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
