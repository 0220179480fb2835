"""Job watchers: wake up when a job has new events, in any process.

Writers send `NOTIFY tezzeret_job_events, '<job id>'` with every event (see jobs.py); one
LISTEN connection per server fans the notifications out to the watchers of that job.
Watchers also re-read on a short timeout, so a lost notification (or a lost LISTEN
connection while PostgreSQL restarts) only delays an update, never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator

import asyncpg

from esper.oona.aio import within
from esper.tezzeret.errors import DB_CONNECTION_ERRORS
from esper.tezzeret.jobs import NOTIFY_CHANNEL, JobEvent, JobStore

log = logging.getLogger(__name__)

# Longest a watcher waits before re-reading on its own (lost notifications, reconnects).
POLL_FALLBACK_S = 1.0
# How often a lost LISTEN connection is re-established.
RELISTEN_INTERVAL_S = 2.0


class JobWatchHub:
    def __init__(self, store: JobStore, dsn: str, connect_timeout_s: float) -> None:
        self.store = store
        self.dsn = dsn
        self.connect_timeout_s = connect_timeout_s
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="tezzeret-job-listen")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _notify(self, _conn, _pid, _channel, job_id: str) -> None:
        for event in self._waiters.get(job_id, ()):
            event.set()

    async def _listen_forever(self) -> None:
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout_s)
                await conn.add_listener(NOTIFY_CHANNEL, self._notify)
                while not conn.is_closed():
                    await asyncio.sleep(RELISTEN_INTERVAL_S)
            except DB_CONNECTION_ERRORS as exc:
                log.debug("tezzeret: job LISTEN connection lost: %s", exc)
            finally:
                if conn is not None:
                    with contextlib.suppress(*DB_CONNECTION_ERRORS):
                        await conn.close(timeout=1)
            await asyncio.sleep(RELISTEN_INTERVAL_S)

    async def events(self, job_id: str) -> AsyncIterator[JobEvent]:
        """Every event of the job, from its first, until the job ends (then stops)."""
        wake = asyncio.Event()
        self._waiters[job_id].add(wake)
        last = 0
        try:
            while True:
                wake.clear()
                for event in await self.store.events_after(job_id, last):
                    last = event.event_id
                    yield event
                    if event.stage in ("REGISTERED", "FAILED", "CANCELLED"):
                        return
                with contextlib.suppress(TimeoutError):
                    await within(POLL_FALLBACK_S, wake.wait())
        finally:
            self._waiters[job_id].discard(wake)
            if not self._waiters[job_id]:
                del self._waiters[job_id]
