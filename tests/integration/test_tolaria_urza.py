"""A remote germination end to end: Tamiyo (heuristic, candidates from a real Urza) sends
a germinate naming an Urza kernel; Tolaria downloads it through Urza's DownloadKernel in
Kasmina's KernelCache prefetch threads (digest verified), applies it at a safe point and
acks it APPLIED, while training never waits on the download."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from esper.blueprints.artifact import pack_kernel
from esper.blueprints.builder import build_seed
from esper.blueprints.catalog import get_builtin
from esper.leyline.v1 import common_pb2
from esper.leyline.v1.control_pb2 import AckStatus
from esper.rpc.clients import UrzaClient
from esper.rpc.errors import ServiceError
from esper.runtime.server import start_server
from esper.tolaria import TolariaConfig, attach
from esper.tolaria.kernels import UrzaKernelFetcher
from esper.tolaria.policy.remote import RemotePolicy
from esper.urza import service as urza_service
from esper.urza.store import KernelStore
from tests.integration.test_tamiyo_server import WIDTH, _artifact, tamiyo
from tests.integration.test_urza import urza_config

pytestmark = pytest.mark.integration
WAIT_S = 60.0
REF = "BP-IA3@1.0.0"


@pytest.fixture
async def urza_with_kernel(fresh_database, fresh_bucket, kafka_bootstrap):
    config = urza_config(fresh_database, fresh_bucket, kafka_bootstrap)
    running = await start_server(urza_service.SPEC, config)
    store = KernelStore(config.s3_endpoint, config.s3_access_key, config.s3_secret_key,
                        config.s3_bucket, region=config.s3_region)
    shape = common_pb2.SlotShape(kind=common_pb2.SLOT_KIND_FEATURES, channels=WIDTH)
    spec = get_builtin(REF)
    data = pack_kernel(spec, shape, build_seed(spec, shape, seed=3))
    await store.put(data)
    async with UrzaClient(running.address) as urza:
        kernel, _ = await urza.register_kernel(_artifact(REF, data, store, params=WIDTH))
    try:
        yield running, kernel, data
    finally:
        store.close()
        await running.stop(0)


async def test_fetcher_downloads_and_verifies(urza_with_kernel) -> None:
    running, kernel, data = urza_with_kernel
    fetch = UrzaKernelFetcher(running.address)
    try:
        assert await asyncio.to_thread(fetch, kernel.kernel_id) == data
        with pytest.raises(ServiceError) as refused:
            await asyncio.to_thread(fetch, "k-0000000000000000")
        assert refused.value.code == grpc.StatusCode.NOT_FOUND and not refused.value.unreachable
    finally:
        fetch.close()


def _train(tamiyo_address: str, urza_address: str, stop: threading.Event, acks: list) -> str:
    """Trains until stopped; returns the kernel id of the seed in slot "0" at the end."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    session = attach(model, optimizer, RemotePolicy(tamiyo_address), slots=["0"],
                     example_input=torch.zeros(2, 8), urza=urza_address,
                     config=TolariaConfig(run_id="run-tolaria-urza", progress=False,
                                          on_outage="none"))
    session.ack_listeners.append(acks.append)
    x = torch.randn(64, 8)
    y = x[:, :3].argmax(-1)
    steps = 0
    while not stop.is_set() and steps < 20_000:
        optimizer.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        steps += 1
        last = steps % 10 == 0
        session.step(loss, out, y, last_in_epoch=last)
        if last:  # a flat validation loss: Tamiyo sees a plateau and germinates
            session.end_epoch({"val_loss": 1.0, "val_accuracy": 0.5})
    session.close()
    return session.model.slot("0").record.kernel_id


async def test_remote_germination_with_an_urza_kernel(urza_with_kernel) -> None:
    running, kernel, _data = urza_with_kernel
    async with tamiyo(urza_address=running.address, urza_timeout_s=5.0) as (t_running, _s, _c):
        stop, acks = threading.Event(), []
        worker = asyncio.ensure_future(asyncio.to_thread(
            _train, t_running.address, running.address, stop, acks))
        try:
            for _ in range(int(WAIT_S / 0.1)):
                if any(a.reason.startswith("germinated") for a in acks) or worker.done():
                    break
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            kernel_in_slot = await worker
    germinated = [a for a in acks if a.reason.startswith("germinated")]
    assert germinated, [(a.status, a.reason) for a in acks]
    assert germinated[0].status == AckStatus.ACK_STATUS_APPLIED and germinated[0].seed_id
    assert REF in germinated[0].reason
    assert kernel_in_slot == kernel.kernel_id
