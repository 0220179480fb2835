"""DecisionBatcher: the learned policy's decisions from many sessions run as batches off
the event loop, each answer routed to its own caller."""

from __future__ import annotations

import asyncio
import threading

import pytest

from esper.tamiyo.batcher import DecisionBatcher


class Recorder:
    """A policy whose decision is its context, recording the batches and their threads."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.fail = fail

    def decide(self, ctx: int) -> int:
        return self.decide_batch([ctx])[0]

    def decide_batch(self, contexts: list[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(contexts))
        if self.fail:
            raise RuntimeError("policy failed")
        return [ctx * 10 for ctx in contexts]


async def test_decisions_run_in_batches_off_the_loop_and_wait_for_company_once_there_is_some():
    batcher, policy = DecisionBatcher(window_s=0.05, workers=1), Recorder()
    try:
        # A lone decision starts at once; the ones that arrive while it runs go together.
        answers = await asyncio.gather(*(batcher.decide(policy, i) for i in range(6)))
        # That batch had company, so the next decision waits the window for the others.
        later = await asyncio.gather(*(batcher.decide(policy, i) for i in range(6, 9)))
    finally:
        batcher.close()
    assert answers == [0, 10, 20, 30, 40, 50] and later == [60, 70, 80]  # each caller its own
    assert policy.batches == [[0], [1, 2, 3, 4, 5], [6, 7, 8]]
    assert policy.threads and threading.current_thread().name not in policy.threads


async def test_a_zero_window_runs_each_decision_alone():
    batcher, policy = DecisionBatcher(window_s=0.0, workers=2), Recorder()
    try:
        assert await asyncio.gather(*(batcher.decide(policy, i) for i in range(3))) == [0, 10, 20]
    finally:
        batcher.close()
    assert sorted(policy.batches) == [[0], [1], [2]]


async def test_batches_are_bounded_and_decisions_waiting_for_a_worker_go_together():
    batcher, policy = DecisionBatcher(window_s=0.001, workers=1, max_batch=4), Recorder()
    try:
        answers = await asyncio.gather(*(batcher.decide(policy, i) for i in range(10)))
    finally:
        batcher.close()
    assert answers == [i * 10 for i in range(10)]
    assert [len(b) for b in policy.batches] == [1, 4, 4, 1]
    assert [ctx for b in policy.batches for ctx in b] == list(range(10))  # arrival order kept


async def test_a_failing_batch_fails_each_of_its_callers():
    batcher = DecisionBatcher(window_s=0.01, workers=1)
    try:
        results = await asyncio.gather(*(batcher.decide(Recorder(fail=True), i) for i in range(2)),
                                       return_exceptions=True)
    finally:
        batcher.close()
    assert all(isinstance(r, RuntimeError) for r in results)


def test_settings_out_of_range_are_refused():
    with pytest.raises(ValueError):
        DecisionBatcher(window_s=-1.0, workers=1)
    with pytest.raises(ValueError):
        DecisionBatcher(window_s=0.001, workers=0)


async def test_a_lone_runs_decisions_run_on_the_loop_and_several_runs_go_to_the_pool():
    """One session alone decides on the event loop (no thread hand-offs); as soon as another
    run's decision came in between, decisions go to the workers again and batch."""
    batcher, policy = DecisionBatcher(window_s=0.001, workers=1), Recorder()
    loop_thread = threading.current_thread().name
    try:
        assert await batcher.decide(policy, 1, "run-a") == 10  # first of its run: the pool
        assert await batcher.decide(policy, 2, "run-a") == 20  # the run again, alone: the loop
        assert await batcher.decide(policy, 3, "run-a") == 30
        lone = set(policy.threads)
        policy.threads.clear()
        assert await batcher.decide(policy, 4, "run-b") == 40  # another run came in: the pool
        assert await batcher.decide(policy, 5, "run-a") == 50
        answers = await asyncio.gather(*(batcher.decide(policy, i, f"run-{i}") for i in range(6, 9)))
    finally:
        batcher.close()
    assert loop_thread in lone and len(lone) == 2  # the first in the pool, then the loop
    assert loop_thread not in policy.threads and answers == [60, 70, 80]
    unbatched, other = DecisionBatcher(window_s=0.0, workers=1), Recorder()
    try:  # batching off: every decision in the pool, as it arrives
        for i in range(3):
            await unbatched.decide(other, i, "run-a")
    finally:
        unbatched.close()
    assert loop_thread not in other.threads
