"""Per-identity quotas against real servers: Urza's RecordFieldReport and Tezzeret's
SubmitCompile answer RESOURCE_EXHAUSTED with a clear message once an identity's quota is
used up (other identities unaffected, nothing of the refused call stored); Tamiyo drops a
session's field reports beyond its quota with a `quota_exceeded` warning."""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from esper.blueprints import get_builtin
from esper.leyline.v1 import lifecycle_pb2 as lc
from esper.leyline.v1 import telemetry_pb2 as tm
from esper.leyline.v1 import tezzeret_pb2, urza_pb2
from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import TezzeretClient, UrzaClient
from esper.runtime.auth import token_digest
from esper.runtime.server import start_server
from esper.tezzeret import service as tezzeret_service
from tests.integration.test_tamiyo_server import open_session, tamiyo
from tests.integration.test_tezzeret_service import forge, tiny_target  # noqa: F401 - fixture
from tests.integration.test_urza import close_urza, open_urza, urza_config

pytestmark = pytest.mark.integration
REF = "BP-LORA-R8@1.0.0"
SPEC = get_builtin(REF)


def report(seed: str) -> urza_pb2.RecordFieldReportRequest:
    return urza_pb2.RecordFieldReportRequest(report=tm.FieldReport(
        run_id="run-q", seed_id=seed, blueprint_ref=REF, final_stage=lc.SEED_STAGE_FOSSILIZED,
        val_accuracy_before=0.5, val_accuracy_after=0.6))


async def test_field_reports_to_urza_are_bounded_per_identity(
        fresh_database, fresh_bucket, kafka_bootstrap, tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"tamiyo {token_digest('t-token')}\nadmin {token_digest('a-token')}\n")
    config = urza_config(fresh_database, fresh_bucket, kafka_bootstrap, auth=True,
                         auth_tokens_file=str(tokens), field_reports_per_minute=3)
    urza = await open_urza(config)
    clients = [UrzaClient(urza.running.address, security=ChannelSecurity(token=t)) for t in ("t-token", "a-token")]
    try:
        tamiyo_stub, admin_stub = (c.stub for c in clients)
        for seed in ("s1", "s2", "s3"):
            await tamiyo_stub.RecordFieldReport(report(seed))
        with pytest.raises(grpc.aio.AioRpcError) as flooded:
            await tamiyo_stub.RecordFieldReport(report("s4"))
        assert flooded.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "RecordFieldReport: quota of 3 per 60 s for 'tamiyo' is used up; retry in" in flooded.value.details()
        recorded = await admin_stub.RecordFieldReport(report("s5"))  # another identity's own quota
        assert recorded.blueprint.times_used == 4  # s1-s3 and s5: the refused s4 left no trace
    finally:
        for client in clients:
            await client.close()
        await close_urza(urza)


async def test_compile_submissions_are_bounded_per_identity(forge) -> None:  # noqa: F811
    config = dataclasses.replace(forge.config, port=0, compile_jobs_per_minute=2)
    server = await start_server(tezzeret_service.SPEC, config)
    client = TezzeretClient(server.address, security=ChannelSecurity())
    try:
        for channels in (8, 16):
            await client.stub.SubmitCompile(tezzeret_pb2.SubmitCompileRequest(
                blueprint_ref=REF, targets=[tiny_target(SPEC, channels)]))
        with pytest.raises(grpc.aio.AioRpcError) as flooded:
            await client.stub.SubmitCompile(tezzeret_pb2.SubmitCompileRequest(
                blueprint_ref=REF, targets=[tiny_target(SPEC, 32)]))
        assert flooded.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "SubmitCompile: quota of 2 per 60 s for 'anonymous' is used up" in flooded.value.details()
        jobs = await client.stub.ListJobs(tezzeret_pb2.ListJobsRequest(blueprint_ref=REF))
        assert len(jobs.jobs) == 2
    finally:
        await client.close()
        await server.stop(0)


async def test_session_field_reports_beyond_the_quota_are_dropped_with_a_warning() -> None:
    async with tamiyo(field_reports_per_minute=1, publish_events=False) as (_, stub, _c):
        client, _ = await open_session(stub, "run-quota")
        for seed in ("s1", "s2"):
            await client.send(field_report=tm.FieldReport(
                run_id="run-quota", seed_id=seed, blueprint_ref=REF, final_stage=lc.SEED_STAGE_CULLED))
        warning = (await client.next("warning")).warning
        assert warning.code == "quota_exceeded" and "quota of 1 per 60 s" in warning.detail
        await client.close()
