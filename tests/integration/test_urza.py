"""Urza against real PostgreSQL, the object store and the broker: catalogue CRUD, bad
input, pagination, kernel registration, search, verified download, corruption, the
catalogue watch stream, field reports and dependency outages."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import grpc
import pytest

from esper.blueprints import (
    build_seed,
    builtin_blueprints,
    kernel_id_for,
    pack_kernel,
    unpack_kernel,
)
from esper.blueprints.dsl import Dim, graph, node
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2 as common
from esper.leyline.v1 import kernel_pb2 as kp
from esper.leyline.v1 import lifecycle_pb2 as lc
from esper.leyline.v1 import telemetry_pb2 as tm
from esper.leyline.v1 import urza_pb2, urza_pb2_grpc
from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import UrzaClient
from esper.runtime.server import StartupError, start_server
from esper.urza import search
from esper.urza.service import SPEC, UrzaConfig
from esper.urza.store import KernelStore, key_for

pytestmark = pytest.mark.integration

FEATURES = common.SLOT_KIND_FEATURES
# A replay is over when the stream stays quiet this long (the log is read in one go).
REPLAY_QUIET_S = 1.5
# A tiny slot width keeps real kernels (packed torch modules) a few KiB.
C = 8


@dataclass
class Urza:
    running: object
    stub: urza_pb2_grpc.UrzaServiceStub
    store: KernelStore
    config: UrzaConfig
    client: UrzaClient


def urza_config(dsn: str, bucket, kafka_bootstrap: str, **overrides) -> UrzaConfig:
    config = UrzaConfig(
        postgres_dsn=dsn, kafka_bootstrap=kafka_bootstrap,
        s3_endpoint=f"http://{bucket.endpoint}", s3_access_key=bucket.access_key,
        s3_secret_key=bucket.secret_key, s3_bucket=bucket.bucket, s3_region=bucket.region,
        metrics_port=-1, postgres_connect_timeout=3.0, db_timeout=2.0)
    return replace(config, **overrides)


async def open_urza(config: UrzaConfig) -> Urza:
    running = await start_server(SPEC, config)
    client = UrzaClient(running.address, security=ChannelSecurity())
    store = KernelStore(config.s3_endpoint, config.s3_access_key, config.s3_secret_key,
                        config.s3_bucket, region=config.s3_region)
    return Urza(running, client.stub, store, config, client)


async def close_urza(urza: Urza) -> None:
    await urza.client.close()
    urza.store.close()
    await urza.running.stop(0)


@pytest.fixture
async def urza(fresh_database, fresh_bucket, kafka_bootstrap) -> AsyncIterator[Urza]:
    started = await open_urza(urza_config(fresh_database, fresh_bucket, kafka_bootstrap))
    try:
        yield started
    finally:
        await close_urza(started)


# -- helpers ------------------------------------------------------------------------------
def custom_spec(name: str = "BP-TEST-MLP", version: str = "1.0.0", hidden: str = "2*C",
                risk: float = 0.2) -> bp.BlueprintSpec:
    return bp.BlueprintSpec(
        name=name, version=version, family=bp.BLUEPRINT_FAMILY_MLP, slot_kinds=[FEATURES],
        graph=graph(node("fc1", bp.OP_TYPE_LINEAR, "input", out_features=Dim(hidden)),
                    node("act", bp.OP_TYPE_GELU, "fc1"),
                    node("fc2", bp.OP_TYPE_LINEAR, "act", out_features=Dim("C"), init="zeros")),
        metadata=bp.BlueprintMetadata(risk_score=risk, tags=["test"], is_safe_action=True,
                                      function_preserving=True),
    )


def artifact(ref: str, data: bytes, store: KernelStore, *, channels: int = C, params: int = 100,
             flops: int = 1000, p99: float = 0.1, memory: int = 4096, device: str = "cpu",
             kind: int = FEATURES) -> kp.KernelArtifact:
    digest = hashlib.sha256(data).hexdigest()
    return kp.KernelArtifact(
        kernel_id=kernel_id_for(digest), blueprint_ref=ref,
        target=kp.KernelTarget(device=device, dtype=common.DTYPE_FLOAT32,
                               shape=common.SlotShape(kind=kind, channels=channels),
                               torch_version="2.13.0"),
        format=kp.KERNEL_FORMAT_SAFETENSORS, uri=store.uri_for(digest), sha256=digest,
        size_bytes=len(data),
        stats=kp.KernelStats(params=params, flops=flops, latency_p50_ms=p99 / 2, latency_p99_ms=p99,
                             peak_memory_bytes=memory, latency_samples=50),
        validation=kp.ValidationReport(passed=True, checks=[kp.ValidationCheck(name="shape_contract",
                                                                               passed=True)]),
    )


async def store_and_register(urza: Urza, ref: str, data: bytes | None = None, **kwargs) -> kp.KernelArtifact:
    data = data if data is not None else uuid.uuid4().bytes * 64
    await urza.store.put(data)
    response = await urza.stub.RegisterKernel(
        urza_pb2.RegisterKernelRequest(kernel=artifact(ref, data, urza.store, **kwargs)))
    assert response.created
    return response.kernel


async def expect_error(call, code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    for fragment in fragments:
        assert fragment in info.value.details(), info.value.details()
    return info.value.details()


async def all_blueprints(urza: Urza, **filters) -> list[bp.BlueprintRecord]:
    out, token = [], ""
    while True:
        response = await urza.stub.ListBlueprints(
            urza_pb2.ListBlueprintsRequest(page_token=token, **filters))
        out.extend(response.blueprints)
        token = response.next_page_token
        if not token:
            return out


def ref_of(record: bp.BlueprintRecord) -> str:
    return f"{record.spec.name}@{record.spec.version}"


# -- catalogue ----------------------------------------------------------------------------
async def test_builtin_catalogue_is_seeded_once(urza: Urza) -> None:
    records = await all_blueprints(urza)
    builtins = {f"{s.name}@{s.version}" for s in builtin_blueprints()}
    assert len(builtins) >= 14
    assert {ref_of(r) for r in records} == builtins
    assert all(r.state == bp.BLUEPRINT_STATE_SUBMITTED for r in records)
    families = {r.spec.family for r in records}
    assert len(families) == 8
    # A second Urza on the same database (a restart) seeds nothing again.
    second = await open_urza(urza.config)
    try:
        assert len(await all_blueprints(second)) == len(builtins)
        created = [e for e in await replay(second, 1) if e.change == tm.CATALOG_CHANGE_BLUEPRINT_CREATED]
        assert len(created) == len(builtins) - 1  # every built-in once (revision 1 not replayed)
    finally:
        await close_urza(second)


async def test_create_get_and_duplicate_submission(urza: Urza) -> None:
    spec = custom_spec()
    first = await urza.stub.CreateBlueprint(urza_pb2.CreateBlueprintRequest(spec=spec))
    assert first.created and first.blueprint.state == bp.BLUEPRINT_STATE_SUBMITTED
    assert len(first.blueprint.graph_digest) == 64
    again = await urza.stub.CreateBlueprint(urza_pb2.CreateBlueprintRequest(spec=spec))
    assert not again.created and again.blueprint == first.blueprint
    await expect_error(
        urza.stub.CreateBlueprint(urza_pb2.CreateBlueprintRequest(spec=custom_spec(hidden="4*C"))),
        grpc.StatusCode.ALREADY_EXISTS, "BP-TEST-MLP@1.0.0", "different graph")
    newer = await urza.stub.CreateBlueprint(
        urza_pb2.CreateBlueprintRequest(spec=custom_spec(version="1.1.0", hidden="4*C")))
    assert newer.created
    got = await urza.stub.GetBlueprint(urza_pb2.GetBlueprintRequest(blueprint_ref="BP-TEST-MLP@1.0.0"))
    assert got.blueprint.spec == spec
    await expect_error(urza.stub.GetBlueprint(urza_pb2.GetBlueprintRequest(blueprint_ref="BP-NOPE@1.0.0")),
                       grpc.StatusCode.NOT_FOUND, "BP-NOPE@1.0.0")


def _mutate(change):
    spec = custom_spec(name="BP-BAD")
    change(spec)
    return spec


BAD_GRAPHS = [
    ("unknown op", lambda s: setattr(s.graph.nodes[0], "op", 999), "spec.graph.nodes[0].op"),
    ("cycle", lambda s: s.graph.nodes[0].inputs.__setitem__(0, "fc2"), "spec.graph"),
    ("wrong attribute type",
     lambda s: s.graph.nodes[0].attrs["out_features"].CopyFrom(bp.AttrValue(bool_value=True)),
     "spec.graph.nodes[0].attrs.out_features"),
    ("absurd size",
     lambda s: s.graph.nodes[0].attrs["out_features"].CopyFrom(bp.AttrValue(int_value=10**9)),
     "spec.graph.nodes[0].attrs.out_features"),
    ("unknown input", lambda s: s.graph.nodes[1].inputs.__setitem__(0, "ghost"), "spec.graph.nodes[1]"),
    ("bad semver", lambda s: setattr(s, "version", "1.0"), "spec.version"),
    ("bad name", lambda s: setattr(s, "name", "lower case"), "spec.name"),
    ("no family", lambda s: setattr(s, "family", 0), "spec.family"),
    ("risk out of range", lambda s: setattr(s.metadata, "risk_score", 2.0), "spec.metadata.risk_score"),
]


@pytest.mark.parametrize("why,change,field", BAD_GRAPHS, ids=[b[0] for b in BAD_GRAPHS])
async def test_bad_blueprints_are_refused_naming_the_field(urza: Urza, why, change, field) -> None:
    await expect_error(urza.stub.CreateBlueprint(urza_pb2.CreateBlueprintRequest(spec=_mutate(change))),
                       grpc.StatusCode.INVALID_ARGUMENT, field)
    # Nothing half-written: the refused blueprint is not in the catalogue.
    assert not [r for r in await all_blueprints(urza) if r.spec.name == "BP-BAD"]


async def test_missing_spec_is_invalid(urza: Urza) -> None:
    await expect_error(urza.stub.CreateBlueprint(urza_pb2.CreateBlueprintRequest()),
                       grpc.StatusCode.INVALID_ARGUMENT, "spec")


async def test_pagination_visits_everything_once(urza: Urza) -> None:
    for minor in (2, 10):  # numeric version order: 1.2.0 before 1.10.0
        await urza.stub.CreateBlueprint(urza_pb2.CreateBlueprintRequest(
            spec=custom_spec(version=f"1.{minor}.0")))
    everything = await all_blueprints(urza)
    paged, token, pages = [], "", 0
    while True:
        response = await urza.stub.ListBlueprints(urza_pb2.ListBlueprintsRequest(page_size=5, page_token=token))
        assert len(response.blueprints) <= 5
        paged.extend(response.blueprints)
        pages += 1
        token = response.next_page_token
        if not token:
            break
    assert [ref_of(r) for r in paged] == [ref_of(r) for r in everything]
    assert len({ref_of(r) for r in paged}) == len(paged) and pages == -(-len(paged) // 5)
    versions = [r.spec.version for r in paged if r.spec.name == "BP-TEST-MLP"]
    assert versions == ["1.2.0", "1.10.0"]
    # A token only continues the query it came from.
    first = await urza.stub.ListBlueprints(urza_pb2.ListBlueprintsRequest(page_size=2))
    await expect_error(urza.stub.ListBlueprints(urza_pb2.ListBlueprintsRequest(
        page_size=2, page_token=first.next_page_token, family=bp.BLUEPRINT_FAMILY_CONV)),
        grpc.StatusCode.INVALID_ARGUMENT, "page_token")


async def test_list_filters(urza: Urza) -> None:
    conv = await all_blueprints(urza, family=bp.BLUEPRINT_FAMILY_CONV)
    assert conv and all(r.spec.family == bp.BLUEPRINT_FAMILY_CONV for r in conv)
    seq = await all_blueprints(urza, slot_kind=common.SLOT_KIND_SEQUENCE)
    assert seq and all(common.SLOT_KIND_SEQUENCE in r.spec.slot_kinds for r in seq)
    plain = await all_blueprints(urza, capabilities=["sequence"])
    assert plain and all(set(r.spec.metadata.requires_capability) <= {"sequence"} for r in plain)
    assert any("sequence" in r.spec.metadata.requires_capability for r in plain)
    await urza.stub.CreateBlueprint(urza_pb2.CreateBlueprintRequest(spec=custom_spec()))
    tagged = await all_blueprints(urza, tags=["test"])
    assert [ref_of(r) for r in tagged] == ["BP-TEST-MLP@1.0.0"]
    await urza.stub.UpdateBlueprintState(urza_pb2.UpdateBlueprintStateRequest(
        blueprint_ref="BP-TEST-MLP@1.0.0", state=bp.BLUEPRINT_STATE_COMPILING))
    compiling = await all_blueprints(urza, state=bp.BLUEPRINT_STATE_COMPILING)
    assert [ref_of(r) for r in compiling] == ["BP-TEST-MLP@1.0.0"]


async def test_state_changes_follow_the_table(urza: Urza) -> None:
    ref = "BP-MLP-GELU@1.0.0"

    def update(state, reason=""):
        return urza.stub.UpdateBlueprintState(urza_pb2.UpdateBlueprintStateRequest(
            blueprint_ref=ref, state=state, reason=reason))

    assert (await update(bp.BLUEPRINT_STATE_COMPILING)).blueprint.state == bp.BLUEPRINT_STATE_COMPILING
    assert (await update(bp.BLUEPRINT_STATE_COMPILING)).blueprint.state == bp.BLUEPRINT_STATE_COMPILING
    await expect_error(update(bp.BLUEPRINT_STATE_REJECTED), grpc.StatusCode.INVALID_ARGUMENT, "reason")
    assert (await update(bp.BLUEPRINT_STATE_CHARACTERISED)).blueprint.state == bp.BLUEPRINT_STATE_CHARACTERISED
    await expect_error(update(bp.BLUEPRINT_STATE_REJECTED, "late"), grpc.StatusCode.FAILED_PRECONDITION,
                       "CHARACTERISED", "REJECTED")
    await expect_error(update(0), grpc.StatusCode.INVALID_ARGUMENT, "state")
    await expect_error(update(77), grpc.StatusCode.INVALID_ARGUMENT, "state")
    retired = await urza.stub.RetireBlueprint(urza_pb2.RetireBlueprintRequest(blueprint_ref=ref, reason="superseded"))
    assert retired.blueprint.state == bp.BLUEPRINT_STATE_RETIRED and retired.blueprint.reason == "superseded"
    await expect_error(update(bp.BLUEPRINT_STATE_COMPILING), grpc.StatusCode.FAILED_PRECONDITION, "RETIRED")
    await expect_error(urza.stub.RetireBlueprint(urza_pb2.RetireBlueprintRequest(blueprint_ref="BP-X@1.0.0")),
                       grpc.StatusCode.NOT_FOUND)


# -- kernels ------------------------------------------------------------------------------
async def test_register_kernel_verifies_the_stored_bytes(urza: Urza) -> None:
    ref = "BP-MLP-GELU@1.0.0"
    data = b"kernel bytes " * 100
    await urza.store.put(data)
    kernel = artifact(ref, data, urza.store)
    created = await urza.stub.RegisterKernel(urza_pb2.RegisterKernelRequest(kernel=kernel))
    assert created.created and created.kernel.state == kp.KERNEL_STATE_VALID
    again = await urza.stub.RegisterKernel(urza_pb2.RegisterKernelRequest(kernel=kernel))
    assert not again.created and again.kernel == created.kernel
    # Same id, other target: a different kernel claiming the same bytes.
    other = kp.KernelArtifact()
    other.CopyFrom(kernel)
    other.target.shape.channels = 16
    await expect_error(urza.stub.RegisterKernel(urza_pb2.RegisterKernelRequest(kernel=other)),
                       grpc.StatusCode.ALREADY_EXISTS, "channels")
    missing = artifact(ref, b"never stored", urza.store)
    await expect_error(urza.stub.RegisterKernel(urza_pb2.RegisterKernelRequest(kernel=missing)),
                       grpc.StatusCode.FAILED_PRECONDITION, "kernel.uri")
    wrong_size = kp.KernelArtifact()
    wrong_size.CopyFrom(kernel)
    wrong_size.size_bytes += 1
    wrong_size.kernel_id = kernel.kernel_id
    await expect_error(urza.stub.RegisterKernel(urza_pb2.RegisterKernelRequest(kernel=wrong_size)),
                       grpc.StatusCode.FAILED_PRECONDITION, "kernel.size_bytes")
    # Bytes stored under another digest's key: the content does not hash to the claim.
    liar = artifact(ref, b"claimed content", urza.store)
    await asyncio.to_thread(_put_raw, urza, liar.sha256, b"other content..")
    await expect_error(urza.stub.RegisterKernel(urza_pb2.RegisterKernelRequest(kernel=liar)),
                       grpc.StatusCode.FAILED_PRECONDITION, "kernel.sha256")
    unknown = artifact("BP-NOPE@1.0.0", data, urza.store)
    await expect_error(urza.stub.RegisterKernel(urza_pb2.RegisterKernelRequest(kernel=unknown)),
                       grpc.StatusCode.NOT_FOUND, "BP-NOPE@1.0.0")
    bad_id = kp.KernelArtifact()
    bad_id.CopyFrom(kernel)
    bad_id.kernel_id = "k-0000000000000000"
    await expect_error(urza.stub.RegisterKernel(urza_pb2.RegisterKernelRequest(kernel=bad_id)),
                       grpc.StatusCode.INVALID_ARGUMENT, "kernel.kernel_id")
    wrong_kind = artifact("BP-CONV-SE@1.0.0", data, urza.store)
    await expect_error(urza.stub.RegisterKernel(urza_pb2.RegisterKernelRequest(kernel=wrong_kind)),
                       grpc.StatusCode.INVALID_ARGUMENT, "kernel.target.shape.kind")
    failed = artifact(ref, data, urza.store)
    failed.validation.passed = False
    await expect_error(urza.stub.RegisterKernel(urza_pb2.RegisterKernelRequest(kernel=failed)),
                       grpc.StatusCode.FAILED_PRECONDITION, "validation")
    got = await urza.stub.GetKernel(urza_pb2.GetKernelRequest(kernel_id=kernel.kernel_id))
    assert got.kernel == created.kernel
    listed = await urza.stub.ListKernels(urza_pb2.ListKernelsRequest(blueprint_ref=ref))
    assert [k.kernel_id for k in listed.kernels] == [kernel.kernel_id]
    none = await urza.stub.ListKernels(urza_pb2.ListKernelsRequest(blueprint_ref=ref, channels=99))
    assert not none.kernels


def _put_raw(urza: Urza, sha256: str, data: bytes) -> None:
    """Write `data` under the key of `sha256` directly (what a corrupting disk would do)."""
    import io

    urza.store.client.put_object(urza.config.s3_bucket, key_for(sha256), io.BytesIO(data), len(data))


async def test_list_kernels_paginates(urza: Urza) -> None:
    ids = {(await store_and_register(urza, "BP-NORM-RMS@1.0.0")).kernel_id for _ in range(5)}
    seen, token = [], ""
    while True:
        page = await urza.stub.ListKernels(urza_pb2.ListKernelsRequest(page_size=2, page_token=token))
        seen.extend(k.kernel_id for k in page.kernels)
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(ids) and seen == sorted(seen)


async def test_search_ranks_by_benefit_per_cost_within_budget(urza: Urza) -> None:
    cheap = await store_and_register(urza, "BP-IA3@1.0.0", params=16, flops=100, p99=0.01, memory=64)
    mid = await store_and_register(urza, "BP-LORA-R8@1.0.0", params=2_000, flops=50_000, p99=0.05)
    big = await store_and_register(urza, "BP-MLP-GELU@1.0.0", params=500_000, flops=10**8, p99=2.0)
    risky = await store_and_register(urza, "BP-MOE-TOP2@1.0.0", params=100, flops=1000, p99=0.01)
    await store_and_register(urza, "BP-NORM-RMS@1.0.0", channels=C * 2)  # other width
    await store_and_register(urza, "BP-ATTN-MHA@1.0.0", kind=common.SLOT_KIND_SEQUENCE)  # other kind

    async def ranked(**budget) -> list[urza_pb2.KernelCandidate]:
        response = await urza.stub.SearchKernels(urza_pb2.SearchKernelsRequest(
            shape=common.SlotShape(kind=FEATURES, channels=C), budget=urza_pb2.CostBudget(**budget)))
        return list(response.candidates)

    found = await ranked()
    assert {c.kernel.kernel_id for c in found} == {cheap.kernel_id, mid.kernel_id, big.kernel_id,
                                                   risky.kernel_id}
    scores = [c.score for c in found]
    assert scores == sorted(scores, reverse=True)
    assert found[0].kernel.kernel_id == cheap.kernel_id and found[-1].kernel.kernel_id == big.kernel_id
    for c in found:
        stats, md = c.kernel.stats, c.blueprint.metadata
        expected = search.score(md.past_accuracy_gain_estimate, md.risk_score, stats.params,
                                stats.flops, stats.latency_p99_ms, stats.peak_memory_bytes,
                                search.Budget(None, None, None, None, 1.0))
        assert c.score == pytest.approx(expected)
    within = await ranked(max_params=10_000, max_latency_ms=1.0)
    assert big.kernel_id not in {c.kernel.kernel_id for c in within}
    safe = await ranked(max_risk=0.3)
    assert risky.kernel_id not in {c.kernel.kernel_id for c in safe}
    adapters = await urza.stub.SearchKernels(urza_pb2.SearchKernelsRequest(
        shape=common.SlotShape(kind=FEATURES, channels=C), families=[bp.BLUEPRINT_FAMILY_ADAPTER]))
    assert {c.kernel.kernel_id for c in adapters.candidates} == {cheap.kernel_id, mid.kernel_id}
    one = await urza.stub.SearchKernels(urza_pb2.SearchKernelsRequest(
        shape=common.SlotShape(kind=FEATURES, channels=C), limit=1))
    assert [c.kernel.kernel_id for c in one.candidates] == [cheap.kernel_id]
    # Field reports move the ranking: a strong gain lifts the big MLP to the top.
    for i in range(20):
        await urza.stub.RecordFieldReport(urza_pb2.RecordFieldReportRequest(report=tm.FieldReport(
            run_id="run-1", seed_id=f"seed-{i}", blueprint_ref="BP-MLP-GELU@1.0.0",
            final_stage=lc.SEED_STAGE_FOSSILIZED, val_accuracy_before=0.5, val_accuracy_after=0.9)))
    assert (await ranked())[0].kernel.kernel_id == big.kernel_id
    # Retired blueprints' kernels are not offered; neither are other devices.
    await urza.stub.RetireBlueprint(urza_pb2.RetireBlueprintRequest(blueprint_ref="BP-IA3@1.0.0"))
    assert cheap.kernel_id not in {c.kernel.kernel_id for c in await ranked()}
    gpu = await urza.stub.SearchKernels(urza_pb2.SearchKernelsRequest(
        shape=common.SlotShape(kind=FEATURES, channels=C), device="cuda"))
    assert not gpu.candidates


async def test_search_respects_capabilities(urza: Urza) -> None:
    kernel = await store_and_register(urza, "BP-ATTN-MHA@1.0.0", kind=common.SLOT_KIND_SEQUENCE)
    shape = common.SlotShape(kind=common.SLOT_KIND_SEQUENCE, channels=C, length=4)
    without = await urza.stub.SearchKernels(urza_pb2.SearchKernelsRequest(shape=shape))
    assert not without.candidates
    with_cap = await urza.stub.SearchKernels(urza_pb2.SearchKernelsRequest(shape=shape, capabilities=["sequence"]))
    assert [c.kernel.kernel_id for c in with_cap.candidates] == [kernel.kernel_id]


async def download(urza: Urza, kernel_id: str, chunk_size: int = 0) -> list[urza_pb2.DownloadKernelResponse]:
    return [chunk async for chunk in urza.stub.DownloadKernel(
        urza_pb2.DownloadKernelRequest(kernel_id=kernel_id, chunk_size=chunk_size))]


def real_kernel_bytes(ref: str = "BP-MLP-GELU@1.0.0", channels: int = 64) -> bytes:
    spec = next(s for s in builtin_blueprints() if f"{s.name}@{s.version}" == ref)
    shape = common.SlotShape(kind=FEATURES, channels=channels)
    return pack_kernel(spec, shape, build_seed(spec, shape))


async def test_download_streams_chunks_with_the_digest(urza: Urza) -> None:
    data = await asyncio.to_thread(real_kernel_bytes)
    kernel = await store_and_register(urza, "BP-MLP-GELU@1.0.0", data, channels=64)
    chunks = await download(urza, kernel.kernel_id, chunk_size=4096)
    assert len(chunks) == -(-len(data) // 4096) > 1
    assert chunks[0].kernel == kernel and chunks[0].sha256 == kernel.sha256
    assert chunks[-1].last and chunks[-1].sha256 == kernel.sha256
    assert not any(c.last for c in chunks[:-1])
    assert [c.offset for c in chunks] == [i * 4096 for i in range(len(chunks))]
    body = b"".join(c.data for c in chunks)
    assert body == data and hashlib.sha256(body).hexdigest() == kernel.sha256
    spec, shape, _module = await asyncio.to_thread(unpack_kernel, body, kernel.sha256)
    assert spec.name == "BP-MLP-GELU" and shape.channels == 64
    # Default chunk size: one chunk for a small kernel; a huge request is capped, not refused.
    assert len(await download(urza, kernel.kernel_id)) == 1
    assert len(await download(urza, kernel.kernel_id, chunk_size=2**32 - 1)) == 1


async def test_corrupted_object_is_detected_and_never_served(urza: Urza) -> None:
    data = bytes(range(256)) * 64
    kernel = await store_and_register(urza, "BP-NORM-LAYER@1.0.0", data)
    corrupted = bytearray(data)
    corrupted[5000] ^= 0xFF
    await asyncio.to_thread(_put_raw, urza, kernel.sha256, bytes(corrupted))
    details = await expect_error(download(urza, kernel.kernel_id, chunk_size=4096),
                                 grpc.StatusCode.DATA_LOSS, kernel.kernel_id)
    assert "INVALID" in details
    got = await urza.stub.GetKernel(urza_pb2.GetKernelRequest(kernel_id=kernel.kernel_id))
    assert got.kernel.state == kp.KERNEL_STATE_INVALID and "hash" in got.kernel.state_reason
    await expect_error(download(urza, kernel.kernel_id), grpc.StatusCode.FAILED_PRECONDITION, "INVALID")
    search_response = await urza.stub.SearchKernels(urza_pb2.SearchKernelsRequest(
        shape=common.SlotShape(kind=FEATURES, channels=C)))
    assert kernel.kernel_id not in {c.kernel.kernel_id for c in search_response.candidates}
    events = await replay(urza, 1)
    assert any(e.change == tm.CATALOG_CHANGE_KERNEL_INVALIDATED and e.kernel_id == kernel.kernel_id
               for e in events)
    # Truncated and extended objects are caught too; restoring the bytes and
    # re-registering makes the kernel valid again.
    await asyncio.to_thread(_put_raw, urza, kernel.sha256, data)
    restored = await urza.stub.RegisterKernel(urza_pb2.RegisterKernelRequest(
        kernel=artifact("BP-NORM-LAYER@1.0.0", data, urza.store)))
    assert restored.kernel.state == kp.KERNEL_STATE_VALID and not restored.created
    await asyncio.to_thread(_put_raw, urza, kernel.sha256, data + b"tail")
    await expect_error(download(urza, kernel.kernel_id), grpc.StatusCode.DATA_LOSS)
    await asyncio.to_thread(_put_raw, urza, kernel.sha256, data)
    await urza.stub.RegisterKernel(urza_pb2.RegisterKernelRequest(
        kernel=artifact("BP-NORM-LAYER@1.0.0", data, urza.store)))
    await asyncio.to_thread(_put_raw, urza, kernel.sha256, data[:-1])
    await expect_error(download(urza, kernel.kernel_id), grpc.StatusCode.DATA_LOSS)


# -- watch, field reports ------------------------------------------------------------------
async def replay(urza: Urza, after: int) -> list[tm.CatalogEvent]:
    """Every event after `after` that is in the log now."""
    events: list[tm.CatalogEvent] = []
    stream = urza.stub.WatchCatalog(urza_pb2.WatchCatalogRequest(after_revision=after))
    while True:
        try:
            response = await asyncio.wait_for(stream.read(), REPLAY_QUIET_S)
        except TimeoutError:
            break
        events.append(response.event)
    stream.cancel()
    return events


async def test_watch_catalog_replays_then_follows(urza: Urza) -> None:
    history = await replay(urza, 1)
    created = [e for e in history if e.change == tm.CATALOG_CHANGE_BLUEPRINT_CREATED]
    assert len(created) == len(builtin_blueprints()) - 1  # replay after revision 1
    revisions = [e.revision for e in history]
    assert revisions == sorted(revisions) and revisions[0] == 2
    live = urza.stub.WatchCatalog(urza_pb2.WatchCatalogRequest(after_revision=0))
    # Initial metadata arrives once the stream is subscribed, naming its start revision.
    headers = dict(await asyncio.wait_for(live.initial_metadata(), 10))
    assert headers["x-esper-catalog-revision"] == str(revisions[-1])
    await urza.stub.CreateBlueprint(urza_pb2.CreateBlueprintRequest(spec=custom_spec()))
    await urza.stub.UpdateBlueprintState(urza_pb2.UpdateBlueprintStateRequest(
        blueprint_ref="BP-TEST-MLP@1.0.0", state=bp.BLUEPRINT_STATE_COMPILING, reason="job-1"))
    first = (await asyncio.wait_for(live.read(), 10)).event
    second = (await asyncio.wait_for(live.read(), 10)).event
    live.cancel()
    assert first.change == tm.CATALOG_CHANGE_BLUEPRINT_CREATED and first.blueprint_ref == "BP-TEST-MLP@1.0.0"
    assert second.change == tm.CATALOG_CHANGE_BLUEPRINT_STATE and second.detail == "job-1"
    assert second.blueprint_state == bp.BLUEPRINT_STATE_COMPILING
    assert first.revision == revisions[-1] + 1 and second.revision == first.revision + 1
    # A replay from before the change, then live, sees it too, in order.
    resumed = await replay(urza, revisions[-1])
    assert [e.revision for e in resumed] == [first.revision, second.revision]
    # Resuming from the last revision seen gets nothing twice.
    assert await replay(urza, second.revision) == []
    stream = urza.stub.WatchCatalog(urza_pb2.WatchCatalogRequest(after_revision=10**12))
    await expect_error(stream.read(), grpc.StatusCode.INVALID_ARGUMENT, "after_revision")


async def test_catalog_events_are_published_on_oona(urza: Urza, kafka_bootstrap: str) -> None:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    from esper.oona import decode_event
    from esper.oona.topics import CATALOG_EVENTS

    name = f"BP-OONA-{uuid.uuid4().hex[:8].upper()}"
    await urza.stub.CreateBlueprint(urza_pb2.CreateBlueprintRequest(spec=custom_spec(name=name)))
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        found = None
        for _ in range(30):
            partitions = consumer.partitions_for_topic(CATALOG_EVENTS)
            if partitions:
                break
            await consumer.topics()
            await asyncio.sleep(0.5)
        consumer.assign([TopicPartition(CATALOG_EVENTS, p) for p in partitions or {0}])
        await consumer.seek_to_beginning()
        for _ in range(30):
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    event = decode_event(record.value, record.headers)
                    if event.catalog_event.blueprint_ref == f"{name}@1.0.0":
                        found = event
            if found:
                break
    finally:
        await consumer.stop()
    assert found is not None and found.source == "urza"
    assert found.catalog_event.change == tm.CATALOG_CHANGE_BLUEPRINT_CREATED


async def test_field_reports_update_aggregates_idempotently(urza: Urza) -> None:
    ref = "BP-LORA-R8@1.0.0"

    def report(seed: str, stage: int, before: float, after: float) -> urza_pb2.RecordFieldReportRequest:
        return urza_pb2.RecordFieldReportRequest(report=tm.FieldReport(
            run_id="run-7", seed_id=seed, blueprint_ref=ref, final_stage=stage,
            val_accuracy_before=before, val_accuracy_after=after))

    one = await urza.stub.RecordFieldReport(report("s1", lc.SEED_STAGE_FOSSILIZED, 0.60, 0.70))
    two = await urza.stub.RecordFieldReport(report("s2", lc.SEED_STAGE_CULLED, 0.70, 0.68))
    again = await urza.stub.RecordFieldReport(report("s2", lc.SEED_STAGE_CULLED, 0.70, 0.68))
    for response in (two, again):
        record = response.blueprint
        assert (record.times_used, record.fossilized_count, record.culled_count) == (2, 1, 1)
    assert one.blueprint.times_used == 1
    # Shrunk mean: the prior (0.0) counts as 3 pseudo-reports.
    expected = (0.10 - 0.02) / (3 + 2)
    assert two.blueprint.spec.metadata.past_accuracy_gain_estimate == pytest.approx(expected)
    got = await urza.stub.GetBlueprint(urza_pb2.GetBlueprintRequest(blueprint_ref=ref))
    assert got.blueprint == two.blueprint
    await expect_error(urza.stub.RecordFieldReport(report("s3", lc.SEED_STAGE_TRAINING, 0.5, 0.6)),
                       grpc.StatusCode.INVALID_ARGUMENT, "report.final_stage")
    for value in (float("inf"), -0.1, 1.5):
        await expect_error(urza.stub.RecordFieldReport(report("s3", lc.SEED_STAGE_CULLED, 0.5, value)),
                           grpc.StatusCode.INVALID_ARGUMENT, "report.val_accuracy_after")
    # A seed germinated before its run's first validation pass: NaN = not measured. It counts
    # as a use and a fate, and leaves the estimate where the measured gains put it.
    unmeasured = await urza.stub.RecordFieldReport(report("s3", lc.SEED_STAGE_FOSSILIZED, float("nan"), 0.7))
    record = unmeasured.blueprint
    assert (record.times_used, record.fossilized_count, record.culled_count) == (3, 2, 1)
    assert record.spec.metadata.past_accuracy_gain_estimate == pytest.approx(expected)
    # ... and as a blueprint's first report, it leaves the submitted prior as the estimate.
    other = "BP-IA3@1.0.0"
    before = await urza.stub.GetBlueprint(urza_pb2.GetBlueprintRequest(blueprint_ref=other))
    first = await urza.stub.RecordFieldReport(urza_pb2.RecordFieldReportRequest(report=tm.FieldReport(
        run_id="run-7", seed_id="s4", blueprint_ref=other, final_stage=lc.SEED_STAGE_CULLED,
        val_accuracy_before=float("nan"), val_accuracy_after=float("nan"))))
    assert (first.blueprint.times_used, first.blueprint.culled_count) == (1, 1)
    assert (first.blueprint.spec.metadata.past_accuracy_gain_estimate
            == pytest.approx(before.blueprint.spec.metadata.past_accuracy_gain_estimate))
    await expect_error(urza.stub.RecordFieldReport(report("", lc.SEED_STAGE_CULLED, 0.5, 0.6)),
                       grpc.StatusCode.INVALID_ARGUMENT, "report.seed_id")
    await expect_error(urza.stub.RecordFieldReport(urza_pb2.RecordFieldReportRequest(report=tm.FieldReport(
        seed_id="x", blueprint_ref="BP-NOPE@1.0.0", final_stage=lc.SEED_STAGE_CULLED))),
        grpc.StatusCode.NOT_FOUND, "BP-NOPE@1.0.0")


# -- hostile input -------------------------------------------------------------------------
async def test_hostile_inputs_get_clear_errors_and_the_server_keeps_serving(urza: Urza) -> None:
    stub = urza.stub
    for ref, field in (("", "blueprint_ref"), ("BP-MLP-GELU", "blueprint_ref"),
                       ("BP-MLP-GELU@1.0", "version"), ("BP-MLP-GELU@01.0.0", "version"),
                       ("bp@1.0.0", "name"), ("A@1.0.0@2", "blueprint_ref"), ("X" * 10_000 + "@1.0.0", "name")):
        await expect_error(stub.GetBlueprint(urza_pb2.GetBlueprintRequest(blueprint_ref=ref)),
                           grpc.StatusCode.INVALID_ARGUMENT, field)
    huge = await stub.ListBlueprints(urza_pb2.ListBlueprintsRequest(page_size=2**32 - 1))
    assert len(huge.blueprints) == len(builtin_blueprints()) and not huge.next_page_token
    for token in ("garbage", "!!!", "e30", "x" * 5000, "eyJwIjpbMV0sImYiOiJ4In0"):
        await expect_error(stub.ListBlueprints(urza_pb2.ListBlueprintsRequest(page_token=token)),
                           grpc.StatusCode.INVALID_ARGUMENT, "page_token")
        await expect_error(stub.ListKernels(urza_pb2.ListKernelsRequest(page_token=token)),
                           grpc.StatusCode.INVALID_ARGUMENT, "page_token")
    await expect_error(stub.ListBlueprints(urza_pb2.ListBlueprintsRequest(family=42)),
                       grpc.StatusCode.INVALID_ARGUMENT, "family")
    await expect_error(stub.ListBlueprints(urza_pb2.ListBlueprintsRequest(tags=[""])),
                       grpc.StatusCode.INVALID_ARGUMENT, "tags[0]")
    for kernel_id in ("", "k-xyz", "../../etc/passwd", "k-" + "0" * 64):
        await expect_error(stub.GetKernel(urza_pb2.GetKernelRequest(kernel_id=kernel_id)),
                           grpc.StatusCode.INVALID_ARGUMENT, "kernel_id")
        await expect_error(download(urza, kernel_id), grpc.StatusCode.INVALID_ARGUMENT, "kernel_id")
    await expect_error(stub.GetKernel(urza_pb2.GetKernelRequest(kernel_id="k-0123456789abcdef")),
                       grpc.StatusCode.NOT_FOUND)
    await expect_error(stub.RegisterKernel(urza_pb2.RegisterKernelRequest()),
                       grpc.StatusCode.INVALID_ARGUMENT, "kernel")
    await expect_error(stub.SearchKernels(urza_pb2.SearchKernelsRequest()),
                       grpc.StatusCode.INVALID_ARGUMENT, "shape")
    await expect_error(stub.SearchKernels(urza_pb2.SearchKernelsRequest(
        shape=common.SlotShape(kind=FEATURES))), grpc.StatusCode.INVALID_ARGUMENT, "shape.channels")
    shape = common.SlotShape(kind=FEATURES, channels=C)
    await expect_error(stub.SearchKernels(urza_pb2.SearchKernelsRequest(
        shape=shape, budget=urza_pb2.CostBudget(max_latency_ms=float("nan")))),
        grpc.StatusCode.INVALID_ARGUMENT, "budget.max_latency_ms")
    await expect_error(stub.SearchKernels(urza_pb2.SearchKernelsRequest(
        shape=shape, budget=urza_pb2.CostBudget(max_risk=-1))), grpc.StatusCode.INVALID_ARGUMENT, "max_risk")
    await expect_error(stub.SearchKernels(urza_pb2.SearchKernelsRequest(shape=shape, device="; DROP TABLE")),
                       grpc.StatusCode.INVALID_ARGUMENT, "device")
    unbounded = await stub.SearchKernels(urza_pb2.SearchKernelsRequest(
        shape=shape, limit=2**32 - 1, budget=urza_pb2.CostBudget(max_params=2**64 - 1)))
    assert list(unbounded.candidates) == []
    await expect_error(stub.RetireBlueprint(urza_pb2.RetireBlueprintRequest(
        blueprint_ref="BP-IA3@1.0.0", reason="r" * 5000)), grpc.StatusCode.INVALID_ARGUMENT, "reason")
    # Still serving.
    ok = await stub.GetBlueprint(urza_pb2.GetBlueprintRequest(blueprint_ref="BP-IA3@1.0.0"))
    assert ok.blueprint.state == bp.BLUEPRINT_STATE_SUBMITTED


# -- outages and start-up ------------------------------------------------------------------
async def test_database_outage_answers_unavailable_then_recovers(
        fresh_bucket, kafka_bootstrap) -> None:
    import os
    import shutil
    import tempfile

    from esper.runtime.infra import PostgresServer, free_port

    # A server of its own, so stopping it disturbs no other test. PostgreSQL runs as
    # nobody under root: its state dir must be world-searchable.
    state_dir = tempfile.mkdtemp(prefix="esper-urza-outage-")
    os.chmod(state_dir, 0o755)
    server = PostgresServer(state_dir, free_port(), durable=False, die_with_parent=True)
    dsn = await asyncio.to_thread(server.start)
    urza = await open_urza(urza_config(dsn, fresh_bucket, kafka_bootstrap))
    request = urza_pb2.GetBlueprintRequest(blueprint_ref="BP-IA3@1.0.0")
    try:
        assert (await urza.stub.GetBlueprint(request)).blueprint.spec.name == "BP-IA3"
        await asyncio.to_thread(server.stop)
        await expect_error(urza.stub.GetBlueprint(request, timeout=30), grpc.StatusCode.UNAVAILABLE, "postgres")
        await expect_error(urza.stub.CreateBlueprint(urza_pb2.CreateBlueprintRequest(spec=custom_spec()),
                                                     timeout=30), grpc.StatusCode.UNAVAILABLE)
        await expect_error(urza.stub.ListBlueprints(urza_pb2.ListBlueprintsRequest(), timeout=30),
                           grpc.StatusCode.UNAVAILABLE)
        await asyncio.to_thread(server.start)
        recovered = None
        for _ in range(50):  # the pool reconnects on the next call after the server is back
            try:
                recovered = await urza.stub.GetBlueprint(request, timeout=30)
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                await asyncio.sleep(0.2)
        assert recovered is not None and recovered.blueprint.spec.name == "BP-IA3"
        created = await urza.stub.CreateBlueprint(urza_pb2.CreateBlueprintRequest(spec=custom_spec()))
        assert created.created
    finally:
        await close_urza(urza)
        await asyncio.to_thread(server.stop)
        shutil.rmtree(state_dir, ignore_errors=True)


async def test_missing_object_is_data_loss(urza: Urza) -> None:
    kernel = await store_and_register(urza, "BP-IA3@1.0.0")
    await urza.store.remove(kernel.uri)
    await expect_error(download(urza, kernel.kernel_id), grpc.StatusCode.DATA_LOSS, "missing")
    got = await urza.stub.GetKernel(urza_pb2.GetKernelRequest(kernel_id=kernel.kernel_id))
    assert got.kernel.state == kp.KERNEL_STATE_INVALID


async def test_object_store_outage_answers_unavailable_then_recovers(
        fresh_database, kafka_bootstrap) -> None:
    import shutil
    import tempfile

    from esper.runtime.infra import ObjectStore, free_port

    # A store of its own (disk-backed, so objects survive its restart).
    state_dir = tempfile.mkdtemp(prefix="esper-urza-store-outage-")
    server = ObjectStore(state_dir, free_port(), "urza-outage", die_with_parent=True)
    endpoint = await asyncio.to_thread(server.start)
    urza = await open_urza(urza_config(fresh_database, endpoint, kafka_bootstrap, s3_timeout=1.0))
    try:
        kernel = await store_and_register(urza, "BP-IA3@1.0.0")
        await asyncio.to_thread(server.stop)
        await expect_error(download(urza, kernel.kernel_id), grpc.StatusCode.UNAVAILABLE, "object store")
        other = b"bytes registered while the store is down"
        await expect_error(urza.stub.RegisterKernel(urza_pb2.RegisterKernelRequest(
            kernel=artifact("BP-IA3@1.0.0", other, urza.store))), grpc.StatusCode.UNAVAILABLE)
        # The catalogue itself does not need the store.
        assert (await urza.stub.GetKernel(urza_pb2.GetKernelRequest(kernel_id=kernel.kernel_id))
                ).kernel.state == kp.KERNEL_STATE_VALID
        await asyncio.to_thread(server.start)
        chunks = await download(urza, kernel.kernel_id)
        assert hashlib.sha256(b"".join(c.data for c in chunks)).hexdigest() == kernel.sha256
    finally:
        await close_urza(urza)
        await asyncio.to_thread(server.stop)
        shutil.rmtree(state_dir, ignore_errors=True)


async def test_unreachable_dependencies_fail_start_naming_the_setting(fresh_bucket, kafka_bootstrap) -> None:
    from esper.runtime.infra import free_port

    config = urza_config(f"postgresql://postgres@127.0.0.1:{free_port()}/esper", fresh_bucket,
                         kafka_bootstrap, postgres_connect_timeout=1.0)
    with pytest.raises(StartupError, match="postgres_dsn"):
        await start_server(SPEC, config)


async def test_unreachable_store_fails_start(fresh_database, fresh_bucket, kafka_bootstrap) -> None:
    from esper.runtime.infra import free_port

    config = urza_config(fresh_database, fresh_bucket, kafka_bootstrap,
                         s3_endpoint=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StartupError, match="s3_endpoint"):
        await start_server(SPEC, config)


async def test_migrations_are_idempotent_under_concurrency(fresh_database) -> None:
    import asyncpg

    from esper.urza.db import apply_migrations, load_migrations

    conns = [await asyncpg.connect(fresh_database) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(apply_migrations(c) for c in conns))
        assert sorted(v for versions in applied for v in versions) == [m.version for m in load_migrations()]
        rows = await conns[0].fetch("SELECT version, name FROM urza.schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [m.version for m in load_migrations()]
        assert await apply_migrations(conns[0]) == []
        tables = {r["tablename"] for r in await conns[0].fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'urza'")}
        assert {"blueprints", "kernels", "blueprint_outcomes", "catalog_events",
                "schema_migrations"} <= tables
    finally:
        for conn in conns:
            await conn.close()
