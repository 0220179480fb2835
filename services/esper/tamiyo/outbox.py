"""The responses of one Session stream waiting to be sent, bounded.

gRPC sends a stream's responses only as fast as the client reads them. A client that stops
reading first slows the stream's producers (the reader of its own messages waits, so its
sends are held back by flow control), and when nothing has been taken for `stall_s` the
stream is cut with RESOURCE_EXHAUSTED: at most `maxsize` responses are ever held per stream.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from prometheus_client import REGISTRY, Counter

log = logging.getLogger("esper.tamiyo.outbox")

STALLED = Counter("esper_tamiyo_sessions_cut_total", "Session streams cut because the client read no responses",
                  registry=REGISTRY)


class Outbox:
    def __init__(self, context: grpc.aio.ServicerContext, maxsize: int, stall_s: float) -> None:
        self.context, self.maxsize, self.stall_s = context, maxsize, stall_s
        self._queue: asyncio.Queue = asyncio.Queue(maxsize)
        self._cut = False

    async def put(self, item: object) -> None:
        """Queue `item`; waits while the queue is full, and cuts the stream past `stall_s`
        (the abort raises in the caller, a producer task of the stream)."""
        try:
            self._queue.put_nowait(item)  # the usual case, with no timer (wait_for made a task)
            return
        except asyncio.QueueFull:
            pass
        try:
            async with asyncio.timeout(self.stall_s):
                await self._queue.put(item)
        except TimeoutError:
            await self._abort()

    async def get(self) -> object:
        return await self._queue.get()

    async def _abort(self) -> None:
        if self._cut:  # another producer cut it already; stop this one too
            raise asyncio.CancelledError
        self._cut = True
        STALLED.inc()
        log.warning("session cut: the client reads no responses", extra={"peer": self.context.peer(),
                                                                          "queued": self._queue.qsize()})
        await self.context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"session: the client read no response for {self.stall_s:g} s with {self.maxsize} queued; "
            "the stream is closed (read the stream's responses)")
