"""Tamiyo replicas sharing run state in PostgreSQL (esper.tamiyo.run_store): a run moved
from one replica to another mid-run gets the decisions one process would have given; a
Tamiyo killed (SIGKILL) and restarted mid-run keeps the run's plateau history; a client on
an address list of replicas resumes on the other one when its replica stops.

The simulated run plateaus at epoch PLATEAU_EPOCH (the history of validation losses, not
the client's plateau counter, says so), is germinated there and walked through the
lifecycle by the heuristic; the client applies and acks every decision. Each run is cut
before the plateau, so a replica that did not know the run's history would germinate
later (or never) and the decisions would differ."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from esper.leyline.ids import new_decision_id
from esper.leyline.v1.control_pb2 import AckStatus, AdaptationDecision, DecisionAck
from esper.leyline.v1.lifecycle_pb2 import SeedStage, SeedState
from esper.leyline.v1.signals_pb2 import TrainingMetrics, TrainingSnapshot
from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import TamiyoClient
from esper.runtime.auth import ANONYMOUS
from esper.runtime.errors import PermissionDenied
from esper.runtime.infra import free_port
from esper.runtime.server import start_server
from esper.tamiyo import service as tamiyo_service
from esper.tamiyo.run_store import RunBook, RunStore
from esper.tamiyo.runs import RunRegistry
from esper.tolaria.policy.remote import RemotePolicy
from tests.integration.test_tamiyo_server import (  # noqa: F401 (urza is a fixture)
    WAIT_S,
    Client,
    open_message,
    tamiyo_config,
    urza,
)

pytestmark = pytest.mark.integration

S = SeedStage
STEPS_PER_EPOCH = 40
SNAPSHOT_EVERY = 10
# Validation loss per epoch: improving, then flat from epoch 2 — with the heuristic's
# patience of 3 epochs, the history shows a plateau at the end of epoch 5.
VAL_LOSSES = [1.0, 0.8, 0.7]
PLATEAU_EPOCH = 5
EPOCHS = 16
# Where the runs are cut: before the plateau, so only a replica that knows the first
# epochs' losses sees it on time.
MOVE_AFTER_EPOCH = 3
BLEND_STEPS = 40


class SimulatedRun:
    """A training client: its seeds follow the decisions it applies, every decision is acked
    APPLIED, and it re-opens with its seeds and acked ids like Tolaria does."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.seeds: dict[str, SeedState] = {}
        self.acked: list[str] = []
        self.decisions: list[tuple] = []
        self.step = 0

    async def train(self, stub, epochs: range) -> bool:
        """One session over `epochs`; whether the server resumed the run."""
        client = Client(stub)
        await client.send(open=open_message(self.run_id, seeds=list(self.seeds.values()),
                                            acked_decision_ids=self.acked,
                                            last_applied_decision_id=self.acked[-1] if self.acked else ""))
        accept = (await client.next("accept")).accept
        try:
            for epoch in epochs:
                for _ in range(STEPS_PER_EPOCH // SNAPSHOT_EVERY):
                    self._advance_steps(SNAPSHOT_EVERY)
                    await self._exchange(client, self._snapshot(epoch, epoch_end=False))
                await self._exchange(client, self._snapshot(epoch, epoch_end=True))
        finally:
            await client.close()
        return accept.resumed

    def _advance_steps(self, steps: int) -> None:
        self.step += steps
        for slot, s in self.seeds.items():
            alpha = min(1.0, (s.steps_in_stage + steps) / BLEND_STEPS) if s.stage == S.SEED_STAGE_BLENDING else s.alpha
            self.seeds[slot] = SeedState(seed_id=s.seed_id, slot_id=slot, stage=s.stage, alpha=alpha,
                                         steps_in_stage=s.steps_in_stage + steps,
                                         germinated_at_step=s.germinated_at_step)

    def _snapshot(self, epoch: int, epoch_end: bool) -> TrainingSnapshot:
        val_loss = VAL_LOSSES[min(epoch, len(VAL_LOSSES) - 1)]
        return TrainingSnapshot(run_id=self.run_id, step=self.step, epoch=epoch, sequence=self.step * 2 + epoch_end,
                                epoch_end=epoch_end, seeds=list(self.seeds.values()),
                                metrics=TrainingMetrics(train_loss=val_loss, val_loss=val_loss))

    async def _exchange(self, client: Client, snapshot: TrainingSnapshot) -> None:
        """Send a snapshot, then a probe (an ack of an unknown id, answered by a warning):
        whatever decision the snapshot got arrives before the probe's warning."""
        await client.send(snapshot=snapshot)
        await client.send(ack=DecisionAck(decision_id=new_decision_id(), run_id=self.run_id,
                                          status=AckStatus.ACK_STATUS_APPLIED))
        while True:
            response = await client.next()
            if response.WhichOneof("message") == "warning":
                assert response.warning.code == "unknown_decision", response.warning
                return
            self._apply(response.decision, snapshot.epoch)
            await client.send(ack=DecisionAck(decision_id=response.decision.decision_id, run_id=self.run_id,
                                              status=AckStatus.ACK_STATUS_APPLIED))
            self.acked.append(response.decision.decision_id)

    def _apply(self, d, epoch: int) -> None:
        action = d.WhichOneof("action")
        slot = getattr(d, action).slot_id
        self.decisions.append((self.step, epoch, action, slot, d.advance.target_stage, d.germinate.blueprint_ref))
        stage = {"germinate": S.SEED_STAGE_GERMINATED, "advance": d.advance.target_stage,
                 "fossilize": S.SEED_STAGE_FOSSILIZED, "cull": S.SEED_STAGE_CULLED}[action]
        old = self.seeds.get(slot)
        self.seeds[slot] = SeedState(
            seed_id=old.seed_id if old else f"seed-{slot}", slot_id=slot, stage=stage, steps_in_stage=0,
            alpha=old.alpha if old and stage != S.SEED_STAGE_BLENDING else 0.0,
            germinated_at_step=old.germinated_at_step if old else self.step)


def germinations(run: SimulatedRun) -> list[int]:
    return [epoch for _, epoch, action, *_ in run.decisions if action == "germinate"]


@contextlib.asynccontextmanager
async def replica(dsn: str, urza_address: str, **overrides):
    running = await start_server(tamiyo_service.SPEC, tamiyo_config(
        postgres_dsn=dsn, urza_address=urza_address, urza_timeout_s=5.0, publish_events=False,
        tezzeret_address="", **overrides))
    client = TamiyoClient(running.address, security=ChannelSecurity())
    try:
        yield running, client.stub
    finally:
        await client.close()
        await running.stop(0)


async def test_a_run_moved_to_another_replica_gets_the_decisions_of_one_process(fresh_database, urza):  # noqa: F811
    urza_running, _ = urza
    alone, moved = SimulatedRun("run-alone"), SimulatedRun("run-moved")
    async with replica(fresh_database, urza_running.address) as (_, a), \
            replica(fresh_database, urza_running.address) as (_, b):
        assert not await alone.train(a, range(EPOCHS))
        assert not await moved.train(a, range(MOVE_AFTER_EPOCH + 1))
        assert await moved.train(b, range(MOVE_AFTER_EPOCH + 1, EPOCHS))  # resumed on the other replica
    # The plateau came from history written by the other replica: growth on time.
    assert germinations(alone)[0] == PLATEAU_EPOCH
    actions = {action for _, _, action, *_ in alone.decisions}
    assert {"germinate", "advance", "fossilize"} <= actions, alone.decisions
    assert moved.decisions == alone.decisions


async def test_a_superseded_session_on_another_replica_ends_aborted(fresh_database):
    async with replica(fresh_database, "") as (_, a), \
            replica(fresh_database, "") as (_, b):
        old = Client(a)
        await old.send(open=open_message("run-twice"))
        await old.next("accept")
        new = Client(b)
        await new.send(open=open_message("run-twice"))
        assert (await new.next("accept")).accept.resumed
        # The old stream's next write finds a newer generation: it ends, changing nothing.
        await old.send(snapshot=TrainingSnapshot(run_id="run-twice", step=5, sequence=5))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await old.next()
        assert refused.value.code() == grpc.StatusCode.ABORTED
        assert "newer session" in refused.value.details()
        await old.close()
        await new.close()


async def test_another_identitys_run_is_refused_on_every_replica(fresh_database):
    async with replica(fresh_database, "") as (_, a):
        first = Client(a)
        await first.send(open=open_message("run-owned"))
        await first.next("accept")
        await first.close()
    # Another replica's store, and another identity than the anonymous owner.
    store = await RunStore.connect(fresh_database, 5.0, max_runs=10, max_runs_per_owner=10)
    try:
        book = RunBook(RunRegistry(10), store)
        with pytest.raises(PermissionDenied, match="belongs to another identity"):
            await book.open(open_message("run-owned"), "heuristic", "mallory", "s", 1000)
        run, resumed = await book.open(open_message("run-owned"), "heuristic", ANONYMOUS, "s", 1000)
        assert resumed and run.owner == ANONYMOUS
    finally:
        await store.close()


async def test_a_snapshot_and_an_ack_cost_the_run_store_one_statement_each(fresh_database):
    store = await RunStore.connect(fresh_database, 5.0, max_runs=10, max_runs_per_owner=10)
    try:
        book = RunBook(RunRegistry(10), store)
        run, _ = await book.open(open_message("run-trips"), "heuristic", ANONYMOUS, "s", 1000)
        statements: list[str] = []
        async with store.pool.acquire() as conn:  # the pool's one connection: used one at a time
            conn.add_query_logger(lambda logged: statements.append(logged.query))
        statements.clear()
        decision = new_decision_id()
        run.issue(AdaptationDecision(decision_id=decision, run_id="run-trips"))
        await book.save(run, run.issued[decision])
        await book.ack(run, DecisionAck(decision_id=decision, run_id="run-trips", status=AckStatus.ACK_STATUS_APPLIED))
        assert len(statements) == 2, statements  # no reset of the connection after each
    finally:
        await store.close()


async def test_a_resumed_run_keeps_its_start_loss_on_another_replica(fresh_database):
    """The loss the run started from (the stream's pace is measured from it) and the first
    epoch's pace (the seeds' first-epoch signal) are stored with its history: a replica that
    did not see the run's first epoch still knows them."""
    store = await RunStore.connect(fresh_database, 5.0, max_runs=10, max_runs_per_owner=10)
    try:
        first = RunBook(RunRegistry(10), store)
        run, _ = await first.open(open_message("run-start"), "heuristic", ANONYMOUS, "s1", 1000)
        early = TrainingSnapshot(run_id="run-start", step=10, epoch=0, sequence=1,
                                 metrics=TrainingMetrics(train_loss=4.25))
        middle = TrainingSnapshot(run_id="run-start", step=20, epoch=0, sequence=2,
                                  metrics=TrainingMetrics(train_loss=3.25))
        end = TrainingSnapshot(run_id="run-start", step=40, epoch=1, sequence=3, epoch_end=True,
                               metrics=TrainingMetrics(train_loss=3.0, val_loss=2.5))
        for snap in (early, middle, end):
            run.history.record(snap)
            await first.save(run)
        other = RunBook(RunRegistry(10), store)  # another replica: nothing in memory
        moved, resumed = await other.open(open_message("run-start"), "heuristic", ANONYMOUS, "s2", 1000)
        assert resumed
        assert moved.history.start_loss == 4.25 and moved.history.val_losses == [2.5]
        assert moved.history.first_epoch_pace == 0.25  # (3.25 - 3.0) / (4.25 - 3.25)
        fresh, _ = await other.open(open_message("run-new"), "heuristic", ANONYMOUS, "s3", 1000)
        assert math.isnan(fresh.history.start_loss) and math.isnan(fresh.history.first_epoch_pace)
    finally:
        await store.close()


# -- a real process, killed ------------------------------------------------------------------


@contextlib.contextmanager
def tamiyo_process(port: int, dsn: str, urza_address: str, *flags: str):
    """`esper serve tamiyo` on `port` (and `flags`); SIGKILLed at the end if still alive."""
    env = {**os.environ, "ESPER_POSTGRES_DSN": dsn, "ESPER_URZA_ADDRESS": urza_address,
           "ESPER_URZA_TIMEOUT_S": "5", "ESPER_PUBLISH_EVENTS": "false",
           "ESPER_HEARTBEAT_SECONDS": "1", "ESPER_IDLE_HEARTBEATS": "30", "ESPER_SNAPSHOT_EVERY_STEPS": "10"}
    process = subprocess.Popen([sys.executable, "-m", "esper.cli.main", "serve", "tamiyo", "--port", str(port),
                                "--metrics-port", "-1", "--tezzeret-address", "", *flags], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "serving on" not in line:
            line = process.stdout.readline()
            assert line or process.poll() is None, f"tamiyo exited with {process.returncode}"
            assert time.monotonic() < deadline, "tamiyo did not start"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        process.stdout.close()


async def test_a_killed_and_restarted_tamiyo_keeps_the_runs_plateau_history(fresh_database, urza):  # noqa: F811
    urza_running, _ = urza
    port = free_port()
    run = SimulatedRun("run-restarted")
    async with TamiyoClient(f"127.0.0.1:{port}", security=ChannelSecurity()) as tamiyo:
        with tamiyo_process(port, fresh_database, urza_running.address) as process:
            assert not await run.train(tamiyo.stub, range(MOVE_AFTER_EPOCH + 1))
            process.send_signal(signal.SIGKILL)  # no shutdown: only what PostgreSQL holds survives
            process.wait(timeout=30)
        with tamiyo_process(port, fresh_database, urza_running.address):
            assert await run.train(tamiyo.stub, range(MOVE_AFTER_EPOCH + 1, PLATEAU_EPOCH + 2))
    assert germinations(run)[:1] == [PLATEAU_EPOCH]


async def test_a_client_on_an_address_list_resumes_on_the_other_replica(fresh_database):
    b_port = free_port()  # the second replica starts later: the session lands on the first
    async with replica(fresh_database, "") as (a, _):
        remote = RemotePolicy(f"{a.address},127.0.0.1:{b_port}", backoff_min_s=0.1, backoff_max_s=0.5)
        remote.start(open_message("run-listed"))
        try:
            await _until(lambda: remote.connects == 1)
            async with replica(fresh_database, "", port=b_port):
                await a.stop(0)  # the replica holding the session goes away
                await _until(lambda: remote.connects == 2)
                assert remote.resumed and remote.outage() is None  # the other replica knew the run
        finally:
            remote.close()


async def _until(predicate, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)

