"""Tolaria's remote policy against a real Tamiyo server over loopback: the session opens
and snapshots flow at the server's rate; with Tamiyo unreachable training goes on (local
policy), the outage is reported, and the stream re-opens with the same run id when Tamiyo
comes (back) up. Training runs in a thread, as in a real process; the server in this loop."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from esper.runtime.infra import free_port
from esper.tolaria import TolariaConfig, attach
from esper.tolaria.policy.remote import RemotePolicy
from tests.integration.test_tamiyo_server import tamiyo

pytestmark = pytest.mark.integration

WAIT_S = 30.0


class Loop:
    """A hook-API training loop in a thread, stepping until told to stop."""

    def __init__(self, policy: RemotePolicy, run_id: str) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
        self.session = attach(self.model, self.optimizer, policy, slots=["0"],
                              example_input=torch.zeros(2, 16),
                              config=TolariaConfig(run_id=run_id, snapshot_every=20,
                                                   progress=False))
        self.outages: list[str | None] = []
        report = self.session._report_outage
        self.session._report_outage = lambda reason: (self.outages.append(reason), report(reason))
        self.stop = threading.Event()
        self.steps = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(64, 16, generator=gen)
        y = x[:, :4].argmax(-1)
        while not self.stop.is_set():
            self.optimizer.zero_grad()
            out = self.model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            self.optimizer.step()
            last = (self.steps + 1) % 50 == 0
            self.session.step(loss, out, y, last_in_epoch=last)
            self.steps += 1
            if last:
                self.session.end_epoch({"val_loss": loss.item()})

    async def until(self, predicate, what: str) -> None:
        for _ in range(int(WAIT_S / 0.05)):
            if predicate():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(WAIT_S)
        self.session.close()


async def test_remote_session_opens_and_streams_snapshots() -> None:
    async with tamiyo(snapshot_every_steps=5) as (running, _stub, _channel):
        policy = RemotePolicy(running.address)
        loop = Loop(policy, "run-remote-1")
        loop.thread.start()
        try:
            await loop.until(lambda: policy.outage() is None and policy.snapshots_sent >= 5,
                             "accept and snapshots")
            assert policy.snapshot_every() == 5 and loop.session.snapshot_every == 5
            assert policy.session_id and not policy.resumed
            assert not policy.warnings, dict(policy.warnings)  # in order, valid snapshots
        finally:
            loop.finish()
    assert loop.steps > 0


async def test_outage_falls_back_to_local_and_reconnects_with_same_run() -> None:
    port = free_port()
    policy = RemotePolicy(f"127.0.0.1:{port}", backoff_max_s=0.5)
    loop = Loop(policy, "run-remote-2")
    loop.thread.start()
    try:
        await loop.until(lambda: loop.steps > 100, "training without Tamiyo")
        assert policy.outage() is not None and loop.outages and loop.outages[0]
        assert loop.session._active_source() is loop.session.fallback  # local policy
        async with tamiyo(port=port, snapshot_every_steps=5):
            await loop.until(lambda: policy.connects == 1 and loop.outages[-1] is None,
                             "first connect")
            steps = loop.steps
        await loop.until(lambda: policy.outage() is not None, "outage noticed after stop")
        await loop.until(lambda: loop.steps > steps + 50, "training through the outage")
        async with tamiyo(port=port, snapshot_every_steps=5):
            await loop.until(lambda: policy.connects == 2 and policy.outage() is None,
                             "re-open after restart")
            reopen = policy._open_request().open
            assert reopen.run_id == "run-remote-2"
            assert len(reopen.seeds) == 1 and reopen.seeds[0].slot_id == "0"
    finally:
        loop.finish()
    assert [o is None for o in loop.outages[:3]] == [False, True, False]
