"""Tamiyo's field reports reach Urza's blueprint aggregates although Urza is away when
they are sent: they are retried until Urza is back, and a retry of a report Urza already
has changes nothing (Urza keys reports by run id and seed id). A report Urza refuses is
not retried."""

from __future__ import annotations

import asyncio

import pytest

from esper.leyline.v1 import lifecycle_pb2, telemetry_pb2
from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import UrzaClient
from esper.runtime.infra import free_port
from esper.runtime.server import start_server
from esper.tamiyo import urza_candidates
from esper.tamiyo.urza_candidates import UrzaCandidates
from esper.tolaria.policy.remote import RemotePolicy
from esper.urza import service as urza_service
from tests.fixtures.waiting import eventually, until
from tests.integration.test_tamiyo_server import open_message, tamiyo
from tests.integration.test_urza import urza_config

pytestmark = pytest.mark.integration
BLUEPRINT = "BP-MLP-GELU@1.0.0"


def _report(seed_id: str, stage=lifecycle_pb2.SEED_STAGE_FOSSILIZED) -> telemetry_pb2.FieldReport:
    return telemetry_pb2.FieldReport(run_id="run-retry", seed_id=seed_id, blueprint_ref=BLUEPRINT,
                                     final_stage=stage, val_accuracy_before=0.5,
                                     val_accuracy_after=0.6)


async def test_field_reports_are_retried_until_urza_is_back_and_recorded_once(
        fresh_database, fresh_bucket, kafka_bootstrap, monkeypatch):
    monkeypatch.setattr(urza_candidates, "FORWARD_BACKOFF_S", (0.1, 0.5))
    port = free_port()  # Urza will listen here; nothing does yet
    forwarder = UrzaCandidates(f"127.0.0.1:{port}", timeout_s=1.0, cache_s=1.0)
    try:
        forwarder.forward_field_report(_report("seed-1"))
        await asyncio.sleep(1.5)  # several tries while Urza is away
        assert (forwarder.reports_recorded, forwarder.reports_lost) == (0, 0)
        running = await start_server(urza_service.SPEC, urza_config(
            fresh_database, fresh_bucket, kafka_bootstrap, port=port))
        try:
            assert await until(lambda: forwarder.reports_recorded == 1)
            # The same report again (as after an answer lost on the way back): recorded once.
            forwarder.forward_field_report(_report("seed-1"))
            assert await until(lambda: forwarder.reports_recorded == 2)
            async with UrzaClient(running.address, security=ChannelSecurity()) as urza:
                assert (await urza.get_blueprint(BLUEPRINT)).times_used == 1
            # A refusal (no final stage) is not retried.
            forwarder.forward_field_report(_report("seed-2", lifecycle_pb2.SEED_STAGE_UNSPECIFIED))
            assert await until(lambda: forwarder.reports_lost == 1)
            assert forwarder.reports_recorded == 2
        finally:
            await running.stop(0)
    finally:
        await forwarder.close()


async def test_field_reports_queued_just_before_close_reach_urza(
        fresh_database, fresh_bucket, kafka_bootstrap):
    """What session.close() does: it settles the live seeds (each settled seed's field report
    is queued on the remote policy) and closes the policy at once. The stream delivers the
    queued reports and half-closes before it ends; cancelling it at close lost them."""
    urza = await start_server(urza_service.SPEC, urza_config(fresh_database, fresh_bucket,
                                                             kafka_bootstrap))
    try:
        async with tamiyo(urza_address=urza.address) as (running, _stub, _channel):
            policy = RemotePolicy(running.address)
            policy.start(open_message("run-close"))
            assert await until(lambda: policy.outage() is None, timeout_s=30)
            for i in range(3):
                policy.field_report(telemetry_pb2.FieldReport(
                    run_id="run-close", seed_id=f"seed-{i}", blueprint_ref=BLUEPRINT,
                    final_stage=lifecycle_pb2.SEED_STAGE_FOSSILIZED))
            await asyncio.to_thread(policy.close)  # at once, as session.close() does
            async with UrzaClient(urza.address, security=ChannelSecurity()) as client:
                async def used() -> int:
                    return (await client.get_blueprint(BLUEPRINT)).times_used
                assert await eventually(lambda: _is(used, 3), timeout_s=30) is True
    finally:
        await urza.stop(0)


async def _is(probe, value) -> bool:
    return await probe() == value
