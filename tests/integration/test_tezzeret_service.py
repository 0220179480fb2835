"""Tezzeret end to end against real PostgreSQL, the broker, the object store and a real
Urza server started in-process: golden path for every built-in blueprint, two workers
sharing jobs, a worker killed mid-job, duplicate submissions and deliveries, bad op graphs,
a blueprint failing validation, and dependency outages."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import grpc
import pytest
from aiokafka.partitioner import DefaultPartitioner

from esper.blueprints import builtin_blueprints, estimate_params, get_builtin
from esper.blueprints.artifact import unpack_kernel
from esper.leyline.v1 import (
    blueprint_pb2,
    common_pb2,
    kernel_pb2,
    telemetry_pb2,
    tezzeret_pb2,
    tezzeret_pb2_grpc,
    urza_pb2,
    urza_pb2_grpc,
)
from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import TezzeretClient, UrzaClient
from esper.runtime.infra import free_port
from esper.runtime.server import start_server
from esper.tezzeret import service as tezzeret_service
from esper.tezzeret.config import TezzeretConfig
from esper.tezzeret.deps import connect
from esper.tezzeret.requests import RequestPublisher
from esper.urza import service as urza_service

pytestmark = pytest.mark.integration

STAGE = telemetry_pb2.CompileStage
TERMINAL = (STAGE.COMPILE_STAGE_REGISTERED, STAGE.COMPILE_STAGE_FAILED,
            STAGE.COMPILE_STAGE_CANCELLED)
# Generous bound on one job on a loaded 2-core machine; tests never assert timings.
JOB_WAIT_S = 90.0
PARTITIONS = 4


def tiny_target(spec: blueprint_pb2.BlueprintSpec, channels: int = 8) -> kernel_pb2.KernelTarget:
    kind = spec.slot_kinds[0]
    shape = common_pb2.SlotShape(kind=kind, channels=channels)
    if spec.family == blueprint_pb2.BLUEPRINT_FAMILY_WIDTH:  # a widenable Linear C -> C -> C
        shape.widen_params_per_unit = 2 * channels + 1
    if kind in (common_pb2.SLOT_KIND_SEQUENCE, common_pb2.SLOT_KIND_CONV1D):
        shape.length = 4
    elif kind == common_pb2.SLOT_KIND_CONV2D:
        shape.height = shape.width = 4
    return kernel_pb2.KernelTarget(device="cpu", dtype=common_pb2.DTYPE_FLOAT32, shape=shape)


@dataclasses.dataclass
class Forge:
    urza_config: urza_service.UrzaConfig
    config: TezzeretConfig
    urza_server: object
    server: object
    tezzeret: tezzeret_pb2_grpc.TezzeretServiceStub
    urza: urza_pb2_grpc.UrzaServiceStub
    clients: list  # the clients the stubs came from, closed at the end

    async def restart_urza(self) -> None:
        self.urza_server = await start_server(urza_service.SPEC, self.urza_config)

    async def wait(self, job_id: str, timeout: float = JOB_WAIT_S) -> tezzeret_pb2.CompileJob:
        async def poll():
            while True:
                job = (await self.tezzeret.GetJob(tezzeret_pb2.GetJobRequest(job_id=job_id))).job
                if job.stage in TERMINAL:
                    return job
                await asyncio.sleep(0.1)
        return await asyncio.wait_for(poll(), timeout)

    async def submit(self, spec=None, ref="", targets=()) -> tezzeret_pb2.CompileJob:
        request = tezzeret_pb2.SubmitCompileRequest(blueprint_ref=ref, targets=list(targets))
        if spec is not None:
            request.blueprint.CopyFrom(spec)
        return (await self.tezzeret.SubmitCompile(request)).job

    async def kernels(self, ref: str) -> list[kernel_pb2.KernelArtifact]:
        response = await self.urza.ListKernels(urza_pb2.ListKernelsRequest(blueprint_ref=ref))
        return list(response.kernels)


@pytest.fixture
async def forge(fresh_database, kafka_bootstrap, fresh_bucket):
    urza_port = free_port()
    urza_config = urza_service.UrzaConfig(
        port=urza_port, metrics_port=-1, postgres_dsn=fresh_database,
        kafka_bootstrap=kafka_bootstrap, s3_endpoint=fresh_bucket.url,
        s3_access_key=fresh_bucket.access_key, s3_secret_key=fresh_bucket.secret_key,
        s3_bucket=fresh_bucket.bucket)
    urza_server = await start_server(urza_service.SPEC, urza_config)
    config = TezzeretConfig(
        port=free_port(), metrics_port=-1, postgres_dsn=fresh_database, kafka_bootstrap=kafka_bootstrap,
        urza_address=f"127.0.0.1:{urza_port}", workers=0,
        consumer_group=f"tezzeret-{fresh_database.rsplit('/', 1)[1]}",
        latency_samples=5, warmup_runs=1, job_lease_s=2.0, dependency_timeout_s=2.0)
    server = await start_server(tezzeret_service.SPEC, config)
    # Raw stubs from the client layer: these tests check Tezzeret's exact statuses.
    t_client = TezzeretClient(server.address, security=ChannelSecurity())
    u_client = UrzaClient(urza_server.address, security=ChannelSecurity())
    forge = Forge(urza_config, config, urza_server, server, t_client.stub, u_client.stub,
                  [t_client, u_client])
    yield forge
    for client in forge.clients:
        await client.close()
    await forge.server.stop(0)
    await forge.urza_server.stop(0)


@contextlib.asynccontextmanager
async def workers(forge: Forge, count: int, **hooks):
    """`count` compile workers of the forge's group (own connections, as standalone ones)."""
    deps = await connect(forge.config)
    started = []
    try:
        for _ in range(count):
            worker = deps.new_worker(**hooks)
            await worker.start()
            started.append(worker)
        yield started
    finally:
        await deps.close()


async def wait_assigned(group: list, total: int = PARTITIONS) -> None:
    """Until every worker holds partitions and together they hold all of them."""
    async def poll():
        while True:
            parts = [w.assigned_partitions() for w in group if w.running]
            if all(parts) and sum(len(p) for p in parts) == total:
                return
            await asyncio.sleep(0.1)
    await asyncio.wait_for(poll(), 30)


# ---- golden path ---------------------------------------------------------------------

async def test_every_builtin_blueprint_compiles_registers_and_loads(forge):
    specs = builtin_blueprints()
    async with workers(forge, 2):
        submitted = [await forge.submit(ref=f"{s.name}@{s.version}", targets=[tiny_target(s)])
                     for s in specs]
        assert all(j.stage == STAGE.COMPILE_STAGE_QUEUED for j in submitted)
        finished = [await forge.wait(j.job_id) for j in submitted]
    for spec, job in zip(specs, finished):
        ref = f"{spec.name}@{spec.version}"
        assert job.stage == STAGE.COMPILE_STAGE_REGISTERED, (ref, job.detail)
        assert len(job.kernel_ids) == 1
        kernel = (await forge.urza.GetKernel(urza_pb2.GetKernelRequest(kernel_id=job.kernel_ids[0]))).kernel
        assert kernel.blueprint_ref == ref
        assert kernel.state == kernel_pb2.KERNEL_STATE_VALID
        assert kernel.validation.passed
        assert {c.name for c in kernel.validation.checks} == {
            "shape_contract", "finite_forward_backward", "function_preserving", "deterministic"}
        assert len(kernel.validation.optimisations) + len(kernel.validation.optimisations_dropped) == 1
        assert kernel.stats.latency_samples == 5
        assert kernel.stats.latency_p99_ms >= kernel.stats.latency_p50_ms > 0
        assert kernel.stats.peak_memory_bytes > 0
        assert kernel.uri.startswith(f"s3://{forge.urza_config.s3_bucket}/sha256/{kernel.sha256[:2]}/")
        record = (await forge.urza.GetBlueprint(urza_pb2.GetBlueprintRequest(blueprint_ref=ref))).blueprint
        assert record.state == blueprint_pb2.BLUEPRINT_STATE_CHARACTERISED
        # The training side's path: download, verify the digest, rebuild without pickle.
        data = b""
        async for chunk in forge.urza.DownloadKernel(urza_pb2.DownloadKernelRequest(kernel_id=kernel.kernel_id)):
            data += chunk.data
        _, shape, module = unpack_kernel(data, kernel.sha256)
        weights = sum(p.numel() for p in module.parameters() if p.requires_grad)
        if spec.family == blueprint_pb2.BLUEPRINT_FAMILY_WIDTH:  # sized by the slot, no weights
            assert weights == 0 and kernel.stats.params == estimate_params(
                spec, shape.channels, shape.widen_params_per_unit) > 0
        else:
            assert weights == kernel.stats.params
        assert shape == tiny_target(spec).shape


async def test_watch_job_streams_every_stage_until_registered(forge):
    spec = get_builtin("BP-MLP-GELU")
    job = await forge.submit(ref="BP-MLP-GELU@1.0.0", targets=[tiny_target(spec)])
    call = forge.tezzeret.WatchJob(tezzeret_pb2.WatchJobRequest(job_id=job.job_id))
    async with workers(forge, 1):
        stages = [r.job.stage async for r in call]
    assert stages[0] == STAGE.COMPILE_STAGE_QUEUED
    assert stages[-1] == STAGE.COMPILE_STAGE_REGISTERED
    for stage in (STAGE.COMPILE_STAGE_BUILDING, STAGE.COMPILE_STAGE_VALIDATING,
                  STAGE.COMPILE_STAGE_CHARACTERISING, STAGE.COMPILE_STAGE_STORING):
        assert stage in stages
    listed = await forge.tezzeret.ListJobs(tezzeret_pb2.ListJobsRequest(
        stage=STAGE.COMPILE_STAGE_REGISTERED))
    assert [j.job_id for j in listed.jobs] == [job.job_id]


# ---- the consumer group --------------------------------------------------------------

def refs_covering_partitions() -> list[tuple[str, blueprint_pb2.BlueprintSpec]]:
    """Built-ins whose refs (the request keys) hash to every partition, two per partition."""
    partitioner = DefaultPartitioner()
    chosen: dict[int, list] = {p: [] for p in range(PARTITIONS)}
    for spec in builtin_blueprints():
        ref = f"{spec.name}@{spec.version}"
        part = partitioner(ref.encode(), list(range(PARTITIONS)), list(range(PARTITIONS)))
        if len(chosen[part]) < 2:
            chosen[part].append((ref, spec))
    assert all(chosen.values()), "the built-in refs no longer cover every partition"
    return [item for items in chosen.values() for item in items]


async def test_two_workers_split_the_jobs(forge):
    async with workers(forge, 2) as (a, b):
        await wait_assigned([a, b])
        jobs = [await forge.submit(ref=ref, targets=[tiny_target(spec)])
                for ref, spec in refs_covering_partitions()]
        done = [await forge.wait(j.job_id) for j in jobs]
    assert all(j.stage == STAGE.COMPILE_STAGE_REGISTERED for j in done)
    assert a.jobs_done >= 1 and b.jobs_done >= 1
    assert a.jobs_done + b.jobs_done == len(jobs)
    assert {j.worker_id for j in done} == {a.worker_id, b.worker_id}


async def test_a_worker_killed_mid_job_has_its_job_finished_by_another(forge):
    paused = asyncio.Event()
    victim: list = []

    async def pause_first_validation(job):
        if job.stage == "VALIDATING" and not victim:
            victim.append(job.worker_id)
            paused.set()
            await asyncio.Event().wait()  # hang here until killed

    spec = get_builtin("BP-ATTN-MHA")
    async with workers(forge, 2, progress_hook=pause_first_validation) as group:
        await wait_assigned(group)
        job = await forge.submit(ref="BP-ATTN-MHA@1.0.0", targets=[tiny_target(spec)])
        await asyncio.wait_for(paused.wait(), JOB_WAIT_S)
        dead = next(w for w in group if w.worker_id == victim[0])
        survivor = next(w for w in group if w is not dead)
        await dead.kill()  # no commit, no lease release: as if the process died
        done = await forge.wait(job.job_id)
    assert done.stage == STAGE.COMPILE_STAGE_REGISTERED, done.detail
    assert done.worker_id == survivor.worker_id
    assert done.attempts == 2
    assert len(await forge.kernels("BP-ATTN-MHA@1.0.0")) == 1


async def test_duplicate_submissions_and_deliveries_are_idempotent(forge):
    spec = get_builtin("BP-LORA-R8")
    first = await forge.submit(ref="BP-LORA-R8@1.0.0", targets=[tiny_target(spec)])
    again = await forge.submit(ref="BP-LORA-R8@1.0.0", targets=[tiny_target(spec)])
    assert again.job_id == first.job_id
    async with workers(forge, 1) as (worker,):
        done = await forge.wait(first.job_id)
        assert done.stage == STAGE.COMPILE_STAGE_REGISTERED
        # Submitting a finished request again returns the finished job, nothing new.
        assert (await forge.submit(ref="BP-LORA-R8@1.0.0", targets=[tiny_target(spec)])).job_id == first.job_id
        # A redelivered request (same key, so ordered before the next job) is skipped.
        publisher = RequestPublisher(forge.config.kafka_bootstrap)
        store_job = await worker.store.get(first.job_id)
        assert await publisher.publish([store_job]) == [first.job_id]
        await publisher.close()
        later = await forge.submit(ref="BP-LORA-R8@1.0.0", targets=[tiny_target(spec, 16)])
        assert (await forge.wait(later.job_id)).stage == STAGE.COMPILE_STAGE_REGISTERED
    after = (await forge.tezzeret.GetJob(tezzeret_pb2.GetJobRequest(job_id=first.job_id))).job
    assert after.attempts == 1 and after.kernel_ids == done.kernel_ids
    assert worker.jobs_done == 2
    assert len(await forge.kernels("BP-LORA-R8@1.0.0")) == 2


# ---- bad input -----------------------------------------------------------------------

def bad_graphs():
    base = get_builtin("BP-MLP-GELU")
    out = []
    unknown_op = blueprint_pb2.BlueprintSpec()
    unknown_op.CopyFrom(base)
    unknown_op.name = "BP-BAD-OP"
    unknown_op.graph.nodes[0].op = 999
    out.append((unknown_op, "graph.nodes[0].op"))
    wrong_type = blueprint_pb2.BlueprintSpec()
    wrong_type.CopyFrom(base)
    wrong_type.name = "BP-BAD-TYPE"
    node = next(n for n in wrong_type.graph.nodes if "out_features" in n.attrs)
    index = list(wrong_type.graph.nodes).index(node)
    node.attrs["out_features"].CopyFrom(blueprint_pb2.AttrValue(bool_value=True))
    out.append((wrong_type, f"graph.nodes[{index}].attrs.out_features"))
    huge = blueprint_pb2.BlueprintSpec()
    huge.CopyFrom(wrong_type)
    huge.name = "BP-BAD-HUGE"
    huge.graph.nodes[index].attrs["out_features"].CopyFrom(blueprint_pb2.AttrValue(int_value=10**9))
    out.append((huge, f"graph.nodes[{index}].attrs.out_features"))
    cycle = blueprint_pb2.BlueprintSpec()
    cycle.CopyFrom(base)
    cycle.name = "BP-BAD-CYCLE"
    first, last = cycle.graph.nodes[0], cycle.graph.nodes[len(cycle.graph.nodes) - 1]
    first.inputs[0] = last.id
    out.append((cycle, "graph"))
    return out


@pytest.mark.parametrize("spec,field", bad_graphs(), ids=lambda v: getattr(v, "name", v))
async def test_bad_op_graphs_are_rejected_naming_op_and_attribute(forge, spec, field):
    target = tiny_target(get_builtin("BP-MLP-GELU"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await forge.submit(spec=spec, targets=[target])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"blueprint.{field}" in err.value.details()
    # Nothing half-written: no job, no blueprint in Urza, nothing in the bucket.
    assert not (await forge.tezzeret.ListJobs(tezzeret_pb2.ListJobsRequest())).jobs
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await forge.urza.GetBlueprint(urza_pb2.GetBlueprintRequest(blueprint_ref=f"{spec.name}@1.0.0"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    from minio import Minio  # noqa: PLC0415 - only this check needs a raw client
    u = forge.urza_config
    client = Minio(u.s3_endpoint.split("://")[1], u.s3_access_key, u.s3_secret_key, secure=False,
                   region="us-east-1")
    assert not list(client.list_objects(u.s3_bucket, recursive=True))


@pytest.mark.parametrize("mutate,field", [
    (lambda r: r.ClearField("targets"), "targets"),
    (lambda r: setattr(r.targets[0], "device", "tpu"), "targets[0].device"),
    (lambda r: setattr(r.targets[0], "dtype", 0), "targets[0].dtype"),
    (lambda r: setattr(r.targets[0].shape, "channels", 0), "targets[0].shape.channels"),
    (lambda r: setattr(r.targets[0].shape, "kind", common_pb2.SLOT_KIND_CONV2D), "targets[0].shape"),
    (lambda r: setattr(r, "blueprint_ref", "not a ref"), "blueprint_ref"),
])
async def test_bad_submissions_name_the_field(forge, mutate, field):
    spec = get_builtin("BP-MLP-GELU")
    request = tezzeret_pb2.SubmitCompileRequest(blueprint_ref="BP-MLP-GELU@1.0.0",
                                                targets=[tiny_target(spec)])
    mutate(request)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await forge.tezzeret.SubmitCompile(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field)
    for bad_id in ("", "nope"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await forge.tezzeret.GetJob(tezzeret_pb2.GetJobRequest(job_id=bad_id))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await forge.tezzeret.ListJobs(tezzeret_pb2.ListJobsRequest(page_token="garbage"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_blueprint_breaking_its_promise_is_rejected_naming_the_check(forge):
    spec = get_builtin("BP-MLP-GELU")
    spec.name = "BP-TEST-NOT-ZERO"
    for node in spec.graph.nodes:  # promises function_preserving, but nothing starts at zero
        if "init" in node.attrs:
            node.attrs["init"].CopyFrom(blueprint_pb2.AttrValue(string_value="default"))
    job = await forge.submit(spec=spec, targets=[tiny_target(spec)])
    async with workers(forge, 1):
        done = await forge.wait(job.job_id)
    assert done.stage == STAGE.COMPILE_STAGE_FAILED
    assert "function_preserving" in done.detail
    record = (await forge.urza.GetBlueprint(urza_pb2.GetBlueprintRequest(
        blueprint_ref="BP-TEST-NOT-ZERO@1.0.0"))).blueprint
    assert record.state == blueprint_pb2.BLUEPRINT_STATE_REJECTED
    assert "function_preserving" in record.reason
    assert not await forge.kernels("BP-TEST-NOT-ZERO@1.0.0")
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a rejected blueprint takes no new jobs
        await forge.submit(ref="BP-TEST-NOT-ZERO@1.0.0", targets=[tiny_target(spec, 16)])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_cancel_a_queued_job(forge):
    spec = get_builtin("BP-IA3")
    job = await forge.submit(ref="BP-IA3@1.0.0", targets=[tiny_target(spec)])
    cancelled = (await forge.tezzeret.CancelJob(tezzeret_pb2.CancelJobRequest(job_id=job.job_id))).job
    assert cancelled.stage == STAGE.COMPILE_STAGE_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await forge.tezzeret.CancelJob(tezzeret_pb2.CancelJobRequest(job_id=job.job_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    async with workers(forge, 1) as (worker,):  # its request is consumed and skipped
        fresh = await forge.submit(ref="BP-IA3@1.0.0", targets=[tiny_target(spec)])
        assert fresh.job_id != job.job_id  # a cancelled request does not block a new one
        assert (await forge.wait(fresh.job_id)).stage == STAGE.COMPILE_STAGE_REGISTERED
    assert worker.jobs_done == 1


# ---- dependency outages --------------------------------------------------------------

async def test_urza_outage_answers_unavailable_then_jobs_recover(forge):
    spec = get_builtin("BP-NORM-RMS")
    queued = await forge.submit(ref="BP-NORM-RMS@1.0.0", targets=[tiny_target(spec)])
    await forge.urza_server.stop(0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await forge.submit(ref="BP-NORM-RMS@1.0.0", targets=[tiny_target(spec, 16)])
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "urza_address" in err.value.details()
    # GetJob only needs the database: still served.
    assert (await forge.tezzeret.GetJob(tezzeret_pb2.GetJobRequest(job_id=queued.job_id))).job.job_id
    async with workers(forge, 1):
        await asyncio.sleep(1.5)  # the worker meets the outage and backs off
        job = (await forge.tezzeret.GetJob(tezzeret_pb2.GetJobRequest(job_id=queued.job_id))).job
        assert job.stage not in TERMINAL
        await forge.restart_urza()
        done = await forge.wait(queued.job_id)
    assert done.stage == STAGE.COMPILE_STAGE_REGISTERED, done.detail


async def test_broker_loss_is_recovered_from_the_database(forge):
    """A job whose request never reached Kafka (or was lost with a broker restart) is
    re-published from PostgreSQL by the server's sweep."""
    spec = get_builtin("BP-NORM-LAYER")
    deps = await connect(forge.config)
    try:  # store the job the way SubmitCompile does, but "lose" its request
        from esper.tezzeret.submission import check_targets, request_key
        targets = check_targets(spec, [tiny_target(spec)])
        job, _ = await deps.store.submit("BP-NORM-LAYER@1.0.0", request_key("BP-NORM-LAYER@1.0.0", "x", targets), targets)
    finally:
        await deps.close()
    await forge.server.stop(0)  # a restarted server sweeps unpublished jobs at start
    forge.server = await start_server(tezzeret_service.SPEC, forge.config)
    async with workers(forge, 1):
        done = await forge.wait(job.job_id)
    assert done.stage == STAGE.COMPILE_STAGE_REGISTERED


async def test_postgres_outage_answers_unavailable_then_recovers(forge):
    """Tezzeret on a PostgreSQL of its own, stopped and started under it."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from esper.runtime.infra import PostgresServer

    state = Path(tempfile.mkdtemp(prefix="esper-tezzeret-pg-"))  # PostgreSQL runs as nobody
    os.chmod(state, 0o755)
    postgres = PostgresServer(state, free_port(), durable=False, die_with_parent=True)
    postgres.start()
    config = dataclasses.replace(forge.config, postgres_dsn=postgres.dsn(), port=free_port())
    server = await start_server(tezzeret_service.SPEC, config)
    client = TezzeretClient(server.address, security=ChannelSecurity())
    stub = client.stub
    try:
        spec = get_builtin("BP-CONV-SE")
        request = tezzeret_pb2.SubmitCompileRequest(blueprint_ref="BP-CONV-SE@1.0.0",
                                                    targets=[tiny_target(spec)])
        job = (await stub.SubmitCompile(request)).job
        postgres.stop()
        for call in (stub.GetJob(tezzeret_pb2.GetJobRequest(job_id=job.job_id)),
                     stub.SubmitCompile(request), stub.ListJobs(tezzeret_pb2.ListJobsRequest())):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "postgres" in err.value.details()
        postgres.start()

        async def recovered():
            while True:
                try:
                    return (await stub.GetJob(tezzeret_pb2.GetJobRequest(job_id=job.job_id))).job
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    await asyncio.sleep(0.2)
        assert (await asyncio.wait_for(recovered(), 30)).job_id == job.job_id
    finally:
        await client.close()
        await server.stop(0)
        postgres.stop()
        shutil.rmtree(state, ignore_errors=True)


async def test_a_kernel_larger_than_urza_stores_fails_the_job_naming_the_limit(forge):
    """Tezzeret hands kernels to Urza's UploadKernel; Urza's size limit is Urza's to keep."""
    await forge.urza_server.stop(0)
    forge.urza_config = dataclasses.replace(forge.urza_config, max_kernel_bytes=64)
    await forge.restart_urza()
    spec = get_builtin("BP-NORM-RMS")
    async with workers(forge, 1):
        job = await forge.wait((await forge.submit(ref="BP-NORM-RMS@1.0.0",
                                                   targets=[tiny_target(spec)])).job_id)
    assert job.stage == STAGE.COMPILE_STAGE_FAILED
    assert "RESOURCE_EXHAUSTED" in job.detail and "max_kernel_bytes" in job.detail, job.detail
    assert await forge.kernels("BP-NORM-RMS@1.0.0") == []
