"""Tamiyo's bounds under abuse, against a real server on loopback: a Session client that
never reads is slowed and then cut (RESOURCE_EXHAUSTED) with a bounded queue, and its slot
is freed when it goes; a stream that never opens times out; concurrent streams are limited
per server and per client; sizes, enum values and numbers beyond the limits are refused
(open, Decide) or dropped with a SessionWarning (inside a stream) — never INTERNAL; graphs
kept over all runs stay within their byte budget; old connections are cut by their age."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import grpc
import pytest
from prometheus_client import REGISTRY

from esper.leyline.v1 import tamiyo_pb2, tamiyo_pb2_grpc
from esper.leyline.v1.lifecycle_pb2 import SeedStage as S
from esper.leyline.v1.lifecycle_pb2 import SeedState
from tests.integration.test_tamiyo_server import (
    WAIT_S,
    Client,
    expect_abort,
    open_message,
    open_session,
    snap,
    tamiyo,
)
from tests.unit.test_tamiyo_support import graph, seed

pytestmark = pytest.mark.integration

QUIET = {"publish_events": False, "tezzeret_address": ""}


def warnings_total() -> float:
    return sum(s.value for m in REGISTRY.collect() if m.name == "esper_tamiyo_session_warnings"
               for s in m.samples if s.name.endswith("_total"))


async def settled(read, *, quiet_s: float = 2.0) -> float:
    """`read()` once it has not changed for `quiet_s` (the server stopped working)."""
    last, still = read(), 0.0
    while still < quiet_s:
        await asyncio.sleep(0.25)
        now = read()
        still = still + 0.25 if now == last else 0.0
        last = now
    return last


async def test_a_client_that_never_reads_is_slowed_then_cut_and_its_memory_bounded():
    floods = 3000
    async with tamiyo(session_send_queue=8, session_send_timeout_s=1.0, heartbeat_seconds=1,
                      max_sessions_per_client=1, **QUIET) as (running, stub, _c):
        # The attacker's own channel, with a small receive window (no BDP growth), so the
        # server's sends stop as soon as the client stops reading.
        deaf = grpc.aio.insecure_channel(running.address, options=[
            ("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16 * 1024)])
        client, _ = await open_session(tamiyo_pb2_grpc.TamiyoServiceStub(deaf), "run-deaf")
        before = warnings_total()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            # Every snapshot earns a warning (wrong run, a long detail): the responses a
            # deaf client would make the server keep.
            for i in range(floods):
                await client.send(snapshot=snap(10 + i, "x" * 200))
            handled = await settled(lambda: warnings_total() - before)
            grown = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        # Slowed: the server stopped taking the client's messages once its queue was full
        # (the rest wait on the client's side, under HTTP/2 flow control).
        assert handled < floods, handled
        assert grown < 8 * 1024 * 1024, grown
        # Cut: reading now drains what was queued, then the status says why.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            for _ in range(floods + 100):
                await client.next(skip_heartbeats=True)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "read no response" in info.value.details()
        client.call.cancel()
        await deaf.close()
        # Released: the client's one stream slot is free again.
        again, accept = await open_session(stub, "run-deaf")
        assert accept.resumed
        await again.close()


async def test_a_stream_that_never_opens_times_out():
    async with tamiyo(open_timeout_s=0.5, **QUIET) as (_, stub, _c):
        client = Client(stub)  # sends nothing
        await expect_abort(client, grpc.StatusCode.DEADLINE_EXCEEDED, "open: no open message")
        # The slot it held is free: a real session opens.
        real, _ = await open_session(stub, "run-after-silence")
        await real.close()


async def test_concurrent_streams_are_limited_per_client_and_per_server():
    async with tamiyo(max_sessions=4, max_sessions_per_client=2, **QUIET) as (_, stub, _c):
        held = [await open_session(stub, f"run-l{i}") for i in range(2)]
        third = Client(stub)
        await third.send(open=open_message("run-l2"))
        await expect_abort(third, grpc.StatusCode.RESOURCE_EXHAUSTED, "limit per client")
        await held[0][0].close()
        await asyncio.sleep(0.5)  # the server sees the cancel
        replacement, _ = await open_session(stub, "run-l3")
        await replacement.close()
        await held[1][0].close()
    async with tamiyo(max_sessions=2, max_sessions_per_client=2, **QUIET) as (_, stub, _c):
        held = [await open_session(stub, f"run-m{i}") for i in range(2)]
        third = Client(stub)
        await third.send(open=open_message("run-m2"))
        await expect_abort(third, grpc.StatusCode.RESOURCE_EXHAUSTED, "open streams, its limit")
        for client, _ in held:
            await client.close()


async def test_hostile_values_in_a_session_are_warnings_and_the_session_lives_on():
    async with tamiyo(**QUIET) as (_, stub, _c):
        client, _ = await open_session(stub, "run-hv")
        huge = snap(10, "run-hv", [seed("s1", S.SEED_STAGE_GERMINATED)])
        huge.step = 2**64 - 1
        await client.send(snapshot=huge)
        warning = (await client.next("warning")).warning
        assert warning.code == "invalid_field" and "snapshot.step" in warning.detail
        alien = snap(11, "run-hv", [SeedState(slot_id="s1", stage=999)])
        await client.send(snapshot=alien)
        warning = (await client.next("warning")).warning
        assert "snapshot.seeds[0].stage" in warning.detail and "SeedStage" in warning.detail
        long_id = snap(12, "run-hv")
        long_id.layers.add(layer_id="L" * 1_000_000)
        await client.send(snapshot=long_id)
        warning = (await client.next("warning")).warning
        assert warning.code == "oversized" and "snapshot.layers[0].layer_id" in warning.detail
        # Nothing of those was stored: the next real snapshot is decided on.
        await client.send(snapshot=snap(13, "run-hv", [seed("s1", S.SEED_STAGE_GERMINATED)]))
        assert (await client.next("decision")).decision.issued_at_step == 13
        await client.close()


@pytest.mark.parametrize(("open_kw", "field"), [
    ({"seeds": [SeedState(slot_id="s0", stage=999)]}, "open.seeds[0].stage"),
    ({"capabilities": tamiyo_pb2.Capabilities(dtype=99)}, "open.capabilities.dtype"),
    ({"acked_decision_ids": ["d" * 1_000_000]}, "open.acked_decision_ids[0]"),
    ({"seeds": [SeedState(slot_id="s0", steps_in_stage=2**64 - 1)]}, "open.seeds[0].steps_in_stage"),
])
async def test_hostile_opens_are_refused_naming_the_field(open_kw, field):
    async with tamiyo(**QUIET) as (_, stub, _c):
        client = Client(stub)
        await client.send(open=open_message("run-ho", **open_kw))
        await expect_abort(client, grpc.StatusCode.INVALID_ARGUMENT, field)


async def test_a_one_megabyte_node_id_and_an_oversized_graph_are_refused():
    async with tamiyo(max_graph_bytes=64 * 1024, **QUIET) as (_, stub, _c):
        g = graph(4)
        g.nodes[0].node_id = "n" * 1_000_000
        client = Client(stub)
        await client.send(open=open_message("run-big-id", graph=g))
        await expect_abort(client, grpc.StatusCode.INVALID_ARGUMENT, "open.graph.nodes[0].node_id")
        fat = graph(8)  # 8 x 16 KB op types: past the 64 KiB limit
        for node in fat.nodes:
            node.op_type = "Linear" + "x" * 16_000
        client = Client(stub)
        await client.send(open=open_message("run-fat", graph=fat))
        await expect_abort(client, grpc.StatusCode.INVALID_ARGUMENT, "open.graph: ")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Decide(tamiyo_pb2.DecideRequest(snapshot=snap(1, "run-fat"), graph=fat))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "graph: " in info.value.details()


async def test_many_opens_with_big_graphs_keep_graph_memory_within_its_budget():
    per_graph = graph(200).ByteSize()
    budget = 5 * per_graph
    async with tamiyo(max_graph_nodes=512, max_run_graph_bytes=budget, **QUIET) as (_, stub, _c):
        for i in range(30):
            client, accept = await open_session(stub, f"run-g{i}", graph=graph(200))
            assert not accept.resumed
            await client.close()
        # The most recent runs are remembered, the oldest forgotten (graph bytes bounded).
        client, accept = await open_session(stub, "run-g29", graph=graph(200))
        assert accept.resumed
        await client.close()
        client, accept = await open_session(stub, "run-g0", graph=graph(200))
        assert not accept.resumed
        await client.close()


async def test_decide_refuses_overflowing_and_unknown_values():
    async with tamiyo(**QUIET) as (_, stub, _c):
        async def refused(request, fragment):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Decide(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
            assert fragment in info.value.details()
        huge = snap(10, "run-d", [seed("s1", S.SEED_STAGE_GERMINATED)])
        huge.step = 2**64 - 1
        await refused(tamiyo_pb2.DecideRequest(snapshot=huge, graph=graph(4)), "snapshot.step")
        alien = snap(10, "run-d", [SeedState(slot_id="s1", stage=999)])
        await refused(tamiyo_pb2.DecideRequest(snapshot=alien, graph=graph(4)), "snapshot.seeds[0].stage")
        await refused(tamiyo_pb2.DecideRequest(snapshot=snap(10, "run-d"), graph=graph(4),
                                               capabilities=tamiyo_pb2.Capabilities(dtype=99)),
                      "capabilities.dtype")
        ok = await stub.Decide(tamiyo_pb2.DecideRequest(
            snapshot=snap(10, "run-d", [seed("s1", S.SEED_STAGE_GERMINATED)]), graph=graph(4)))
        assert ok.decision.WhichOneof("action") == "advance"


async def test_a_connection_older_than_its_age_limit_is_cut():
    async with tamiyo(max_connection_age_s=1, max_connection_age_grace_s=1, heartbeat_seconds=1,
                      **QUIET) as (_, stub, _c):
        client, _ = await open_session(stub, "run-old")

        async def until_cut():
            while True:
                await client.next("heartbeat", skip_heartbeats=False)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(until_cut(), WAIT_S)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                     grpc.StatusCode.INTERNAL), info.value
        gc.collect()
