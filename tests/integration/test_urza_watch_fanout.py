"""WatchCatalog fans out from one reader per Urza process: many watchers share one LISTEN
connection and one tail of the change log, so idle watchers cost the database nothing
and a change is read once however many watch it; every watcher still gets every change
in order, whether another Urza process made it (heard by NOTIFY) or the NOTIFY was lost
(the tail's slow safety poll)."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest

from esper.leyline.v1 import telemetry_pb2 as tm
from esper.urza import db as dbmod
from esper.urza import events as events_mod
from esper.urza.events import NOTIFY_CHANNEL, CatalogFeed, record_event
from tests.fixtures.waiting import until

pytestmark = pytest.mark.integration
WATCHERS = 200
# Idle time over which the old feed (one poll per watcher per second) ran 2 queries per
# watcher; the shared tail runs one query at most (its safety poll, made 3 s here).
IDLE_S = 2.5


class CountingDatabase(dbmod.Database):
    """Urza's database, counting the connections its users take (one per query here)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool, 5.0)
        self.acquired = 0

    @contextlib.asynccontextmanager
    async def acquire(self):
        self.acquired += 1
        async with super().acquire() as conn:
            yield conn


async def _other_process_change(dsn: str, ref: str, *, notify: bool = True) -> None:
    """A change written as another Urza process writes it (this feed is not poked)."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": dbmod.SCHEMA})
    try:
        async with conn.transaction():
            if notify:
                await record_event(conn, tm.CATALOG_CHANGE_BLUEPRINT_CREATED, blueprint_ref=ref)
            else:
                await conn.execute("INSERT INTO catalog_events (change, blueprint_ref) "
                                   "VALUES ('BLUEPRINT_CREATED', $1)", ref)
    finally:
        await conn.close()


async def _listeners(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query = $1", f'LISTEN "{NOTIFY_CHANNEL}"')
    finally:
        await conn.close()


async def test_many_watchers_share_one_listener_and_every_change_reaches_each(
        fresh_database, monkeypatch):
    monkeypatch.setattr(events_mod, "SAFETY_POLL_S", 3.0)
    pool = await dbmod.create_pool(fresh_database, 5.0, 5.0)
    async with pool.acquire() as conn:
        await dbmod.apply_migrations(conn)
    db = CountingDatabase(pool)
    feed = CatalogFeed(db, fresh_database)
    feed.start()
    seen: list[list[str]] = [[] for _ in range(WATCHERS)]
    subscribed = 0

    async def on_subscribed(_: int) -> None:
        nonlocal subscribed
        subscribed += 1

    async def watch(into: list[str]) -> None:
        async for event in feed.watch(0, on_subscribed):
            into.append(event.blueprint_ref)

    tasks = [asyncio.create_task(watch(into)) for into in seen]
    try:
        assert await until(lambda: subscribed == WATCHERS)
        await asyncio.sleep(0.5)  # the tail's first look, the watchers' first wait
        assert await _listeners(fresh_database) == 1

        before = db.acquired
        await asyncio.sleep(IDLE_S)
        # At most the tail's safety poll (every 3 s here); the old feed: ~2 per watcher.
        assert db.acquired - before <= 1, "idle watchers queried the database"

        before = db.acquired
        refs = [f"BP-FAN-{i}@1.0.0" for i in range(3)]
        for ref in refs:
            await _other_process_change(fresh_database, ref)
        assert await until(lambda: all(s == refs for s in seen)), "a watcher missed a change"
        # One tail read (or a few, as the NOTIFYs arrive) per change, not one per watcher.
        assert db.acquired - before <= 2 * len(refs)

        # A change whose NOTIFY never came is found by the tail's safety poll.
        await _other_process_change(fresh_database, "BP-QUIET@1.0.0", notify=False)
        assert await until(lambda: all(s[-1:] == ["BP-QUIET@1.0.0"] for s in seen), 15)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await feed.stop()
        await pool.close()
