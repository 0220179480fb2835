"""esper.oona.aio: deadlines and task shutdown that never lose a cancellation.

The first test is the race that hung `OonaProducer.stop()`: a sender loop waiting on an
already-set event gets its one cancel in the loop iteration in which the wait completes.
Python 3.11's asyncio.wait_for returns the result there and the loop runs on forever;
`within` must deliver the cancel."""

import asyncio
import logging

import pytest

from esper.oona.aio import cancel_and_join, within

# Generous bound on how long a cancelled loop may take to end (it should end at once).
END_WITHIN_S = 5.0


async def test_a_cancel_that_arrives_as_the_wait_completes_is_delivered():
    ready = asyncio.Event()
    ready.set()  # as the producer's wake-up event is after its first send round
    rounds = 0

    async def sender():  # the shape of OonaProducer._run's idle wait
        nonlocal rounds
        while True:
            try:
                await within(1.0, ready.wait())
            except TimeoutError:
                pass
            ready.clear()
            rounds += 1

    task = asyncio.create_task(sender())
    await asyncio.sleep(0)  # the sender is now waiting; its wait completes next iteration
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=END_WITHIN_S)
    assert task in done and task.cancelled()


async def test_within_raises_timeout_and_returns_results():
    assert await within(1.0, asyncio.sleep(0, result="ok")) == "ok"
    with pytest.raises(TimeoutError):
        await within(0.01, asyncio.Event().wait())


async def test_cancel_and_join_ends_a_running_task():
    task = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    await cancel_and_join(task, logging.getLogger("test"))
    assert task.cancelled()


async def test_cancel_and_join_logs_a_task_that_had_failed(caplog):
    async def fails():
        raise RuntimeError("boom")

    task = asyncio.create_task(fails(), name="failing-task")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR):
        await cancel_and_join(task, logging.getLogger("test"))  # does not raise
    assert "failing-task" in caplog.text
    await cancel_and_join(None, logging.getLogger("test"))  # nothing started: no-op


async def test_the_callers_own_cancellation_propagates():
    release = asyncio.Event()

    async def slow_to_stop():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # cleans up for a while
            raise

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_join(task, logging.getLogger("test")))
    await asyncio.sleep(0.01)
    stopper.cancel()  # the caller of stop() gives up
    with pytest.raises(asyncio.CancelledError):
        await stopper
    release.set()
    await asyncio.wait({task}, timeout=END_WITHIN_S)
