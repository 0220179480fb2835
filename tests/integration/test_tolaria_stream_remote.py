"""Residual-stream growth end to end: a real Tamiyo server's heuristic, seeing a plateau in
a run whose host declares its stream, sends a WidenStreamAction over the Session stream;
Tolaria applies it at a safe point, the ack goes back, the next snapshots report the wider
stream, and training goes on with the optimizer on the new parameters."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from torch.nn import functional as F

from esper.leyline.v1.control_pb2 import AckStatus
from esper.tolaria import TolariaConfig, attach
from esper.tolaria.policy.remote import RemotePolicy
from tests.integration.test_tamiyo_server import tamiyo
from tests.unit.test_kasmina_stream import Tiny, _x

pytestmark = pytest.mark.integration

WAIT_S = 60.0
EPOCH = 10


async def test_tamiyo_widens_a_declared_stream_on_a_plateau() -> None:
    async with tamiyo(snapshot_every_steps=5) as (running, _stub, _channel):
        policy = RemotePolicy(running.address)
        torch.manual_seed(0)
        model = Tiny()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        session = attach(model, optimizer, policy, example_input=_x(2),
                         config=TolariaConfig(run_id="run-stream-remote", snapshot_every=5,
                                              progress=False))
        acks = []
        session.ack_listeners.append(acks.append)
        stop, losses = threading.Event(), []

        def train() -> None:
            x, step = _x(8), 0
            while not stop.is_set():
                optimizer.zero_grad()
                out = model(x)
                loss = F.cross_entropy(out.flatten(0, 1), x.flatten())
                loss.backward()
                optimizer.step()
                step += 1
                last = step % EPOCH == 0
                session.step(loss, out, x, last_in_epoch=last)
                losses.append(loss.item())
                if last:  # a validation loss that has stopped improving: a plateau
                    session.end_epoch({"val_loss": 1.0})

        thread = threading.Thread(target=train, daemon=True)
        thread.start()
        try:
            widened = []
            for _ in range(int(WAIT_S / 0.05)):  # the ack follows the widening: wait for it
                widened = [a for a in acks if "residual stream" in a.reason]
                if widened:
                    break
                await asyncio.sleep(0.05)
            assert widened and widened[0].status == AckStatus.ACK_STATUS_APPLIED, [a.reason for a in acks]
            first = session.model.stream.history[0]  # training goes on: it may widen again
            assert (first["from"], first["to"]) == (8, 10)
            seen = len(losses)
            for _ in range(int(WAIT_S / 0.05)):
                if len(losses) > seen + 20:
                    break
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            thread.join(WAIT_S)
            session.close()
        assert len(losses) > seen + 20 and all(map(torch.isfinite, torch.tensor(losses)))
        width = session.model.stream.width
        assert width >= 10 and model.norm.normalized_shape == (width,)
        assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
            id(p) for p in session.model.parameters()}
        assert session._snapshot(epoch_end=False).stream.width == session.model.stream.width
