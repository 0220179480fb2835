"""An asyncio event loop on a daemon thread of its own, for blocking callers of the async
clients. gRPC's asyncio channels belong to the loop they were made on, and a loop closed
while gRPC still delivers events to it fails loudly ("Event loop is closed"), so blocking
callers that call repeatedly keep one loop alive rather than `asyncio.run` per call."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
# How long close() waits for the loop's pending work to finish.
CLOSE_TIMEOUT_S = 5.0
# How long close() keeps the loop running after its cleanup: a closed channel's last
# events (its calls' and connectivity watches' completions) still come from gRPC's poller
# thread, and one delivered to a closed loop is logged as "Event loop is closed" by
# whichever loop runs the poller's callback, possibly another part of the program's.
DRAIN_S = 0.1


class LoopThread:
    """Runs coroutines on one long-lived loop; `run` blocks the caller until done."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """The coroutine's result (its exception re-raised); TimeoutError after
        `timeout_s`, with the coroutine cancelled."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def close(self, cleanup: Coroutine[Any, Any, Any] | None = None) -> None:
        """Run `cleanup` (e.g. closing a client) on the loop, then stop and close it."""
        if self._loop.is_closed():
            if cleanup is not None:
                cleanup.close()
            return
        if cleanup is not None:
            try:
                self.run(cleanup, CLOSE_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
            self.run(asyncio.sleep(DRAIN_S), CLOSE_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CLOSE_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()
