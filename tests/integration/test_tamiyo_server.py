"""Tamiyo's gRPC server for real over loopback: session open/accept, version refusal,
decisions and acks, resume without re-sending applied decisions, heartbeats, concurrent
isolated sessions, hostile input, Decide/ListPolicies/ReloadPolicy, and kernels from a real
Urza (PostgreSQL + object store + broker) or none when Urza is unreachable."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import math
import uuid

import grpc
import pytest

from esper.blueprints import builtin_blueprints, kernel_id_for
from esper.leyline.v1 import (
    common_pb2,
    kernel_pb2,
    tamiyo_pb2,
    tamiyo_pb2_grpc,
)
from esper.leyline.v1.common_pb2 import SemanticVersion
from esper.leyline.v1.control_pb2 import AckStatus, DecisionAck
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.leyline.v1.telemetry_pb2 import FieldReport
from esper.leyline.version import contract_version
from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import TamiyoClient, UrzaClient
from esper.runtime.infra import free_port
from esper.runtime.server import start_server
from esper.tamiyo import service as tamiyo_service
from esper.tamiyo.config import TamiyoConfig
from esper.tamiyo.policies.artifact import save_policy
from esper.tamiyo.policies.gnn import GnnPolicy
from esper.urza import service as urza_service
from esper.urza.store import KernelStore
from tests.integration.test_urza import urza_config
from tests.unit.test_tamiyo_support import graph, seed, snapshot

pytestmark = pytest.mark.integration

S = SeedStage
# Generous waits for a loaded 2-core machine; tests never assert timings.
WAIT_S = 20.0
WIDTH = 16


def tamiyo_config(**overrides) -> TamiyoConfig:
    base = TamiyoConfig(port=0, metrics_port=-1, urza_address="", heartbeat_seconds=1, idle_heartbeats=30,
                        snapshot_every_steps=5)
    return dataclasses.replace(base, **overrides)


@contextlib.asynccontextmanager
async def tamiyo(**overrides):
    running = await start_server(tamiyo_service.SPEC, tamiyo_config(**overrides))
    # The raw stub from the client layer: these tests check Tamiyo's wire behaviour.
    client = TamiyoClient(running.address, security=ChannelSecurity())
    try:
        yield running, client.stub, client.channel
    finally:
        await client.close()
        await running.stop(0)


class Client:
    """One Session stream: a queue of requests up, an iterator of responses down."""

    def __init__(self, stub: tamiyo_pb2_grpc.TamiyoServiceStub) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.call = stub.Session(self._requests())

    async def _requests(self):
        while True:
            item = await self.queue.get()
            if item is None:
                return
            yield item

    async def send(self, **message) -> None:
        await self.queue.put(tamiyo_pb2.SessionRequest(**message))

    async def next(self, kind: str | None = None, skip_heartbeats: bool = True):
        async def read():
            while True:
                response = await self.call.read()
                if response is grpc.aio.EOF:
                    raise AssertionError("stream ended")
                got = response.WhichOneof("message")
                if skip_heartbeats and got == "heartbeat" and kind != "heartbeat":
                    continue
                assert kind is None or got == kind, response
                return response
        return await asyncio.wait_for(read(), WAIT_S)

    async def close(self) -> None:
        await self.queue.put(None)
        self.call.cancel()


def open_message(run_id: str, **kw) -> tamiyo_pb2.SessionOpen:
    base = {"run_id": run_id, "contract_version": contract_version(), "client_version": "test 0",
            "graph": graph(4, width=WIDTH), "capabilities": tamiyo_pb2.Capabilities(device="cpu", max_live_seeds=1)}
    return tamiyo_pb2.SessionOpen(**{**base, **kw})


def snap(step: int, run_id: str, seeds=(), **kw):
    return snapshot(step, seeds=seeds, run_id=run_id, epoch=step, **kw)


async def open_session(stub, run_id: str, **kw) -> tuple[Client, tamiyo_pb2.SessionAccept]:
    client = Client(stub)
    await client.send(open=open_message(run_id, **kw))
    accept = (await client.next("accept")).accept
    return client, accept


async def expect_abort(client: Client, code: grpc.StatusCode, fragment: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.next()
    assert info.value.code() == code, info.value
    assert fragment in info.value.details()


async def test_open_accept_and_advance_decision_then_ack():
    async with tamiyo() as (_, stub, _c):
        client, accept = await open_session(stub, "run-adv")
        assert accept.run_id == "run-adv" and not accept.resumed
        assert accept.snapshot_every_steps == 5 and accept.heartbeat_seconds == 1
        assert accept.policy_version == "heuristic@1.0.0"
        assert accept.contract_version.major == contract_version().major
        await client.send(snapshot=snap(10, "run-adv", [seed("s1", S.SEED_STAGE_GERMINATED)]))
        decision = (await client.next("decision")).decision
        assert decision.WhichOneof("action") == "advance" and decision.advance.slot_id == "s1"
        assert decision.run_id == "run-adv" and decision.issued_at_step == 10
        # While it is outstanding no second decision is made.
        await client.send(snapshot=snap(11, "run-adv", [seed("s1", S.SEED_STAGE_GERMINATED)]))
        await client.send(ack=DecisionAck(decision_id=decision.decision_id, run_id="run-adv",
                                          status=AckStatus.ACK_STATUS_APPLIED, step=11))
        await client.send(snapshot=snap(12, "run-adv", [seed("s1", S.SEED_STAGE_TRAINING, steps=1)]))
        await client.send(snapshot=snap(13, "run-adv", [seed("s1", S.SEED_STAGE_TRAINING, steps=500)]))
        second = (await client.next("decision")).decision
        assert second.issued_at_step == 13 and second.advance.target_stage == S.SEED_STAGE_BLENDING
        await client.send(ack=DecisionAck(decision_id=decision.decision_id, run_id="run-adv",
                                          status=AckStatus.ACK_STATUS_APPLIED))
        warning = (await client.next("warning")).warning
        assert warning.code == "duplicate_ack"
        await client.send(field_report=FieldReport(run_id="run-adv", seed_id="seed-s1", slot_id="s1"))
        await client.send(heartbeat=tamiyo_pb2.SessionHeartbeat(sequence=1, step=13))
        beat = (await client.next("heartbeat", skip_heartbeats=False)).heartbeat
        assert beat.sequence >= 1
        await client.close()


async def test_every_decision_sent_is_announced_after_it():
    """A decision is announced (its Oona event, its count, its log line) once the stream has
    sent it (SessionProtocol.announce), one announcement per decision."""
    from prometheus_client import REGISTRY

    from tests.fixtures.waiting import until

    def announced() -> float:
        labels = {"policy": "heuristic", "action": "advance"}
        return REGISTRY.get_sample_value("esper_tamiyo_decisions_total", labels) or 0.0

    async with tamiyo() as (_, stub, _c):
        client, _ = await open_session(stub, "run-announced")
        before = announced()
        for step in (10, 20, 30):
            await client.send(snapshot=snap(step, "run-announced", [seed("s1", S.SEED_STAGE_GERMINATED)]))
            decision = (await client.next("decision")).decision
            await client.send(ack=DecisionAck(decision_id=decision.decision_id, run_id="run-announced",
                                              status=AckStatus.ACK_STATUS_REJECTED, step=step))
        assert await until(lambda: announced() == before + 3, WAIT_S), announced() - before
        await client.close()


async def test_first_message_must_be_open_and_version_is_negotiated():
    async with tamiyo() as (_, stub, _c):
        client = Client(stub)
        await client.send(snapshot=snap(1, "r"))
        await expect_abort(client, grpc.StatusCode.INVALID_ARGUMENT, "must be open")
        client = Client(stub)
        await client.send(open=open_message("run-v", contract_version=SemanticVersion(major=2)))
        await expect_abort(client, grpc.StatusCode.FAILED_PRECONDITION, "contract_version")
        client = Client(stub)
        await client.send(open=open_message("bad id with spaces"))
        await expect_abort(client, grpc.StatusCode.INVALID_ARGUMENT, "open.run_id")
        client = Client(stub)
        await client.send(open=open_message("run-gnn", policy="gnn"))
        await expect_abort(client, grpc.StatusCode.FAILED_PRECONDITION, "not loaded")
        client = Client(stub)
        await client.send(open=open_message("run-big", graph=graph(50)))
        # within limits: accepted
        assert (await client.next("accept")).accept.run_id == "run-big"
        await client.close()


async def test_a_training_flops_budget_is_checked_at_open_and_bounds_growth(urza):
    """A budget without its horizon is refused naming the field, and the server keeps
    serving; a run whose projected training FLOPs already exceed its budget is told to
    wait, with the reason, where the same plateau grows a seed without one."""
    running, _ = urza
    async with tamiyo(urza_address=running.address, urza_timeout_s=5.0) as (_, stub, _c):
        client = Client(stub)
        await client.send(open=open_message(
            "run-nohorizon", budget=tamiyo_pb2.ResourceBudget(max_training_flops=1e12)))
        await expect_abort(client, grpc.StatusCode.INVALID_ARGUMENT, "open.budget.planned_steps")
        client = Client(stub)
        await client.send(open=open_message(
            "run-nanbudget", budget=tamiyo_pb2.ResourceBudget(max_training_flops=math.nan,
                                                               planned_steps=10)))
        await expect_abort(client, grpc.StatusCode.INVALID_ARGUMENT, "open.budget.max_training_flops")

        def spent(run_id: str):  # step 100 of 1,000 at 1 GFLOP a step: 1,000 projected
            s = snap(100, run_id, plateau_epochs=10)
            s.resources.model_flops_per_example = 1e6
            s.resources.training_flops, s.resources.training_flops_per_step = 1e11, 1e9
            return s

        tight = tamiyo_pb2.ResourceBudget(max_training_flops=9e11, planned_steps=1000)
        d = (await stub.Decide(tamiyo_pb2.DecideRequest(
            snapshot=spent("run-budget"), graph=graph(4, width=WIDTH), budget=tight))).decision
        assert d.WhichOneof("action") == "wait" and "training-FLOPs budget" in d.rationale, d.rationale
        client, _ = await open_session(stub, "run-free")  # the stream: a germination arrives
        await client.send(snapshot=spent("run-free"))
        d = (await client.next("decision")).decision
        assert d.WhichOneof("action") == "germinate", d.rationale
        await client.close()


async def test_oversized_graph_is_refused_naming_the_field():
    async with tamiyo(max_graph_nodes=10) as (_, stub, _c):
        client = Client(stub)
        await client.send(open=open_message("run-huge", graph=graph(11)))
        await expect_abort(client, grpc.StatusCode.INVALID_ARGUMENT, "open.graph.nodes")


async def test_resume_reconciles_and_never_resends_an_applied_decision():
    async with tamiyo() as (_, stub, _c):
        client, _ = await open_session(stub, "run-res")
        await client.send(snapshot=snap(10, "run-res", [seed("s1", S.SEED_STAGE_GERMINATED)]))
        first = (await client.next("decision")).decision
        await client.close()  # the connection drops before the ack reached the server
        # Reconnect: the client applied it (s1 now TRAINING) and says so.
        client, accept = await open_session(
            stub, "run-res", seeds=[seed("s1", S.SEED_STAGE_TRAINING, steps=1)],
            last_applied_decision_id=first.decision_id, acked_decision_ids=[first.decision_id])
        assert accept.resumed
        await client.send(snapshot=snap(11, "run-res", [seed("s1", S.SEED_STAGE_TRAINING, steps=2)]))
        await client.send(snapshot=snap(12, "run-res", [seed("s1", S.SEED_STAGE_TRAINING, steps=500)]))
        nxt = (await client.next("decision")).decision
        assert nxt.decision_id != first.decision_id and nxt.advance.target_stage == S.SEED_STAGE_BLENDING
        # A repeated snapshot step from before the reconnect is recognised.
        await client.send(snapshot=snap(9, "run-res"))
        assert (await client.next("warning")).warning.code == "out_of_order_snapshot"
        await client.close()


async def test_a_newer_session_of_a_run_supersedes_the_older():
    async with tamiyo() as (_, stub, _c):
        old, _ = await open_session(stub, "run-dup")
        new, accept = await open_session(stub, "run-dup")
        assert accept.resumed
        await expect_abort(old, grpc.StatusCode.ABORTED, "superseded")
        await new.send(snapshot=snap(5, "run-dup", [seed("s0", S.SEED_STAGE_GERMINATED)]))
        assert (await new.next("decision")).decision.advance.slot_id == "s0"
        await new.close()


async def test_hostile_stream_input_is_dropped_with_counted_warnings_and_others_keep_going():
    async with tamiyo() as (_running, stub, channel):
        good, _ = await open_session(stub, "run-good")
        bad, _ = await open_session(stub, "run-bad")
        s = snap(10, "run-bad")
        s.metrics.train_loss = float("nan")
        await bad.send(snapshot=s)
        assert (await bad.next("warning")).warning.code == "non_finite"
        s = snap(11, "run-bad")
        s.layers.add(layer_id="s0", gradient_norm=float("inf"))
        await bad.send(snapshot=s)
        w = (await bad.next("warning")).warning
        assert w.code == "non_finite" and "layers[0].gradient_norm" in w.detail
        await bad.send(snapshot=snap(12, "run-bad", [seed("ghost", S.SEED_STAGE_TRAINING)]))
        w = (await bad.next("warning")).warning
        assert w.code == "unknown_slot" and "ghost" in w.detail
        await bad.send(snapshot=snap(12, "run-bad"))
        assert (await bad.next("warning")).warning.code == "repeated_snapshot"
        await bad.send(snapshot=snap(3, "run-bad"))
        assert (await bad.next("warning")).warning.code == "out_of_order_snapshot"
        await bad.send(snapshot=snap(20, "someone-else"))
        assert (await bad.next("warning")).warning.code == "wrong_run"
        many = snap(21, "run-bad")
        for i in range(600):
            many.seeds.add(slot_id=f"x{i}")
        await bad.send(snapshot=many)
        assert (await bad.next("warning")).warning.code == "oversized"
        await bad.send(ack=DecisionAck(decision_id="nope", run_id="run-bad", status=AckStatus.ACK_STATUS_APPLIED))
        assert (await bad.next("warning")).warning.code == "unknown_decision"
        await bad.send(open=open_message("run-bad"))
        assert (await bad.next("warning")).warning.code == "repeated_open"
        # Garbage bytes on a raw stream: a clear status for that stream only.
        raw = channel.stream_stream("/esper.leyline.v1.TamiyoService/Session",
                                    request_serializer=lambda b: b, response_deserializer=lambda b: b)
        open_bytes = tamiyo_pb2.SessionRequest(open=open_message("run-garbage")).SerializeToString()

        async def garbage():
            yield open_bytes
            yield b"\xff\xff\xff\xff garbage"
        call = raw(garbage())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
        assert "not a valid esper.leyline.v1.SessionRequest" in info.value.details()
        # The well-behaved session is unaffected.
        await good.send(snapshot=snap(10, "run-good", [seed("s2", S.SEED_STAGE_GERMINATED)]))
        assert (await good.next("decision")).decision.advance.slot_id == "s2"
        await good.close()
        await bad.close()


async def test_many_concurrent_sessions_are_isolated():
    async with tamiyo() as (_, stub, _c):
        clients = [await open_session(stub, f"run-c{i}") for i in range(12)]
        for i, (client, _) in enumerate(clients):
            await client.send(snapshot=snap(10, f"run-c{i}", [seed(f"s{i % 4}", S.SEED_STAGE_GERMINATED)]))
        for i, (client, _) in enumerate(clients):
            d = (await client.next("decision")).decision
            assert d.run_id == f"run-c{i}" and d.advance.slot_id == f"s{i % 4}"
            await client.close()


async def test_without_urza_no_germination_and_the_rationale_says_why():
    port = free_port()  # nothing listens there
    async with tamiyo(urza_address=f"127.0.0.1:{port}", urza_timeout_s=0.5) as (_, stub, _c):
        response = await stub.Decide(tamiyo_pb2.DecideRequest(
            snapshot=snap(100, "run-nourza", plateau_epochs=10), graph=graph(4, width=WIDTH),
            capabilities=tamiyo_pb2.Capabilities(max_live_seeds=1)))
        d = response.decision
        assert d.WhichOneof("action") == "wait" and "Urza" in d.rationale and "unreachable" in d.rationale
    async with tamiyo(urza_address="") as (_, stub, _c):
        d = (await stub.Decide(tamiyo_pb2.DecideRequest(
            snapshot=snap(100, "run-nourza", plateau_epochs=10), graph=graph(4, width=WIDTH)))).decision
        assert d.WhichOneof("action") == "wait" and "no Urza configured" in d.rationale


async def test_decide_validates_its_input():
    async with tamiyo() as (_, stub, _c):
        async def refused(request, code, fragment):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Decide(request)
            assert info.value.code() == code and fragment in info.value.details()
        await refused(tamiyo_pb2.DecideRequest(), grpc.StatusCode.INVALID_ARGUMENT, "snapshot.run_id")
        bad = snap(1, "r")
        bad.metrics.grad_norm = float("inf")
        await refused(tamiyo_pb2.DecideRequest(snapshot=bad, graph=graph(2)), grpc.StatusCode.INVALID_ARGUMENT,
                      "snapshot.metrics.grad_norm")
        await refused(tamiyo_pb2.DecideRequest(snapshot=snap(1, "r"), graph=graph(2), policy="oracle"),
                      grpc.StatusCode.INVALID_ARGUMENT, "unknown policy")
        g = graph(2)
        g.slots.add(slot_id="dangling", node_id="nowhere")
        await refused(tamiyo_pb2.DecideRequest(snapshot=snap(1, "r"), graph=g), grpc.StatusCode.INVALID_ARGUMENT,
                      "graph.slots[2].node_id")


async def test_list_and_reload_the_gnn_policy(tmp_path):
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    good = policy_dir / "gnn.safetensors"
    save_policy(good, GnnPolicy().net, GnnPolicy().vocabulary, "gnn@7")
    async with tamiyo(policy_dir=str(policy_dir)) as (_, stub, _c):
        listed = {p.name: p for p in (await stub.ListPolicies(tamiyo_pb2.ListPoliciesRequest())).policies}
        assert listed["heuristic"].loaded and not listed["gnn"].loaded
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ReloadPolicy(tamiyo_pb2.ReloadPolicyRequest(name="gnn", artifact_path="/etc/passwd"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "artifact_path" in info.value.details()
        tampered = policy_dir / "tampered.safetensors"
        raw = bytearray(good.read_bytes())
        raw[-3] ^= 0xFF
        tampered.write_bytes(bytes(raw))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ReloadPolicy(tamiyo_pb2.ReloadPolicyRequest(name="gnn", artifact_path=str(tampered)))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ReloadPolicy(tamiyo_pb2.ReloadPolicyRequest(name="heuristic"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = (await stub.ReloadPolicy(tamiyo_pb2.ReloadPolicyRequest(name="gnn", artifact_path=str(good)))).policy
        assert info.loaded and info.version == "gnn@7"
        client, accept = await open_session(stub, "run-gnn", policy="gnn")
        assert accept.policy_version == "gnn@7"
        await client.send(snapshot=snap(10, "run-gnn", [seed("s1", S.SEED_STAGE_GERMINATED)]))
        d = (await stub.Decide(tamiyo_pb2.DecideRequest(snapshot=snap(10, "run-gnn-unary"), graph=graph(4),
                                                         policy="gnn"))).decision
        assert d.policy_version in ("gnn@7", "heuristic@1.0.0") and d.rationale
        await client.close()


# -- with a real Urza -------------------------------------------------------------------------

def _artifact(ref: str, data: bytes, store: KernelStore, params: int) -> kernel_pb2.KernelArtifact:
    digest = hashlib.sha256(data).hexdigest()
    return kernel_pb2.KernelArtifact(
        kernel_id=kernel_id_for(digest), blueprint_ref=ref,
        target=kernel_pb2.KernelTarget(device="cpu", dtype=common_pb2.DTYPE_FLOAT32, torch_version="2.13.0",
                                       shape=common_pb2.SlotShape(kind=common_pb2.SLOT_KIND_FEATURES, channels=WIDTH)),
        format=kernel_pb2.KERNEL_FORMAT_SAFETENSORS, uri=store.uri_for(digest), sha256=digest, size_bytes=len(data),
        stats=kernel_pb2.KernelStats(params=params, flops=1000, latency_p50_ms=0.05, latency_p99_ms=0.1,
                                     peak_memory_bytes=4096, latency_samples=10),
        validation=kernel_pb2.ValidationReport(passed=True, checks=[kernel_pb2.ValidationCheck(
            name="shape_contract", passed=True)]),
    )


@pytest.fixture
async def urza(fresh_database, fresh_bucket, kafka_bootstrap):
    config = urza_config(fresh_database, fresh_bucket, kafka_bootstrap)
    running = await start_server(urza_service.SPEC, config)
    store = KernelStore(config.s3_endpoint, config.s3_access_key, config.s3_secret_key, config.s3_bucket,
                        region=config.s3_region)
    urza_client = UrzaClient(running.address, security=ChannelSecurity())
    registered = []
    features = [b for b in builtin_blueprints() if common_pb2.SLOT_KIND_FEATURES in b.slot_kinds
                and b.metadata.risk_score <= 0.5 and not b.metadata.requires_capability][:2]
    for i, spec in enumerate(features):
        data = uuid.uuid4().bytes * 32
        await store.put(data)
        ref = f"{spec.name}@{spec.version}"
        kernel, _ = await urza_client.register_kernel(_artifact(ref, data, store, params=500 * (i + 1)))
        registered.append(kernel)
    try:
        yield running, registered
    finally:
        await urza_client.close()
        store.close()
        await running.stop(0)


async def test_germination_names_a_kernel_from_urza_search(urza):
    running, registered = urza
    async with tamiyo(urza_address=running.address, urza_timeout_s=5.0) as (_, stub, _c):
        client, _ = await open_session(stub, "run-urza")
        await client.send(snapshot=snap(100, "run-urza", plateau_epochs=10))
        d = (await client.next("decision")).decision
        assert d.WhichOneof("action") == "germinate", d.rationale
        by_id = {k.kernel_id: k for k in registered}
        assert d.germinate.kernel_id in by_id
        assert d.germinate.kernel_sha256 == by_id[d.germinate.kernel_id].sha256
        assert d.germinate.blueprint_ref == by_id[d.germinate.kernel_id].blueprint_ref
        # The seed's outcome reaches Tamiyo, which folds it into Urza's blueprint aggregates.
        await client.send(field_report=FieldReport(
            run_id="run-urza", seed_id="seed-1", slot_id=d.germinate.slot_id,
            blueprint_ref=d.germinate.blueprint_ref, kernel_id=d.germinate.kernel_id,
            germinate_decision_id=d.decision_id, final_stage=S.SEED_STAGE_FOSSILIZED,
            val_loss_before=1.0, val_loss_after=0.9, val_accuracy_before=0.5, val_accuracy_after=0.6,
            params_added=500, lifetime_steps=300, germinated_at_step=100, ended_at_step=400))
        async with UrzaClient(running.address, security=ChannelSecurity()) as urza_client:

            async def used() -> int:
                while True:
                    record = await urza_client.get_blueprint(d.germinate.blueprint_ref)
                    if record.times_used:
                        return record.fossilized_count
                    await asyncio.sleep(0.1)
            assert await asyncio.wait_for(used(), WAIT_S) == 1
        await client.close()
        # Over budget: every registered kernel is bigger than what is left.
        response = await stub.Decide(tamiyo_pb2.DecideRequest(
            snapshot=snap(100, "run-urza-poor", plateau_epochs=10), graph=graph(4, width=WIDTH),
            budget=tamiyo_pb2.ResourceBudget(max_added_params=100)))
        assert response.decision.WhichOneof("action") == "wait" and "budget" in response.decision.rationale


async def test_heartbeats_keep_a_session_alive_and_silence_ends_it():
    async with tamiyo(heartbeat_seconds=1, idle_heartbeats=2) as (_, stub, _c):
        client, _ = await open_session(stub, "run-idle")
        for i in range(6):  # 3 s of client heartbeats, longer than the 2 s idle limit
            await client.send(heartbeat=tamiyo_pb2.SessionHeartbeat(sequence=i))
            await asyncio.sleep(0.5)
        await client.send(snapshot=snap(10, "run-idle", [seed("s0", S.SEED_STAGE_GERMINATED)]))
        assert (await client.next("decision")).decision.advance.slot_id == "s0"
        await expect_abort(client, grpc.StatusCode.DEADLINE_EXCEEDED, "no message from the client")
        await client.close()


async def test_a_restarted_server_takes_the_clients_view():
    port = free_port()
    async with tamiyo(port=port) as (_, stub, _c):
        client, _ = await open_session(stub, "run-restart")
        await client.send(snapshot=snap(10, "run-restart", [seed("s1", S.SEED_STAGE_GERMINATED)]))
        first = (await client.next("decision")).decision
        await client.close()
    # The server died and came back empty: the client re-opens with its truth.
    async with tamiyo(port=port) as (_, stub, _c):
        client, accept = await open_session(
            stub, "run-restart", seeds=[seed("s1", S.SEED_STAGE_TRAINING, steps=1)],
            last_applied_decision_id=first.decision_id, acked_decision_ids=[first.decision_id])
        assert not accept.resumed
        await client.send(snapshot=snap(11, "run-restart", [seed("s1", S.SEED_STAGE_TRAINING, steps=500)]))
        d = (await client.next("decision")).decision
        assert d.decision_id != first.decision_id and d.advance.target_stage == S.SEED_STAGE_BLENDING
        # A late ack of the decision applied before the restart is accepted, not warned about.
        await client.send(ack=DecisionAck(decision_id=first.decision_id, run_id="run-restart",
                                          status=AckStatus.ACK_STATUS_APPLIED))
        await client.send(ack=DecisionAck(decision_id=d.decision_id, run_id="run-restart",
                                          status=AckStatus.ACK_STATUS_APPLIED))
        await client.send(snapshot=snap(12, "run-restart", [seed("s1", S.SEED_STAGE_BLENDING, alpha=1.0)]))
        assert (await client.next()).decision.advance.target_stage == S.SEED_STAGE_SHADOWING
        await client.close()
