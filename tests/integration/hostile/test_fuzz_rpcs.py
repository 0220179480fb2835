"""Every RPC of the four services, fuzzed against real servers (PostgreSQL, the broker and
the object store behind them): requests generated from the proto descriptors (hypothesis,
see protofuzz.py) and raw garbage bytes. Each call must end with a clean status — never
UNKNOWN or INTERNAL, which say the server failed on what a client sent — garbage that does
not parse must be INVALID_ARGUMENT, and afterwards the server must still be SERVING and
answer a known-good call correctly."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2
from hypothesis import strategies as st

from esper.blueprints import get_builtin
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2, nissa_pb2, tamiyo_pb2, tezzeret_pb2, urza_pb2
from esper.leyline.v1 import telemetry_pb2 as tm
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.nissa.config import NissaConfig
from esper.nissa.service import SPEC as NISSA
from esper.rpc.channels import ChannelSecurity, open_channel
from esper.runtime.infra import free_port
from esper.runtime.server import RunningServer, start_server
from esper.tamiyo import service as tamiyo_service
from esper.tezzeret import service as tezzeret_service
from esper.tezzeret.config import TezzeretConfig
from esper.urza import service as urza_service
from tests.integration.hostile.protofuzz import examples, messages, one_field_changed
from tests.integration.test_tamiyo_server import open_message, snap, tamiyo_config
from tests.integration.test_tezzeret_service import tiny_target
from tests.integration.test_urza import custom_spec, urza_config
from tests.unit.test_tamiyo_support import graph, seed

pytestmark = pytest.mark.integration

# Examples per RPC: enough to reach the nasty values, small enough for a 2-core machine.
FUZZ_EXAMPLES = 30
GARBAGE_EXAMPLES = 15
# Server-streaming and bidirectional calls: how long to read before hanging up (a watch
# stream legitimately waits for events).
STREAM_READ_S = 0.5
CALL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str = ""


UNCLEAN = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
# The client's own gRPC core ends a stream INTERNAL with this text when it is still writing
# as the server's status arrives (the server refused an early message): not the server's
# answer, which for an INTERNAL would be one of its own messages.
CLIENT_CORE_RACE = "Internal error from Core"


def unclean(outcome: Outcome) -> bool:
    return outcome.code in UNCLEAN and outcome.details != CLIENT_CORE_RACE


SERVICES = {
    "urza": urza_pb2.DESCRIPTOR.services_by_name["UrzaService"],
    "tezzeret": tezzeret_pb2.DESCRIPTOR.services_by_name["TezzeretService"],
    "tamiyo": tamiyo_pb2.DESCRIPTOR.services_by_name["TamiyoService"],
    "nissa": nissa_pb2.DESCRIPTOR.services_by_name["NissaService"],
}
RPCS = [(name, method.name) for name, service in SERVICES.items() for method in service.methods]


@dataclass
class Stack:
    servers: dict[str, RunningServer]
    channels: dict[str, grpc.aio.Channel]


@pytest.fixture(scope="module")
async def stack(postgres_server, object_store_server, kafka_bootstrap) -> AsyncIterator[Stack]:
    suffix = uuid.uuid4().hex[:12]
    urza_db, nissa_db, bucket = f"test_fuzz_u_{suffix}", f"test_fuzz_n_{suffix}", f"test-fuzz-{suffix}"
    postgres_server.ensure_database(urza_db)
    postgres_server.ensure_database(nissa_db)
    object_store_server.ensure_bucket(bucket)
    servers: dict[str, RunningServer] = {}
    channels: dict[str, grpc.aio.Channel] = {}
    try:
        servers["urza"] = await start_server(urza_service.SPEC, urza_config(
            postgres_server.dsn(urza_db), object_store_server.endpoint(bucket), kafka_bootstrap))
        urza_address = servers["urza"].address
        servers["tezzeret"] = await start_server(tezzeret_service.SPEC, TezzeretConfig(
            port=free_port(), metrics_port=-1, postgres_dsn=postgres_server.dsn(urza_db),
            kafka_bootstrap=kafka_bootstrap, urza_address=urza_address, workers=0,
            consumer_group=f"tezzeret-fuzz-{suffix}", dependency_timeout_s=2.0))
        servers["tamiyo"] = await start_server(tamiyo_service.SPEC, tamiyo_config(
            urza_address=urza_address, tezzeret_address="", publish_events=False, urza_timeout_s=0.5))
        nissa = NissaConfig(port=0, metrics_port=-1, postgres_dsn=postgres_server.dsn(nissa_db),
                            kafka_bootstrap=kafka_bootstrap, consumer_group=f"nissa-fuzz-{suffix}",
                            ingest_workers=0)
        servers["nissa"] = await start_server(NISSA, nissa)
        for name, server in servers.items():
            channels[name] = open_channel(server.address, security=ChannelSecurity(), retry_attempts=1)
        yield Stack(servers, channels)
    finally:
        for channel in channels.values():
            await channel.close()
        for server in reversed(list(servers.values())):
            await server.stop(0)
        postgres_server.drop_database(urza_db)
        postgres_server.drop_database(nissa_db)


# -- calling any RPC with any bytes --------------------------------------------------------

def _path(service: str, method: str) -> str:
    return f"/{SERVICES[service].full_name}/{method}"


def _raw(b: bytes) -> bytes:
    return b


async def _status(call) -> Outcome:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return Outcome(exc.code(), exc.details() or "")
    return Outcome(grpc.StatusCode.OK)


async def _read_stream(call) -> Outcome:
    """Read a response stream for up to STREAM_READ_S; a stream still open then is fine."""
    async def drain():
        async for _ in call:
            pass
    try:
        await asyncio.wait_for(drain(), STREAM_READ_S)
    except TimeoutError:
        call.cancel()
        return Outcome(grpc.StatusCode.OK)
    except grpc.aio.AioRpcError as exc:
        return Outcome(exc.code(), exc.details() or "")
    return Outcome(grpc.StatusCode.OK)


async def send(channel: grpc.aio.Channel, service: str, method: str, requests: list[bytes]) -> Outcome:
    """Send serialized `requests` (one, or a stream) to the RPC; its final status."""
    descriptor = SERVICES[service].methods_by_name[method]
    path = _path(service, method)
    kind = (descriptor.client_streaming, descriptor.server_streaming)
    if kind == (False, False):
        return await _status(channel.unary_unary(path, _raw, _raw)(requests[0], timeout=CALL_TIMEOUT_S))
    if kind == (False, True):
        return await _read_stream(channel.unary_stream(path, _raw, _raw)(requests[0], timeout=CALL_TIMEOUT_S))

    # Client streams are written one by one and writing stops once the server has ended
    # the call: a request iterator that keeps going makes the client's own gRPC core end
    # the call INTERNAL ("Internal error from Core"), which is not the server's answer.
    factory = channel.stream_unary if kind == (True, False) else channel.stream_stream
    call = factory(path, _raw, _raw)(timeout=CALL_TIMEOUT_S)
    for request in requests:
        if call.done():
            break
        try:
            await call.write(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            break
    if not call.done():
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.done_writing()
    return await (_status(call) if kind == (True, False) else _read_stream(call))


# -- what a live, correct server answers ---------------------------------------------------

async def _healthy(channel: grpc.aio.Channel) -> None:
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                health_pb2.HealthCheckRequest.SerializeToString,
                                health_pb2.HealthCheckResponse.FromString)
    response = await check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def known_good(stack: Stack, service: str) -> None:
    channel = stack.channels[service]
    await _healthy(channel)

    def unary(method: str, response_cls):
        request_cls = GetMessageClass(SERVICES[service].methods_by_name[method].input_type)
        return channel.unary_unary(_path(service, method), request_cls.SerializeToString, response_cls.FromString)

    if service == "urza":
        listed = await unary("ListBlueprints", urza_pb2.ListBlueprintsResponse)(
            urza_pb2.ListBlueprintsRequest(page_size=5), timeout=CALL_TIMEOUT_S)
        assert listed.blueprints, "the built-in catalogue is listed"
        first = listed.blueprints[0].spec
        got = await unary("GetBlueprint", urza_pb2.GetBlueprintResponse)(
            urza_pb2.GetBlueprintRequest(blueprint_ref=f"{first.name}@{first.version}"), timeout=CALL_TIMEOUT_S)
        assert got.blueprint.spec.name == first.name
    elif service == "tezzeret":
        jobs = await unary("ListJobs", tezzeret_pb2.ListJobsResponse)(
            tezzeret_pb2.ListJobsRequest(page_size=5), timeout=CALL_TIMEOUT_S)
        assert len(jobs.jobs) <= 5
    elif service == "tamiyo":
        decided = await unary("Decide", tamiyo_pb2.DecideResponse)(tamiyo_pb2.DecideRequest(
            snapshot=snap(10, "run-known-good", [seed("s1", SeedStage.SEED_STAGE_GERMINATED)]),
            graph=graph(4)), timeout=CALL_TIMEOUT_S)
        assert decided.decision.WhichOneof("action") == "advance"
        assert decided.decision.advance.slot_id == "s1"
    else:
        runs = await unary("ListRuns", nissa_pb2.ListRunsResponse)(
            nissa_pb2.ListRunsRequest(page_size=5), timeout=CALL_TIMEOUT_S)
        assert len(runs.runs) <= 5


# -- the tests -----------------------------------------------------------------------------

def _valid_bases() -> dict[tuple[str, str], Message]:
    """A valid request per RPC that stores or looks something up: the fuzz overwrites some
    of its fields with generated values, so the nasty ones reach the code past the
    first check (the database, the policy) instead of being refused at the door."""
    ref = "BP-LORA-R8@1.0.0"
    spec = get_builtin("BP-MLP-GELU")
    return {
        ("urza", "CreateBlueprint"): urza_pb2.CreateBlueprintRequest(spec=custom_spec(name="BP-FUZZ")),
        ("urza", "GetBlueprint"): urza_pb2.GetBlueprintRequest(blueprint_ref=ref),
        ("urza", "RetireBlueprint"): urza_pb2.RetireBlueprintRequest(blueprint_ref="BP-FUZZ@1.0.0", reason="r"),
        ("urza", "UpdateBlueprintState"): urza_pb2.UpdateBlueprintStateRequest(
            blueprint_ref="BP-FUZZ@1.0.0", state=bp.BLUEPRINT_STATE_COMPILING, reason="r"),
        ("urza", "SearchKernels"): urza_pb2.SearchKernelsRequest(
            shape=common_pb2.SlotShape(kind=common_pb2.SLOT_KIND_FEATURES, channels=16)),
        ("urza", "RecordFieldReport"): urza_pb2.RecordFieldReportRequest(report=tm.FieldReport(
            run_id="run-fuzz", seed_id="s1", blueprint_ref=ref, final_stage=SeedStage.SEED_STAGE_FOSSILIZED,
            val_accuracy_before=0.5, val_accuracy_after=0.6)),
        ("tezzeret", "SubmitCompile"): tezzeret_pb2.SubmitCompileRequest(
            blueprint_ref="BP-MLP-GELU@1.0.0", targets=[tiny_target(spec)]),
        ("tamiyo", "Decide"): tamiyo_pb2.DecideRequest(
            snapshot=snap(10, "run-fuzz", [seed("s1", SeedStage.SEED_STAGE_GERMINATED)]), graph=graph(4)),
        ("nissa", "GetRunSummary"): nissa_pb2.GetRunSummaryRequest(run_id="run-fuzz"),
        ("nissa", "ListEvents"): nissa_pb2.ListEventsRequest(run_id="run-fuzz"),
        ("nissa", "StreamEvents"): nissa_pb2.StreamEventsRequest(run_id="run-fuzz"),
    }


def _over(base: Message, generated: Message) -> Message:
    merged = type(base)()
    merged.CopyFrom(base)
    merged.MergeFrom(generated)
    return merged


def _requests_strategy(service: str, method: str) -> st.SearchStrategy[list[bytes]]:
    descriptor = SERVICES[service].methods_by_name[method]
    one = messages(descriptor.input_type)
    base = _valid_bases().get((service, method))
    if base is not None:
        one = st.one_of(one_field_changed(base), one.map(functools.partial(_over, base)), one)
    if not descriptor.client_streaming:
        return one.map(lambda m: [m.SerializeToString()])
    many = st.lists(one, min_size=1, max_size=4)
    if (service, method) == ("tamiyo", "Session"):
        # Half the streams open properly first, so the fuzz reaches past the open.
        opened = many.map(lambda ms: [tamiyo_pb2.SessionRequest(open=open_message(f"run-fz-{len(ms)}")), *ms])
        many = st.one_of(many, opened)
    return many.map(lambda ms: [m.SerializeToString() for m in ms])


@pytest.mark.parametrize(("service", "method"), RPCS, ids=[f"{s}.{m}" for s, m in RPCS])
async def test_generated_requests_get_clean_statuses(stack: Stack, service: str, method: str):
    failures = []
    for requests in examples(_requests_strategy(service, method), FUZZ_EXAMPLES):
        outcome = await send(stack.channels[service], service, method, requests)
        if unclean(outcome):
            failures.append((outcome, requests))
    assert not failures, f"{len(failures)} unclean statuses, first: {failures[0][0]} for {failures[0][1]!r:.300}"
    await known_good(stack, service)


@pytest.mark.parametrize(("service", "method"), RPCS, ids=[f"{s}.{m}" for s, m in RPCS])
async def test_garbage_bytes_get_invalid_argument(stack: Stack, service: str, method: str):
    request_cls = GetMessageClass(SERVICES[service].methods_by_name[method].input_type)
    garbage = [b"\xff\xff\xff\xff garbage", b"\x0a\xff\xff\xff\xff\x0f", b"\x08" * 11,
               *examples(st.binary(min_size=1, max_size=256), GARBAGE_EXAMPLES)]
    for data in garbage:
        try:
            request_cls.FromString(data)
            parses = True
        except DecodeError:
            parses = False
        outcome = await send(stack.channels[service], service, method, [data])
        assert not unclean(outcome), (outcome, data)
        if not parses:
            assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, (outcome, data)
    await known_good(stack, service)
