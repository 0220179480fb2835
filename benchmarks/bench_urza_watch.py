"""What WatchCatalog watchers cost PostgreSQL (claim: idle watchers cost nothing; a change
is read once per Urza process however many watch it).

Starts PostgreSQL on loopback and one Urza CatalogFeed (the WatchCatalog machinery: one
LISTEN connection and one tail per process) over Urza's schema, then measures the
database's committed transactions per second (pg_stat_database.xact_commit of Urza's
database, over a window) in three phases of the same run:

- baseline: the feed running, no watcher;
- idle: N watchers following the feed, nothing changing;
- changing: N watchers, one catalogue change per second written as another Urza process
  writes it (its NOTIFY wakes this process's tail); each change must reach all N.

The ratio idle/baseline and the commits per change are the claim (the feed before this
change polled the log once a second per watcher: 2,000 watchers took PostgreSQL from 112
to 3,102 commits/s, issue 14; the same benchmark with that feed measured 2,746 commits/s
idle and a change took 1.1 s to reach every watcher). It also reports how long a change
took to reach the last of the N watchers (median over the changes).

    .venv/bin/python benchmarks/bench_urza_watch.py [--watchers 2000] [--window 12]

Writes benchmarks/results/bench_urza_watch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from esper.cli.numbers import positive_float, positive_int
from esper.leyline.v1 import telemetry_pb2 as tm
from esper.runtime.infra import PostgresServer, free_port
from esper.urza import db as dbmod
from esper.urza.events import CatalogFeed, record_event

RESULTS = Path(__file__).parent / "results" / "bench_urza_watch.json"
DATABASE = "watch"
# PostgreSQL flushes a backend's statistics at most once a second, and an idle backend's
# pending ones after 10 s: each window starts after that long (so it does not count the
# queries of the phase before, e.g. the watchers' opening reads) and is long enough that
# the flush delay is a small part of it.
STATS_SETTLE_S = 11.0
DEFAULT_WINDOW_S = 12.0
DEFAULT_WATCHERS = 2_000


async def commits(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        return int(await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", DATABASE))
    finally:
        await conn.close()


async def rate(dsn: str, window_s: float, during=None) -> float:
    """Commits/s of Urza's database over `window_s` (running `during` meanwhile)."""
    await asyncio.sleep(STATS_SETTLE_S)
    before = await commits(dsn)
    started = time.monotonic()
    if during is None:
        await asyncio.sleep(window_s)
    else:
        await during(window_s)
    # Let every backend's pending statistics reach the counters before reading them.
    await asyncio.sleep(1.5)
    return (await commits(dsn) - before) / (time.monotonic() - started - 1.5)


async def change(dsn: str, ref: str) -> None:
    """One change, written as another Urza process writes it."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": dbmod.SCHEMA})
    try:
        async with conn.transaction():
            await record_event(conn, tm.CATALOG_CHANGE_BLUEPRINT_CREATED, blueprint_ref=ref)
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> dict:
    state = Path(tempfile.mkdtemp(prefix="esper-bench-watch-"))
    os.chmod(state, 0o755)
    postgres = PostgresServer(state, free_port(), durable=False)
    postgres.start()
    try:
        postgres.ensure_database(DATABASE)
        dsn = postgres.dsn(DATABASE)
        pool = await dbmod.create_pool(dsn, 10.0, 10.0)
        async with pool.acquire() as conn:
            await dbmod.apply_migrations(conn)
        feed = CatalogFeed(dbmod.Database(pool, 10.0), dsn)
        feed.start()
        await asyncio.sleep(1.0)
        baseline = await rate(dsn, args.window)

        last_seen = [""] * args.watchers
        subscribed = 0

        async def on_subscribed(_: int) -> None:
            nonlocal subscribed
            subscribed += 1

        async def watch(i: int) -> None:
            async for event in feed.watch(0, on_subscribed):
                last_seen[i] = event.blueprint_ref

        tasks = [asyncio.create_task(watch(i)) for i in range(args.watchers)]
        while subscribed < args.watchers:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        idle = await rate(dsn, args.window)

        reach_s: list[float] = []

        async def changing(window_s: float) -> None:
            deadline = time.monotonic() + window_s
            n = 0
            while time.monotonic() < deadline:
                ref = f"BP-BENCH-{n}@1.0.0"
                started = time.monotonic()
                await change(dsn, ref)
                while any(seen != ref for seen in last_seen):
                    await asyncio.sleep(0.005)
                reach_s.append(time.monotonic() - started)
                n += 1
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))

        busy = await rate(dsn, args.window, changing)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await feed.stop()
        await pool.close()
    finally:
        postgres.stop()
    return {
        "benchmark": "bench_urza_watch",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "watchers": args.watchers,
        "window_s": args.window,
        "commits_per_s": {"baseline_no_watchers": round(baseline, 1),
                          "idle_watchers": round(idle, 1),
                          "watchers_one_change_per_s": round(busy, 1)},
        "ratio_idle_to_baseline": round(idle / baseline, 2) if baseline else None,
        # Each change: the writer's own transaction, the tail's read of it, and the
        # measurement's queries; none of it grows with the watchers.
        "commits_per_change_above_baseline": round(
            (busy - baseline) * args.window / max(1, len(reach_s)), 2),
        "changes": len(reach_s),
        "change_reaches_all_watchers_s_median": round(statistics.median(reach_s), 4),
        "change_reaches_all_watchers_s_max": round(max(reach_s), 4),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", type=positive_int, default=DEFAULT_WATCHERS)
    parser.add_argument("--window", type=positive_float, default=DEFAULT_WINDOW_S)
    result = asyncio.run(main(parser.parse_args()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
