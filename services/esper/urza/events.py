"""The catalogue change log: every change is a row of `catalog_events` written in the
same transaction as the change (the record), then published on Oona topic
`esper.catalog.events` (the transport) and announced to WatchCatalog streams.

Revisions are assigned under a transaction-level advisory lock, so they commit in
revision order and a watcher reading `revision > cursor` never skips a late commit.
A broker outage never fails the RPC: the producer buffers, drops and counts.

WatchCatalog fans out from one reader per Urza process: one LISTEN connection hears the
NOTIFY every change sends at commit (from any Urza process sharing the database), one
tail task then reads the new rows once and keeps the latest RECENT_EVENTS in memory, and
every watcher of the process is woken to take them from there. Watchers query the
database only to replay history older than that window. Without a NOTIFY (the listener
reconnecting) the tail still re-reads every SAFETY_POLL_S: a handful of queries a minute
per process, whatever the number of watchers (a poll per watcher per second made 2,000
watchers 3,000 commits/s).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from itertools import takewhile

import asyncpg

from esper.leyline.v1 import telemetry_pb2 as tm
from esper.oona import new_event
from esper.oona.aio import within
from esper.urza import records
from esper.urza.db import CATALOG_EVENT_LOCK_KEY, CONNECTION_ERRORS, Database
from esper.urza.errors import InvalidArgument, Unavailable

log = logging.getLogger(__name__)

# NOTIFY channel that wakes the tail of every Urza process sharing the database.
NOTIFY_CHANNEL = "urza_catalog"
# The tail re-reads the log at least this often, so a lost NOTIFY (listener reconnecting)
# delays a change by at most this much; one query per process, not per watcher.
SAFETY_POLL_S = 10.0
# Latest changes kept in memory for live watchers: a burst of this many changes (a batch
# of registrations) reaches every watcher without a query; a watcher further behind reads
# the database, as a replay does.
RECENT_EVENTS = 1024
# Events read per query while replaying: bounds memory on a long replay.
REPLAY_BATCH = 500
# Backoff of the LISTEN connection after it is lost.
LISTEN_RETRY_S = 1.0
SOURCE = "urza"

Subscribed = Callable[[int], Awaitable[None]]

_INSERT = """
INSERT INTO catalog_events (change, blueprint_ref, kernel_id, blueprint_state, kernel_state, detail)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *
"""


async def record_event(
    conn: asyncpg.Connection,
    change: int,
    *,
    blueprint_ref: str = "",
    kernel_id: str = "",
    blueprint_state: int = 0,
    kernel_state: int = 0,
    detail: str = "",
) -> tm.CatalogEvent:
    """Append a change inside the caller's transaction; NOTIFY is delivered at commit."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", CATALOG_EVENT_LOCK_KEY)
    row = await conn.fetchrow(
        _INSERT,
        records.short_name(records.CATALOG_CHANGE, change),
        blueprint_ref,
        kernel_id,
        records.short_name(records.BLUEPRINT_STATE, blueprint_state) if blueprint_state else "",
        records.short_name(records.KERNEL_STATE, kernel_state) if kernel_state else "",
        detail,
    )
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(row["revision"]))
    return records.catalog_event(row)


class CatalogFeed:
    """Publishes committed changes (Oona + local watchers) and serves WatchCatalog."""

    def __init__(self, db: Database, dsn: str, producer=None, connect_timeout_s: float = 5.0) -> None:
        self.db = db
        self.dsn = dsn
        self.producer = producer
        self.connect_timeout_s = connect_timeout_s
        # Set by a NOTIFY or a local commit: the tail reads the log.
        self._wake = asyncio.Event()
        # Replaced (after being set) whenever the tail read new changes: wakes watchers.
        self._changed = asyncio.Event()
        # The latest changes, in revision order, complete after revision `_window_start`.
        self._recent: deque[tm.CatalogEvent] = deque()
        self._window_start = 0
        # The latest revision the tail has read (None until it first looked).
        self._head: int | None = None
        self._listener: asyncio.Task[None] | None = None
        self._tail: asyncio.Task[None] | None = None

    # -- publishing --------------------------------------------------------------------------
    def published(self, *events: tm.CatalogEvent) -> None:
        """Call after the transaction that recorded `events` committed."""
        for event in events:
            self._send(event)
        self.poke()

    def _send(self, event: tm.CatalogEvent) -> None:
        if self.producer is None:
            return
        try:
            if not self.producer.publish(new_event(source=SOURCE, catalog_event=event)):
                log.warning("catalog event dropped by the Oona producer",
                            extra={"revision": event.revision})
        except Exception:
            log.exception("cannot publish catalog event", extra={"revision": event.revision})

    def poke(self) -> None:
        """The log changed: have the tail read it (and wake this process's watchers)."""
        self._wake.set()

    # -- the one listener and the one tail of this process ------------------------------------
    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="urza-catalog-listen")
        self._tail = asyncio.create_task(self._follow(), name="urza-catalog-tail")

    async def stop(self) -> None:
        for task in (self._listener, self._tail):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass

    async def _listen(self) -> None:
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout_s)
                await conn.add_listener(NOTIFY_CHANNEL, lambda *_: self.poke())
                self.poke()  # changes made while we were not listening
                while not conn.is_closed():
                    await asyncio.sleep(LISTEN_RETRY_S)
            except CONNECTION_ERRORS as exc:
                log.debug("catalog LISTEN connection lost: %s", exc)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(LISTEN_RETRY_S)

    async def _follow(self) -> None:
        """Read what the log gained whenever woken, or every SAFETY_POLL_S."""
        while True:
            self._wake.clear()  # before reading: a commit announced meanwhile wakes us again
            try:
                await self._read_new()
            except (Unavailable, *CONNECTION_ERRORS) as exc:
                log.debug("catalog tail cannot read the log: %s", exc)
            try:
                await within(SAFETY_POLL_S, self._wake.wait())
            except TimeoutError:
                pass

    async def _read_new(self) -> None:
        if self._head is None:
            self._head = self._window_start = await self.latest_revision()
        while True:
            batch = await self._after(self._head)
            for event in batch:
                if len(self._recent) >= RECENT_EVENTS:
                    self._window_start = self._recent.popleft().revision
                self._recent.append(event)
            if batch:
                self._head = batch[-1].revision
                changed, self._changed = self._changed, asyncio.Event()
                changed.set()
            if len(batch) < REPLAY_BATCH:
                return

    def _recent_after(self, cursor: int) -> list[tm.CatalogEvent] | None:
        """The changes after `cursor` the tail has read, from memory; None when `cursor`
        is older than the window, or the tail has not looked yet (read the database)."""
        if self._head is None or cursor < self._window_start:
            return None
        newer = list(takewhile(lambda e: e.revision > cursor, reversed(self._recent)))
        newer.reverse()
        return newer

    # -- WatchCatalog ------------------------------------------------------------------------
    async def latest_revision(self) -> int:
        async with self.db.acquire() as conn:
            return int(await conn.fetchval("SELECT coalesce(max(revision), 0) FROM catalog_events"))

    async def watch(self, after_revision: int, subscribed: Subscribed | None = None
                    ) -> AsyncIterator[tm.CatalogEvent]:
        """Changes after `after_revision` (0: from now on): the log replayed, then live.
        `subscribed(cursor)` is awaited once the starting revision is fixed: every change
        committed after that call is delivered."""
        latest = await self.latest_revision()
        if after_revision > latest:
            raise InvalidArgument("after_revision", f"{after_revision} is beyond the latest "
                                  f"revision {latest}; pass 0 to follow from now on")
        cursor = after_revision or latest
        if subscribed is not None:
            await subscribed(cursor)
        while True:
            changed = self._changed
            batch = self._recent_after(cursor)
            if batch is None:  # behind the window: replay from the database
                batch = await self._after(cursor)
            for event in batch:
                cursor = event.revision
                yield event
            if not batch:
                await changed.wait()

    async def _after(self, cursor: int) -> list[tm.CatalogEvent]:
        async with self.db.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM catalog_events WHERE revision > $1 ORDER BY revision LIMIT $2",
                cursor, REPLAY_BATCH)
        return [records.catalog_event(row) for row in rows]
