"""esper.rpc.clients against small in-process gRPC servers on loopback: one error
translation (ServiceError: unreachable vs refused), list_* methods that walk every page
(and stop at `limit`), deadlines, kernel downloads reassembled and digest-checked, and the
blocking health check. The real servers are exercised through the same clients by the
service tests (test_urza_cli, test_tamiyo_server, test_tolaria_*, test_tezzeret_service)."""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from esper.leyline.v1 import (
    blueprint_pb2,
    nissa_pb2,
    nissa_pb2_grpc,
    telemetry_pb2,
    tezzeret_pb2,
    tezzeret_pb2_grpc,
    urza_pb2,
    urza_pb2_grpc,
)
from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import NissaClient, UrzaClient
from esper.rpc.errors import ServiceError
from esper.rpc.health import check_health
from esper.runtime.infra import free_port

pytestmark = pytest.mark.integration
PLAIN = ChannelSecurity()
DATA = bytes(range(256)) * 40  # 10 KiB of kernel bytes


class FakeUrza(urza_pb2_grpc.UrzaServiceServicer):
    """25 blueprints paged by an offset token; NOT_FOUND for unknown refs; a slow
    GetKernel; DownloadKernel in 1 KiB chunks (optionally with a wrong digest)."""

    def __init__(self) -> None:
        self.names = [f"BP-{i:02d}" for i in range(25)]
        self.page_sizes: list[int] = []
        self.wrong_digest = False

    async def ListBlueprints(self, request, context):
        self.page_sizes.append(request.page_size)
        start = int(request.page_token or 0)
        end = min(start + request.page_size, len(self.names))
        records = [blueprint_pb2.BlueprintRecord(spec=blueprint_pb2.BlueprintSpec(name=n, version="1.0.0"))
                   for n in self.names[start:end]]
        return urza_pb2.ListBlueprintsResponse(
            blueprints=records, next_page_token=str(end) if end < len(self.names) else "")

    async def GetBlueprint(self, request, context):
        await context.abort(grpc.StatusCode.NOT_FOUND, f"blueprint_ref: no blueprint {request.blueprint_ref}")

    async def GetKernel(self, request, context):
        await asyncio.sleep(2.0)
        return urza_pb2.GetKernelResponse()

    async def DownloadKernel(self, request, context):
        digest = hashlib.sha256(b"other" if self.wrong_digest else DATA).hexdigest()
        size = request.chunk_size
        for offset in range(0, len(DATA), size):
            yield urza_pb2.DownloadKernelResponse(
                offset=offset, data=DATA[offset:offset + size], total_size=len(DATA), sha256=digest,
                last=offset + size >= len(DATA))


class FakeNissa(nissa_pb2_grpc.NissaServiceServicer):
    """Seven runs in pages of at most three, whatever the page size asked."""

    async def ListRuns(self, request, context):
        start = int(request.page_token or 0)
        end = min(start + min(request.page_size, 3), 7)
        return nissa_pb2.ListRunsResponse(runs=[nissa_pb2.RunInfo(run_id=f"run-{i}") for i in range(start, end)],
                                          next_page_token=str(end) if end < 7 else "")


@pytest.fixture
async def servers():
    server = grpc.aio.server()
    urza = FakeUrza()
    urza_pb2_grpc.add_UrzaServiceServicer_to_server(urza, server)
    nissa_pb2_grpc.add_NissaServiceServicer_to_server(FakeNissa(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", urza
    finally:
        await server.stop(0)


async def test_list_walks_every_page_and_stops_at_limit(servers) -> None:
    address, urza = servers
    async with UrzaClient(address, security=PLAIN) as client:
        names = [r.spec.name async for r in client.list_blueprints(urza_pb2.ListBlueprintsRequest(page_size=10))]
        assert names == urza.names and urza.page_sizes == [10, 10, 10]
        urza.page_sizes.clear()
        request = urza_pb2.ListBlueprintsRequest(page_size=10)
        first = [r.spec.name async for r in client.list_blueprints(request, limit=12)]
        assert first == urza.names[:12] and urza.page_sizes == [10, 2]
        assert request.page_token == "" and request.page_size == 10  # the caller's request is untouched
    async with NissaClient(address, security=PLAIN) as nissa:
        runs = [r.run_id async for r in nissa.list_runs()]  # short pages: the token decides, not the size
        assert runs == [f"run-{i}" for i in range(7)]


async def test_refused_and_unreachable_are_one_error(servers) -> None:
    address, _ = servers
    async with UrzaClient(address, security=PLAIN) as client:
        with pytest.raises(ServiceError) as refused:
            await client.get_blueprint("BP-NOPE@1.0.0")
        assert refused.value.code == grpc.StatusCode.NOT_FOUND and not refused.value.unreachable
        assert (refused.value.service, refused.value.address) == ("Urza", address)
        assert str(refused.value) == f"Urza at {address}: NOT_FOUND: blueprint_ref: no blueprint BP-NOPE@1.0.0"
        with pytest.raises(ServiceError) as slow:
            await client.get_kernel("k-1", timeout_s=0.2)  # the call's own deadline
        assert slow.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and slow.value.unreachable
    nowhere = f"127.0.0.1:{free_port()}"
    async with UrzaClient(nowhere, security=PLAIN, timeout_s=2.0) as client:
        with pytest.raises(ServiceError) as down:
            await client.get_blueprint("BP-MLP-GELU@1.0.0")
        assert down.value.unreachable and down.value.address == nowhere
        with pytest.raises(ServiceError) as down_list:  # a list fails on its first page
            [r async for r in client.list_blueprints()]
        assert down_list.value.unreachable
        with pytest.raises(ServiceError) as down_stream:  # and a stream on its first read
            async for _ in client.watch_catalog():
                pass
        assert down_stream.value.unreachable


async def test_download_reassembles_and_checks_the_digest(servers) -> None:
    address, urza = servers
    async with UrzaClient(address, security=PLAIN) as client:
        assert await client.download_kernel("k-1", chunk_bytes=1024) == DATA
        urza.wrong_digest = True
        with pytest.raises(ValueError, match="digest"):
            await client.download_kernel("k-1", chunk_bytes=1024)


async def test_health_check_serving_and_unreachable(servers) -> None:
    address, _ = servers
    # Blocking, as the stack's probes call it: on a thread while this loop serves.
    assert await asyncio.to_thread(check_health, address, security=PLAIN) == "SERVING"
    nowhere = f"127.0.0.1:{free_port()}"
    assert await asyncio.to_thread(check_health, nowhere, security=PLAIN, timeout_s=1.0) == "UNREACHABLE"


class BlockingUrza(urza_pb2_grpc.UrzaServiceServicer):
    """DownloadKernel on a thread-pool server, so a caller may block any event loop."""

    def DownloadKernel(self, request, context):
        yield urza_pb2.DownloadKernelResponse(offset=0, data=DATA, total_size=len(DATA),
                                              sha256=hashlib.sha256(DATA).hexdigest(), last=True)


def test_kernel_fetcher_blocks_with_or_without_a_running_loop(monkeypatch) -> None:
    """Tolaria's fetcher drives the async client from blocking code: a prefetch thread, or
    the training thread of a notebook whose event loop is running (checkpoint resume)."""
    from concurrent.futures import ThreadPoolExecutor

    from esper.tolaria.kernels import UrzaKernelFetcher

    for name in ("ESPER_TLS", "ESPER_TOKEN", "ESPER_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    server = grpc.server(ThreadPoolExecutor(2))
    urza_pb2_grpc.add_UrzaServiceServicer_to_server(BlockingUrza(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        fetch = UrzaKernelFetcher(f"127.0.0.1:{port}", timeout_s=5.0)
        assert fetch("k-1") == DATA

        async def in_a_notebook() -> bytes:
            return fetch("k-1")
        assert asyncio.run(in_a_notebook()) == DATA
        # Many fetches from many threads share the fetcher's one loop and client.
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(lambda _: fetch("k-1"), range(8))) == [DATA] * 8
        fetch.close()
        assert fetch("k-1") == DATA  # a fetch after close starts them again
        fetch.close()
    finally:
        server.stop(0)


def test_kernel_fetches_beside_another_loop_leave_no_closed_loop_errors(caplog) -> None:
    """A training process runs other asyncio loops (the Tamiyo session's thread): fetches
    must not leave gRPC delivering events to a loop they closed ("Event loop is closed")."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from esper.tolaria.kernels import UrzaKernelFetcher

    server = grpc.server(ThreadPoolExecutor(2))
    urza_pb2_grpc.add_UrzaServiceServicer_to_server(BlockingUrza(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    other = asyncio.new_event_loop()
    threading.Thread(target=other.run_forever, daemon=True).start()
    try:
        async def health_calls() -> None:
            from esper.rpc.clients import UrzaClient

            async with UrzaClient(f"127.0.0.1:{port}", timeout_s=5.0) as urza:
                for _ in range(20):
                    await urza.download_kernel("k-1")
                    await asyncio.sleep(0.01)

        busy = asyncio.run_coroutine_threadsafe(health_calls(), other)
        fetch = UrzaKernelFetcher(f"127.0.0.1:{port}", timeout_s=5.0)
        with caplog.at_level("ERROR", logger="asyncio"):
            with ThreadPoolExecutor(2) as pool:
                for _ in range(10):
                    assert pool.submit(fetch, "k-1").result() == DATA
            busy.result(30)
            time.sleep(0.2)
        fetch.close()
        assert not [r for r in caplog.records if "Event loop is closed" in r.getMessage()
                    or (r.exc_info and "Event loop is closed" in str(r.exc_info[1]))]
    finally:
        other.call_soon_threadsafe(other.stop)
        server.stop(0)


class FakeTezzeret(tezzeret_pb2_grpc.TezzeretServiceServicer):
    """Five jobs in pages of two; a submit that is watched through two more stages."""

    def __init__(self) -> None:
        self.jobs = [tezzeret_pb2.CompileJob(job_id=f"j-{i}", blueprint_ref="BP-IA3@1.0.0",
                                             stage=telemetry_pb2.COMPILE_STAGE_QUEUED) for i in range(5)]

    async def ListJobs(self, request, context):
        start = int(request.page_token or 0)
        end = min(start + min(request.page_size, 2), len(self.jobs))
        return tezzeret_pb2.ListJobsResponse(jobs=self.jobs[start:end],
                                             next_page_token=str(end) if end < len(self.jobs) else "")

    async def SubmitCompile(self, request, context):
        if request.blueprint_ref == "BP-NOPE@1.0.0":
            await context.abort(grpc.StatusCode.NOT_FOUND, "blueprint_ref: no blueprint BP-NOPE@1.0.0")
        return tezzeret_pb2.SubmitCompileResponse(job=self.jobs[0])

    async def WatchJob(self, request, context):
        for stage in (telemetry_pb2.COMPILE_STAGE_BUILDING, telemetry_pb2.COMPILE_STAGE_REGISTERED):
            yield tezzeret_pb2.WatchJobResponse(job=tezzeret_pb2.CompileJob(
                job_id=request.job_id, blueprint_ref="BP-IA3@1.0.0", stage=stage))


async def test_tezzeret_cli_pages_streams_and_keeps_its_exit_codes(capsys, monkeypatch) -> None:
    """`esper tezzeret jobs|submit` over TezzeretClient: --limit across pages, --wait
    following the job, a refusal a usage error (2), an unreachable Tezzeret 1."""
    from esper.cli.main import main

    for name in ("ESPER_TLS", "ESPER_TOKEN", "ESPER_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    server = grpc.aio.server()
    tezzeret_pb2_grpc.add_TezzeretServiceServicer_to_server(FakeTezzeret(), server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()

    async def esper(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, ["tezzeret", *argv])  # synchronous, as in a shell
        out, err = capsys.readouterr()
        return code, out, err

    try:
        code, out, _ = await esper("jobs", "--limit", "3", "--tezzeret", address)
        assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["j-0", "j-1", "j-2"]
        code, out, _ = await esper("jobs", "--tezzeret", address)
        assert code == 0 and len(out.splitlines()) == 5
        code, out, _ = await esper("submit", "BP-IA3@1.0.0", "--channels", "8", "--wait", "--tezzeret", address)
        assert code == 0 and [line.split()[2] for line in out.splitlines()] == ["QUEUED", "BUILDING", "REGISTERED"]
        code, _, err = await esper("submit", "BP-NOPE@1.0.0", "--channels", "8", "--tezzeret", address)
        assert code == 2 and "NOT_FOUND: blueprint_ref: no blueprint BP-NOPE@1.0.0" in err
    finally:
        await server.stop(0)
    code, _, err = await esper("jobs", "--tezzeret", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert code == 1 and "unavailable" in err
