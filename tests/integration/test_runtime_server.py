"""The shared server runtime, for real: health, reflection, metrics, graceful shutdown."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from esper.runtime import errors
from esper.runtime.config import ServerConfig
from esper.runtime.server import ServiceSpec, StartupError, start_server

pytestmark = pytest.mark.integration

SLOW_SERVICE = "test.Slow"


def _slow_spec(release: asyncio.Event, started: asyncio.Event) -> ServiceSpec:
    async def sleep(request: bytes, context) -> bytes:
        started.set()
        await release.wait()
        return b"done:" + request

    async def count(request: bytes, context):
        for i in range(int(request)):
            yield str(i).encode()

    async def echo(requests, context):
        async for request in requests:
            yield request

    async def start(config, server):
        same = (lambda b: b, lambda b: b)
        handler = grpc.method_handlers_generic_handler(
            SLOW_SERVICE,
            {"Sleep": grpc.unary_unary_rpc_method_handler(sleep, *same),
             "Count": grpc.unary_stream_rpc_method_handler(count, *same),
             "Echo": grpc.stream_stream_rpc_method_handler(echo, *same)},
        )
        server.add_generic_rpc_handlers((handler,))

        async def close():
            return None

        return close

    return ServiceSpec("slow", ServerConfig, (SLOW_SERVICE,), start)


async def _health(channel, service="") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return reply.status


async def test_health_reflection_metrics_and_graceful_shutdown():
    release, started = asyncio.Event(), asyncio.Event()
    running = await start_server(_slow_spec(release, started), ServerConfig(port=0, metrics_port=0))
    async with grpc.aio.insecure_channel(running.address) as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert await _health(channel, SLOW_SERVICE) == health_pb2.HealthCheckResponse.SERVING

        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = set()
        async for reply in replies:
            names |= {s.name for s in reply.list_services_response.service}
        assert {SLOW_SERVICE, "grpc.health.v1.Health"} <= names

        counted = [m async for m in channel.unary_stream(f"/{SLOW_SERVICE}/Count")(b"3")]
        assert counted == [b"0", b"1", b"2"]

        async def requests():
            for m in (b"a", b"b"):
                yield m

        echoed = [m async for m in channel.stream_stream(f"/{SLOW_SERVICE}/Echo")(requests())]
        assert echoed == [b"a", b"b"]

        call = channel.unary_unary(f"/{SLOW_SERVICE}/Sleep")(b"x", timeout=10)
        await started.wait()
        stopping = asyncio.create_task(running.stop(grace=5))
        await asyncio.sleep(0.2)
        # Health flips first; the in-flight RPC is still allowed to finish.
        assert running.health._server_status[""] == health_pb2.HealthCheckResponse.NOT_SERVING
        release.set()
        assert await call == b"done:x"
        await stopping

    url = f"http://127.0.0.1:{running.metrics_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
    for method in ("Sleep", "Count", "Echo"):
        assert f'esper_rpc_total{{code="OK",method="{method}",service="Slow"}} 1.0' in body


async def test_port_in_use_fails_fast_naming_port():
    release, started = asyncio.Event(), asyncio.Event()
    first = await start_server(_slow_spec(release, started), ServerConfig(port=0, metrics_port=-1))
    try:
        with pytest.raises(StartupError, match="port"):
            await start_server(_slow_spec(release, started), ServerConfig(port=first.port, metrics_port=-1))
    finally:
        await first.stop(0)


async def test_failed_start_closes_what_the_service_started():
    import socket

    closed = []

    async def start(config, server):
        async def close():
            closed.append(True)

        return close

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        spec = ServiceSpec("probe", ServerConfig, ("test.Probe",), start)
        with pytest.raises(StartupError, match="metrics_port"):
            await start_server(spec, ServerConfig(port=0, metrics_port=busy))
    assert closed == [True]


async def test_domain_errors_become_statuses_and_the_rest_internal_over_the_wire():
    """esper.runtime.errors on a real server: the status and message of a domain error,
    after a streamed response too; INTERNAL without details for anything else."""
    failures = {
        b"field": errors.InvalidArgument("page_token", "malformed"),
        b"missing": errors.NotFound("run_id: no run 'x'"),
        b"passed-on": errors.StatusError(grpc.StatusCode.OUT_OF_RANGE, "Urza: too far"),
        b"bug": KeyError("secret internals"),
    }

    class Failing:
        async def Fail(self, request: bytes, context) -> bytes:
            raise failures[request]

        async def FailLater(self, request: bytes, context):
            yield b"first"
            raise failures[request]

    failing = Failing()
    fail = errors.handle_errors(Failing.Fail)
    fail_later = errors.handle_errors(Failing.FailLater)

    async def start(config, server):
        same = (lambda b: b, lambda b: b)
        handler = grpc.method_handlers_generic_handler("test.Failing", {
            "Fail": grpc.unary_unary_rpc_method_handler(
                lambda request, context: fail(failing, request, context), *same),
            "FailLater": grpc.unary_stream_rpc_method_handler(
                lambda request, context: fail_later(failing, request, context), *same),
        })
        server.add_generic_rpc_handlers((handler,))

        async def close():
            return None

        return close

    spec = ServiceSpec("failing", ServerConfig, ("test.Failing",), start)
    running = await start_server(spec, ServerConfig(port=0, metrics_port=-1))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            unary = channel.unary_unary("/test.Failing/Fail")
            streaming = channel.unary_stream("/test.Failing/FailLater")
            expected = {
                b"field": (grpc.StatusCode.INVALID_ARGUMENT, "page_token: malformed"),
                b"missing": (grpc.StatusCode.NOT_FOUND, "run_id: no run 'x'"),
                b"passed-on": (grpc.StatusCode.OUT_OF_RANGE, "Urza: too far"),
                b"bug": (grpc.StatusCode.INTERNAL, errors.INTERNAL_MESSAGE),
            }
            for request, (code, message) in expected.items():
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await unary(request, timeout=10)
                assert (err.value.code(), err.value.details()) == (code, message)
                got = []
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for response in streaming(request, timeout=10):
                        got.append(response)
                assert got == [b"first"]
                assert (err.value.code(), err.value.details()) == (code, message)
    finally:
        await running.stop(0)
