"""The learned policy's decisions, batched across sessions and run off the event loop.

A decision request waits at most `window_s` for others (from any session) to join it; then
they run as one `GnnPolicy.decide_batch` (one forward over all their graphs) on a pool of
`workers` threads. Requests that arrive while every worker is busy wait for the first one
free and go together, so under load the batches grow by themselves. A request waits for
company only when the last batch had some: a lone session's decisions start at once (the
event loop's timers are no finer than a millisecond, so even a short window cost it ~1 ms
per decision, measured). A run whose previous decision request was also its own (one
session alone on this server) decides on the event loop itself while no batch runs: two
thread hand-offs cost more than they free on a loop with nothing else to do, and on a loaded
machine each could wait for a time slice (the lone session's p99). With `window_s` 0 each
decision runs alone in the pool, as it arrives (batching off).

A batch decides exactly as its decisions would one after another in arrival order
(GnnPolicy.decide_batch), so batching changes when a decision is made, never what it is.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from esper.leyline.v1.control_pb2 import AdaptationDecision
from esper.policy import PolicyContext

# Largest batch: bounds one forward's memory and the wait of the batch's first decision.
MAX_BATCH = 64


class BatchPolicy(Protocol):
    def decide(self, ctx: PolicyContext) -> AdaptationDecision: ...

    def decide_batch(self, contexts: list[PolicyContext]) -> list[AdaptationDecision]: ...


class DecisionBatcher:
    def __init__(self, window_s: float, workers: int, max_batch: int = MAX_BATCH) -> None:
        if window_s < 0 or workers < 1 or max_batch < 1:
            raise ValueError("DecisionBatcher: window_s >= 0, workers >= 1, max_batch >= 1")
        self.window_s, self.workers, self.max_batch = window_s, workers, max_batch
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tamiyo-gnn")
        self._waiting: list[tuple[BatchPolicy, PolicyContext, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._busy = 0
        self._last_batch = 1
        self._last_caller: object = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def decide(self, policy: BatchPolicy, ctx: PolicyContext, caller: object = None) -> AdaptationDecision:
        """`caller` (a run id) tells a lone session's decisions apart: see the module's docstring."""
        loop = asyncio.get_running_loop()
        if self.window_s == 0:
            return await loop.run_in_executor(self._pool, policy.decide, ctx)
        alone, self._last_caller = caller is not None and caller == self._last_caller, caller
        if alone and self._busy == 0 and not self._waiting:
            self._last_batch = 1
            return policy.decide_batch([ctx])[0]
        future = loop.create_future()
        self._waiting.append((policy, ctx, future))
        if len(self._waiting) >= self.max_batch or (self._last_batch == 1 and self._busy == 0):
            self._start(loop)
        elif self._timer is None and self._busy < self.workers:
            self._timer = loop.call_later(self.window_s, self._start, loop)
        # else: a worker finishing starts the waiting ones (see _done)
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run what waits, in batches of up to max_batch while workers are free (at least one)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._run(loop)
        while self._waiting and self._busy < self.workers:
            self._run(loop)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the first max_batch waiting, one batch per policy (a reload may leave two)."""
        taken, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
        by_policy: dict[int, list[tuple[BatchPolicy, PolicyContext, asyncio.Future]]] = {}
        for item in taken:
            if not item[2].done():  # its session may have gone meanwhile
                by_policy.setdefault(id(item[0]), []).append(item)
        self._last_batch = len(taken)
        for batch in by_policy.values():
            self._busy += 1
            work = loop.run_in_executor(self._pool, batch[0][0].decide_batch, [ctx for _, ctx, _ in batch])
            work.add_done_callback(lambda done, batch=batch: self._done(loop, batch, done))

    def _done(self, loop: asyncio.AbstractEventLoop, batch, done: asyncio.Future) -> None:
        self._busy -= 1
        error = None if done.cancelled() else done.exception()
        for i, (_, _, future) in enumerate(batch):
            if future.done():
                continue
            if done.cancelled():
                future.cancel()
            elif error is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result()[i])
        if self._waiting and self._timer is None:
            self._start(loop)  # they waited for a worker: no window on top
