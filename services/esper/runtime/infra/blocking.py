"""Run a coroutine to completion from synchronous code, whatever loop the caller runs.

The launchers are synchronous (the CLI and session fixtures call them), but their readiness
probes use the project's async clients (asyncpg, aiokafka). `asyncio.run` fails inside a
running loop, so each call gets a fresh loop on a short-lived worker thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(make_coro: Callable[[], Coroutine[Any, Any, T]], timeout_s: float) -> T:
    """Run `make_coro()` on a new event loop in a worker thread; wait at most `timeout_s`."""

    async def bounded() -> T:
        return await asyncio.wait_for(make_coro(), timeout_s)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, bounded()).result()
