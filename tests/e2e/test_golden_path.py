"""The golden path on the real local stack (`esper.runtime.stack.up` in a temporary state
dir): a digits CNN trains on CPU in this process, talks to the stack's Tamiyo over
loopback, and grows seeds with kernels Tezzeret compiled (asked for by Tamiyo, nobody
else) and Urza served; its telemetry reaches Nissa through the broker. Then the failure
cases: Tamiyo SIGKILLed mid-run, the broker SIGKILLed mid-run.

Tamiyo runs with scripts/demo_heuristic.toml (short-run stages), as the demo does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch

from esper.leyline.v1 import nissa_pb2
from esper.leyline.v1.control_pb2 import AckStatus
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.oona import ThreadedOonaProducer
from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import NissaClient, TezzeretClient, UrzaClient
from esper.rpc.errors import ServiceError
from esper.runtime.infra import proc
from esper.runtime.stack import HEALTHY, down, status, up
from esper.tolaria import TolariaConfig, Trainer
from esper.tolaria.policy.remote import RemotePolicy
from esper.tolaria.tasks import load_task
from esper.tolaria.telemetry import Telemetry

pytestmark = pytest.mark.e2e

HEURISTIC_FILE = Path(__file__).resolve().parents[2] / "scripts" / "demo_heuristic.toml"
# Generous waits for a loaded 2-core machine (a stuck component, not a timing claim).
WAIT_S = 60.0
POLL_S = 0.2
# Digits: 1,437 training images; batch 32 gives 45 steps per epoch.
BATCH = 32
# The default (narrow) digits host plateaus around epoch 8; the seed Tamiyo germinates
# then needs a few more epochs to blend and be fossilized or culled, later still when its
# kernels are compiled while training competes for the cores.
GROWTH_EPOCHS = 30
FAILURE_EPOCHS = 8
# The Tamiyo-outage run is longer: Tamiyo's restart (imports torch, binds, turns SERVING)
# competes with training for the two cores, and the run must outlast it to resume.
TAMIYO_OUTAGE_EPOCHS = 20
# Step at which a component is killed: the session is open and the run well under way.
KILL_AT_STEP = 60
# Telemetry buffer of the broker-outage run: a few snapshots' worth.
OUTAGE_QUEUE = 8
S = SeedStage


@dataclass
class LiveStack:
    state_dir: Path
    addresses: dict[str, str]

    def pid(self, name: str) -> int:
        return next(s.pid for s in status(self.state_dir) if s.name == name)


@contextlib.contextmanager
def _demo_heuristic() -> Iterator[None]:
    """Servers started inside get the demo's heuristic file (they copy os.environ)."""
    old = os.environ.get("ESPER_HEURISTIC_CONFIG")
    os.environ["ESPER_HEURISTIC_CONFIG"] = str(HEURISTIC_FILE)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ESPER_HEURISTIC_CONFIG", None)
        else:
            os.environ["ESPER_HEURISTIC_CONFIG"] = old


def _up(state_dir: Path):
    with _demo_heuristic():
        return up(state_dir)


@pytest.fixture(scope="module")
def stack() -> Iterator[LiveStack]:
    state_dir = Path(tempfile.mkdtemp(prefix="esper-e2e-"))
    os.chmod(state_dir, 0o755)  # PostgreSQL runs as `nobody` under root and must reach it
    pids: set[int] = set()
    try:
        result = _up(state_dir)
        assert all(s.health == HEALTHY for s in result.statuses)
        yield LiveStack(state_dir, {s.name: s.address for s in result.statuses})
    finally:
        pids |= {s.pid for s in status(state_dir) if s.pid is not None}
        down(state_dir)
        left = [p for p in pids if proc.is_running(p) or proc.group_members(p)]
        shutil.rmtree(state_dir, ignore_errors=True)
    assert left == [], f"processes left after down: {left}"


def _wait_for(what: str, check: Callable[[], object], timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL_S)


def _trainer(stack: LiveStack, run_id: str, epochs: int, **attach) -> tuple[Trainer, RemotePolicy]:
    torch.manual_seed(0)
    task = load_task("digits", batch_size=BATCH, seed=0)
    policy = RemotePolicy(stack.addresses["tamiyo"], backoff_max_s=2.0)
    config = TolariaConfig(run_id=run_id, kafka_bootstrap=stack.addresses["broker"], progress=False)
    trainer = Trainer(task.model, lambda p: torch.optim.Adam(p, lr=1e-2), task.train_loader,
                      task.val_loader, epochs=epochs, policy=policy, config=config,
                      example_input=task.example_input, urza=stack.addresses["urza"], **attach)
    return trainer, policy


class Background:
    """Trainer.fit in a thread, so the test can break things while it trains."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.summary: dict | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.summary = self.trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            self.error = exc

    @property
    def step(self) -> int:
        return self.trainer.session.model.global_step

    def join(self) -> dict:
        self._thread.join(timeout=300)
        if self.error is not None:
            raise self.error
        assert self.summary is not None, "training did not finish"
        return self.summary


def _kill(stack: LiveStack, name: str) -> None:
    pid = stack.pid(name)
    os.killpg(pid, signal.SIGKILL)
    _wait_for(f"{name} to die", lambda: not proc.is_running(pid), 10)


def _call(client_class, address: str, work):
    """`await work(client)` with a client of the service at `address` (5 s per call)."""
    async def session():
        async with client_class(address, security=ChannelSecurity(), timeout_s=5.0) as client:
            return await work(client)
    return asyncio.run(session())


def _summary(stack: LiveStack, run_id: str) -> nissa_pb2.GetRunSummaryResponse:
    async def fetch(nissa: NissaClient) -> nissa_pb2.GetRunSummaryResponse:
        try:
            return await nissa.get_run_summary(run_id)
        except ServiceError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return nissa_pb2.GetRunSummaryResponse()
            raise
    return _call(NissaClient, stack.addresses["nissa"], fetch)


async def _collect(items) -> list:
    return [item async for item in items]


def _summary_with_epochs(stack: LiveStack, run_id: str, epochs: int):
    return _wait_for(f"Nissa to have epoch {epochs} of {run_id}",
                     lambda: (s := _summary(stack, run_id)) and len(s.epochs) >= epochs and s)


@pytest.fixture(scope="module")
def growth_run(stack: LiveStack) -> dict:
    """One run of the golden path, shared by the tests that look at it from each side."""
    trainer, policy = _trainer(stack, "e2e-growth", GROWTH_EPOCHS)
    summary = trainer.fit()
    return {"summary": summary, "policy": policy, "cache": trainer.session.cache}


def test_tamiyo_grows_seeds_with_kernels_tezzeret_compiled(stack: LiveStack, growth_run: dict) -> None:
    summary, policy, cache = growth_run["summary"], growth_run["policy"], growth_run["cache"]
    assert summary["epoch"] == GROWTH_EPOCHS
    assert policy.connects >= 1 and policy.outage() is None
    assert summary["seeds_fossilized"] + summary["seeds_culled"] >= 1, summary
    run = _summary_with_epochs(stack, "e2e-growth", GROWTH_EPOCHS)
    germinations = [r for r in run.decisions if r.decision.WhichOneof("action") == "germinate"
                    and r.ack.status == AckStatus.ACK_STATUS_APPLIED]
    assert germinations, "no germination applied"
    # Every applied germination names a kernel Urza holds, that a Tezzeret job registered,
    # and that the training process downloaded (verified against its digest).
    jobs = _call(TezzeretClient, stack.addresses["tezzeret"],
                 lambda tezzeret: _collect(tezzeret.list_jobs()))
    compiled = {k for job in jobs for k in job.kernel_ids}
    for record in germinations:
        g = record.decision.germinate
        kernel = _call(UrzaClient, stack.addresses["urza"], lambda urza: urza.get_kernel(g.kernel_id))
        assert kernel.sha256 == g.kernel_sha256
        assert g.kernel_id in compiled
    assert cache.stats.misses >= 1 and cache.stats.digest_mismatches == 0
    # Every field report went through Tamiyo to Urza's blueprint aggregates: those of seeds
    # the local fallback grew before Tamiyo connected (germinated before the first
    # validation pass, so their gain is unmeasured), and those of the seeds close() settled.
    reported = Counter(r.blueprint_ref for r in run.field_reports)
    assert reported

    def aggregated() -> bool:
        records = _call(UrzaClient, stack.addresses["urza"], lambda urza: asyncio.gather(
            *(urza.get_blueprint(ref) for ref in reported)))
        return all(r.times_used >= reported[ref] and r.fossilized_count + r.culled_count >= reported[ref]
                   for ref, r in zip(reported, records, strict=True))

    _wait_for("Urza's blueprint aggregates to count the field reports", aggregated)


def test_the_run_arrives_in_nissa_in_order(stack: LiveStack, growth_run: dict) -> None:
    run = _summary_with_epochs(stack, "e2e-growth", GROWTH_EPOCHS)
    assert [e.epoch for e in run.epochs] == list(range(1, GROWTH_EPOCHS + 1))
    assert [e.step for e in run.epochs] == sorted(e.step for e in run.epochs)
    timeline = list(run.seed_timeline)
    assert [t.step for t in timeline] == sorted(t.step for t in timeline)
    reached = {t.to_stage for t in timeline}
    assert {S.SEED_STAGE_GERMINATED, S.SEED_STAGE_TRAINING, S.SEED_STAGE_BLENDING} <= reached
    assert reached & {S.SEED_STAGE_FOSSILIZED, S.SEED_STAGE_CULLED}
    # Every decision Tamiyo sent is there with Tolaria's ack, except one answering the
    # run's final snapshot, which may reach the client after it closed.
    final_step = run.epochs[-1].step
    run = _wait_for("every decision's ack", lambda: (s := _summary(stack, "e2e-growth")) and all(
        r.ack.decision_id for r in s.decisions if r.decision.issued_at_step < final_step) and s)
    assert run.decisions
    for record in run.decisions:
        if not record.ack.decision_id:
            continue
        assert record.ack.decision_id == record.decision.decision_id
        assert record.ack.status in (AckStatus.ACK_STATUS_APPLIED, AckStatus.ACK_STATUS_REJECTED,
                                     AckStatus.ACK_STATUS_EXPIRED)
    steps = [r.decision.issued_at_step for r in run.decisions]
    assert steps == sorted(steps)


def test_tamiyo_killed_mid_run_training_completes_and_the_session_resumes(stack: LiveStack) -> None:
    trainer, policy = _trainer(stack, "e2e-tamiyo-kill", TAMIYO_OUTAGE_EPOCHS)
    run = Background(trainer)
    _wait_for("the session to open and the run to get going",
              lambda: policy.connects >= 1 and run.step >= KILL_AT_STEP)
    _kill(stack, "tamiyo")
    _wait_for("the outage to be noticed", lambda: policy.outage() is not None or run.summary)
    restarted = _up(stack.state_dir)
    assert restarted.started == ["tamiyo"]
    _wait_for("the same run to re-open its session on the new Tamiyo",
              lambda: policy.connects >= 2 or run.summary)
    summary = run.join()
    assert summary["epoch"] == TAMIYO_OUTAGE_EPOCHS
    if policy.connects < 2:  # the run ended first: a new run gets a session at once
        trainer, policy = _trainer(stack, "e2e-after-restart", 1)
        assert trainer.fit()["epoch"] == 1
    assert policy.connects >= 1 and policy.outage() is None


def test_broker_killed_mid_run_training_finishes_and_later_events_arrive(stack: LiveStack) -> None:
    # A small telemetry buffer, so the outage overflows it within an epoch and drops are
    # certain (with the default 10,000 events a short outage is only buffered).
    producer = ThreadedOonaProducer(stack.addresses["broker"], queue_capacity=OUTAGE_QUEUE).start(10)
    try:
        telemetry = Telemetry("e2e-broker-kill", producer=producer)
        trainer, _ = _trainer(stack, "e2e-broker-kill", FAILURE_EPOCHS, telemetry=telemetry)
        run = Background(trainer)
        _wait_for("the run to get going", lambda: run.step >= KILL_AT_STEP)
        _kill(stack, "broker")
        _wait_for("telemetry drops to be counted", lambda: telemetry.dropped() > 0)
        assert run.summary is None, "the run ended before the outage was seen"
        restarted = _up(stack.state_dir)
        assert restarted.started == ["broker"]
        summary = run.join()
        assert summary["epoch"] == FAILURE_EPOCHS
        assert producer.producer.stats().dropped_queue_full > 0
        # Events published after the broker came back reach Nissa: the last epoch is there
        # (epochs that ended while it was down are among the drops).
        _wait_for("the run's last epoch in Nissa", lambda: any(
            e.epoch == FAILURE_EPOCHS for e in _summary(stack, "e2e-broker-kill").epochs))
    finally:
        producer.stop()
