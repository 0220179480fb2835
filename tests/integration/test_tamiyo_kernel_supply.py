"""Tamiyo asks Tezzeret for kernels when Urza has none; with Tezzeret unreachable it does
not germinate, says why in the rationale, and its sessions carry on. (The path where
Tezzeret compiles and the seeds grow runs in tests/e2e/test_golden_path.py.)"""

from __future__ import annotations

import asyncio

import pytest

from esper.leyline.v1 import tamiyo_pb2
from esper.runtime.infra import free_port
from esper.runtime.server import start_server
from esper.urza import service as urza_service
from tests.integration.test_tamiyo_server import WIDTH, open_session, snap, tamiyo
from tests.integration.test_urza import urza_config
from tests.unit.test_tamiyo_support import graph

pytestmark = pytest.mark.integration
WAIT_S = 30.0


@pytest.fixture
async def empty_urza(fresh_database, fresh_bucket, kafka_bootstrap):
    """Urza with the built-in blueprints and no kernel, as on a fresh `esper up`."""
    config = urza_config(fresh_database, fresh_bucket, kafka_bootstrap)
    running = await start_server(urza_service.SPEC, config)
    try:
        yield running
    finally:
        await running.stop(0)


async def test_unreachable_tezzeret_no_germination_rationale_says_so_session_unaffected(empty_urza):
    tezzeret = f"127.0.0.1:{free_port()}"  # nothing listens there
    async with tamiyo(urza_address=empty_urza.address, urza_timeout_s=5.0, tezzeret_address=tezzeret,
                      compile_request_timeout_s=1.0) as (_, stub, _c):
        client, accept = await open_session(stub, "run-no-forge")  # asks for compiles
        assert accept.run_id == "run-no-forge"

        async def rationale() -> str:
            while True:
                d = (await stub.Decide(tamiyo_pb2.DecideRequest(
                    snapshot=snap(100, "run-no-forge-unary", plateau_epochs=10),
                    graph=graph(4, width=WIDTH)))).decision
                assert d.WhichOneof("action") == "wait", d
                if "unreachable" in d.rationale:
                    return d.rationale
                await asyncio.sleep(0.2)

        text = await asyncio.wait_for(rationale(), WAIT_S)
        assert "no kernel" in text and f"Tezzeret at {tezzeret}" in text
        # The session carries on: it takes snapshots and keeps its heartbeats coming.
        await client.send(snapshot=snap(10, "run-no-forge"))
        await client.send(snapshot=snap(20, "run-no-forge"))
        beat = await client.next("heartbeat", skip_heartbeats=False)
        assert beat.heartbeat.sequence >= 1
        await client.close()


async def test_without_tezzeret_configured_the_rationale_says_so(empty_urza):
    async with tamiyo(urza_address=empty_urza.address, urza_timeout_s=5.0, tezzeret_address="") as (_, stub, _c):
        d = (await stub.Decide(tamiyo_pb2.DecideRequest(
            snapshot=snap(100, "run-no-tezzeret", plateau_epochs=10), graph=graph(4, width=WIDTH)))).decision
        assert d.WhichOneof("action") == "wait"
        assert "tezzeret_address is empty" in d.rationale
