"""Tolaria's telemetry through Oona on the real broker: snapshots, seed transitions,
decision acks and a field report of a run arrive on their topics, keyed by the run."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from esper.leyline.v1.control_pb2 import (
    AdaptationDecision,
    CullAction,
    CullReason,
    GerminateAction,
)
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.oona import OonaConsumer
from esper.oona.topics import CONTROL_ACKS, FIELD_REPORTS, SEED_TRANSITIONS, TELEMETRY_TRAINING
from esper.tolaria import ReplayPolicy, TolariaConfig, attach

pytestmark = pytest.mark.integration
RUN_ID = "run-telemetry-1"
WAIT_S = 30.0


def _train(bootstrap: str) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    replay = ReplayPolicy([])
    session = attach(model, optimizer, replay, slots=["0"], example_input=torch.zeros(2, 16),
                     config=TolariaConfig(run_id=RUN_ID, snapshot_every=2, progress=False,
                                          kafka_bootstrap=bootstrap))
    cand = session.local_kernels.find("BP-IA3@1.0.0", session.model.slot("0").shape)
    replay.log = [
        AdaptationDecision(decision_id="germ", issued_at_step=2, expires_at_step=50,
                           germinate=GerminateAction(
                               slot_id="0", blueprint_ref="BP-IA3@1.0.0",
                               kernel_id=cand.kernel.kernel_id, kernel_sha256=cand.kernel.sha256)),
        AdaptationDecision(decision_id="cull", issued_at_step=6, expires_at_step=50,
                           cull=CullAction(slot_id="0", reason=CullReason.CULL_REASON_NO_GAIN)),
    ]
    x = torch.randn(32, 16)
    y = x[:, :4].argmax(-1)
    for step in range(12):
        optimizer.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        session.step(loss, out, y)
    session.end_epoch({"val_loss": loss.item(), "val_accuracy": 0.5})
    published = session.telemetry.published
    session.close()  # flushes the producer
    return {"published": published}


async def test_run_telemetry_reaches_its_topics(kafka_bootstrap) -> None:
    result = await asyncio.to_thread(_train, kafka_bootstrap)
    assert result["published"] > 0
    consumer = OonaConsumer(kafka_bootstrap, [TELEMETRY_TRAINING, SEED_TRANSITIONS, CONTROL_ACKS,
                                              FIELD_REPORTS], group_id=None)
    await consumer.start()
    kinds: dict[str, list] = {}
    try:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and len(kinds) < 4:
            batch, _ = await consumer.poll(200)
            for consumed in batch:
                event = consumed.event
                if event.run_id == RUN_ID:
                    kinds.setdefault(event.WhichOneof("payload"), []).append(event)
    finally:
        await consumer.stop()
    assert set(kinds) >= {"snapshot", "seed_transition", "ack", "field_report"}, sorted(kinds)
    assert {e.ack.decision_id for e in kinds["ack"]} == {"germ", "cull"}
    report = kinds["field_report"][0].field_report
    assert report.final_stage == SeedStage.SEED_STAGE_CULLED
    assert report.cull_reason == CullReason.CULL_REASON_NO_GAIN
    assert report.germinate_decision_id == "germ" and report.lifetime_steps > 0
    assert all(e.source == "tolaria" for evs in kinds.values() for e in evs)
    steps = [e.snapshot.step for e in kinds["snapshot"]]
    assert steps == sorted(steps)
