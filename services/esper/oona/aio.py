"""asyncio helpers that stay correct under cancellation, for Oona's and Nissa's
background tasks.

`within(seconds, awaitable)` replaces `asyncio.wait_for`: Python 3.11's `wait_for`
swallows a cancellation that arrives in the loop iteration in which the awaited
operation completes (it returns the result instead of raising CancelledError, CPython
gh-86296). A background loop that waits with it — the producer's sender idling on its
wake-up event — then never sees the one `cancel()` its `stop()` sends, runs on, and
`stop()` awaits it forever. `asyncio.timeout` counts cancellations and always delivers
an outside one.

`cancel_and_join(task)` is the other half of every `stop()`: cancel a background task
and wait for it, whether it ends cancelled, ended earlier with an error (logged, so the
caller still closes what the task used), or is already done."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(timeout_s: float, awaitable: Awaitable[T]) -> T:
    """`await awaitable`, raising TimeoutError after `timeout_s` seconds."""
    async with asyncio.timeout(timeout_s):
        return await awaitable


async def cancel_and_join(task: asyncio.Task | None, log: logging.Logger) -> None:
    """Cancel `task` and wait until it has ended. A CancelledError of the caller's own
    (its `stop()` was cancelled) propagates; the task's own end never raises here."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:
        log.exception("background task %s had failed", task.get_name())
