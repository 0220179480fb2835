"""A trace started in Tolaria continues through Kafka into Nissa: every `nissa.ingest` span
is a child of the `tolaria.safe_point` span its events were published under."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
import torch
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import esper.tolaria
from esper.nissa import service as nissa_service
from esper.nissa.config import NissaConfig
from esper.oona.topics import EVENT_TOPIC_NAMES
from esper.runtime.server import start_server
from esper.tolaria.config import TolariaConfig

pytestmark = pytest.mark.integration

STEPS = 6


def _exporter() -> InMemorySpanExporter:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def _train(run_id: str, bootstrap: str) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    config = TolariaConfig(run_id=run_id, snapshot_every=2, kafka_bootstrap=bootstrap,
                           progress=False)
    session = esper.tolaria.attach(model, optimizer, policy="none", config=config)
    try:
        x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
        for _ in range(STEPS):
            optimizer.zero_grad()
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out, y)
            loss.backward()
            optimizer.step()
            session.step(loss, out, y)
    finally:
        session.close()


async def _caught_up(group: str, bootstrap: str) -> None:
    """Until Nissa's consumer group has committed the broker's whole backlog (the session
    broker holds every earlier test's events). A backlog batch carries spans of many
    producers, and Nissa records at most MAX_SPANS_PER_BATCH per batch, the most frequent
    first: the run's few events must not share a batch with it. The broker's committed
    offsets are the truth here: the lag gauge keeps a partition's last value after a
    rebalance hands it to the other worker, which re-reads what was not committed."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    # A member of the group that never subscribes (so never joins): it only reads offsets.
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                              enable_auto_commit=False)
    await admin.start()
    await reader.start()
    try:
        described = await admin.describe_topics(list(EVENT_TOPIC_NAMES))
        partitions = [TopicPartition(t["topic"], p["partition"])
                      for t in described for p in t["partitions"]]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ends = await reader.end_offsets(partitions)
            committed = {tp: await reader.committed(tp) for tp in ends}
            if all((committed[tp] or 0) >= end for tp, end in ends.items()):
                return
            await asyncio.sleep(0.2)
    finally:
        await reader.stop()
        await admin.close()
    raise AssertionError("Nissa did not catch up with the broker's backlog")


async def test_tolaria_trace_continues_into_nissa(fresh_database, kafka_bootstrap):
    exporter = _exporter()
    config = NissaConfig(port=0, metrics_port=-1, postgres_dsn=fresh_database,
                         kafka_bootstrap=kafka_bootstrap, consumer_group=f"g-{uuid.uuid4().hex[:6]}")
    config.validate()
    nissa = await start_server(nissa_service.SPEC, config)
    run_id = f"run-trace-{uuid.uuid4().hex[:8]}"
    try:
        await _caught_up(config.consumer_group, kafka_bootstrap)
        await asyncio.to_thread(_train, run_id, kafka_bootstrap)
        deadline = time.monotonic() + 30
        ingest: list = []
        while time.monotonic() < deadline:
            ingest = [s for s in exporter.get_finished_spans()
                      if s.name == "nissa.ingest" and s.attributes.get("esper.run_id") == run_id]
            if sum(s.attributes["esper.events"] for s in ingest) >= STEPS // 2:
                break
            await asyncio.sleep(0.2)
    finally:
        await nissa.stop(0)
    safe_points = {s.context.span_id: s for s in exporter.get_finished_spans()
                   if s.name == "tolaria.safe_point" and s.attributes.get("esper.run_id") == run_id}
    assert len(safe_points) == STEPS // 2
    assert ingest, "Nissa recorded no span for the run's events"
    for span in ingest:
        parent = safe_points.get(span.parent.span_id)
        assert parent is not None, "a nissa.ingest span without its Tolaria parent"
        assert span.context.trace_id == parent.context.trace_id
    assert sum(s.attributes["esper.events"] for s in ingest) >= STEPS // 2


async def test_a_grpc_call_continues_the_callers_trace_into_a_server_span():
    """The server's one interceptor (esper.runtime.interceptor) starts a SERVER span per
    RPC, a child of the span the caller made it under, with the status it ended with."""
    from esper.rpc.channels import ChannelSecurity
    from esper.rpc.clients import TamiyoClient
    from esper.rpc.errors import ServiceError
    from esper.tamiyo import service as tamiyo_service
    from tests.integration.test_tamiyo_server import tamiyo_config

    exporter = _exporter()
    running = await start_server(tamiyo_service.SPEC, tamiyo_config(publish_events=False))
    try:
        async with TamiyoClient(running.address, security=ChannelSecurity()) as client:
            with trace.get_tracer("test").start_as_current_span("caller") as caller:
                await client.list_policies()
                with pytest.raises(ServiceError):
                    await client.reload_policy("heuristic")  # INVALID_ARGUMENT
    finally:
        await running.stop(0)
    finished = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    spans = {s.name: s for s in finished if s.kind == trace.SpanKind.SERVER}
    listed = spans["/esper.leyline.v1.TamiyoService/ListPolicies"]
    refused = spans["/esper.leyline.v1.TamiyoService/ReloadPolicy"]
    for span in (listed, refused):  # caller -> the client interceptor's CLIENT span -> the server's
        client_span = by_id[span.parent.span_id]
        assert client_span.kind == trace.SpanKind.CLIENT
        assert client_span.parent.span_id == caller.get_span_context().span_id
        assert span.context.trace_id == caller.get_span_context().trace_id
        assert span.attributes["rpc.service"] == "esper.leyline.v1.TamiyoService"
    assert listed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert listed.status.is_ok
    assert refused.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert not refused.status.is_ok
