"""ListEvents against real PostgreSQL: a run's (or every run's) stored events by kind, in
pages of one consistent listing (events stored meanwhile, even in a transaction that was
open when the listing began, are neither skipped nor repeated); hostile inputs get
INVALID_ARGUMENT naming the field while Nissa keeps serving. And Simic's read_nissa (and
`esper tamiyo train --nissa`) reading episodes through it."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
import grpc
import pytest

from esper.cli.main import main as esper_main
from esper.leyline.v1 import control_pb2, nissa_pb2, tamiyo_pb2
from esper.nissa import listing
from esper.nissa.service import SPEC
from esper.nissa.store import ingest_batch
from esper.oona import new_event
from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import NissaClient
from esper.runtime.server import start_server
from esper.tamiyo.simic.dataset import DatasetError
from esper.tamiyo.simic.sources import read_nissa
from tests.integration.test_nissa import _config, _snapshot
from tests.unit.test_simic_dataset import synthetic_episode

pytestmark = pytest.mark.integration


@pytest.fixture
async def nissa(fresh_database, kafka_bootstrap):
    config = _config(fresh_database, kafka_bootstrap, f"nissa-events-{uuid.uuid4().hex[:8]}",
                     ingest_workers=0)
    server = await start_server(SPEC, config)
    client = NissaClient(server.address, security=ChannelSecurity())
    conn = await asyncpg.connect(fresh_database)
    try:
        yield server, client.stub, conn  # the raw stub: these tests check pages and statuses
    finally:
        await conn.close()
        await client.close()
        await server.stop(0)


async def store(conn, events) -> None:
    await ingest_batch(conn, [(e, e.SerializeToString()) for e in events])


def at(event, seconds: float):
    """`event` stamped `seconds` after a fixed time (so the listing's order is known)."""
    event.time.FromDatetime(dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds))
    return event


def ack(run: str, step: int):
    return new_event(source="tolaria", run_id=run, ack=control_pb2.DecisionAck(
        decision_id=f"d-{step}", run_id=run, status=control_pb2.ACK_STATUS_APPLIED, step=step))


async def listing_of(stub, page_size: int, **request) -> tuple[list[str], int]:
    """Every event id of one listing, in order, and how many pages it took."""
    ids, token, pages = [], "", 0
    while True:
        response = await stub.ListEvents(nissa_pb2.ListEventsRequest(
            page_size=page_size, page_token=token, **request))
        ids += [e.event_id for e in response.events]
        pages += 1
        token = response.next_page_token
        if not token:
            return ids, pages


def ours_of(listed: list[str], runs: dict) -> list[str]:
    """The listed ids of the events a test stored, in listing order: a listing of every run
    also holds what the fixture's Nissa ingested from the session broker's backlog (other
    tests' events and the alerts Nissa raised on them)."""
    known = {e.event_id for events in runs.values() for e in events}
    return [i for i in listed if i in known]


async def test_pages_of_one_run_and_of_every_run_by_kind(nissa):
    _, stub, conn = nissa
    runs = {run: [at(_snapshot(run, step, 1.0), step) for step in range(12)]
            + [at(ack(run, step), step + 0.5) for step in range(0, 12, 3)] for run in ("run-b", "run-a")}
    await store(conn, [e for events in runs.values() for e in events])
    ids, pages = await listing_of(stub, 5, run_id="run-a")
    assert ids == [e.event_id for e in sorted(runs["run-a"], key=lambda e: e.time.ToDatetime())]
    assert pages == 4  # 16 events, 5 a page
    acks, _ = await listing_of(stub, 3, run_id="run-b", kinds=["ack"])
    assert acks == [e.event_id for e in runs["run-b"] if e.WhichOneof("payload") == "ack"]
    everything, _ = await listing_of(stub, 7)
    assert len(set(everything)) == len(everything)  # nothing listed twice
    ours = ours_of(everything, runs)  # the fixture's Nissa also ingests the shared broker's backlog
    assert ours[:16] == ids and len(ours) == 32
    assert (await stub.ListEvents(nissa_pb2.ListEventsRequest(run_id="run-none"))).events == []
    # A redelivered batch with new events takes the deduplicating path: its rows, too, record
    # the transaction that stored them, and each event is listed once.
    extra = [at(ack("run-a", 100 + i), 100 + i) for i in range(3)]
    await store(conn, runs["run-a"][:2] + extra)
    assert await conn.fetchval("SELECT count(*) FROM nissa.events WHERE stored_by IS NULL") == 0
    assert (await listing_of(stub, 5, run_id="run-a"))[0] == ids + [e.event_id for e in extra]


async def test_events_stored_meanwhile_are_neither_skipped_nor_repeated(nissa, fresh_database):
    _, stub, conn = nissa
    first = [at(_snapshot("run-m", step, 1.0), step * 10) for step in range(10)]
    await store(conn, first)
    # A transaction that stores events and is still open when the listing begins.
    pending = [at(_snapshot("run-m", 100 + i, 1.0), 5 + i * 40) for i in range(3)]  # 5, 45, 85
    late = await asyncpg.connect(fresh_database)
    transaction = late.transaction()
    await transaction.start()
    await store(late, pending)
    try:
        page = await stub.ListEvents(nissa_pb2.ListEventsRequest(run_id="run-m", page_size=4))
        seen = [e.event_id for e in page.events]
        # Committed meanwhile: the open transaction, and events timed before and after the page.
        await transaction.commit()
        meanwhile = [at(_snapshot("run-m", 200, 1.0), 1), at(_snapshot("run-m", 201, 1.0), 95),
                     at(_snapshot("run-a", 1, 1.0), 0), at(_snapshot("run-z", 1, 1.0), 0)]
        await store(conn, meanwhile)
        token = page.next_page_token
        while token:
            page = await stub.ListEvents(nissa_pb2.ListEventsRequest(run_id="run-m", page_size=4,
                                                                     page_token=token))
            seen += [e.event_id for e in page.events]
            token = page.next_page_token
    finally:
        await late.close()
    assert seen == [e.event_id for e in first]
    # Every run's listing begun before them does not show them either; a new listing does.
    again, _ = await listing_of(stub, 3, run_id="run-m")
    assert len(again) == len(first) + len(pending) + 2 and len(set(again)) == len(again)
    stored = {"run": first + pending + meanwhile}
    everything = (await listing_of(stub, 4))[0]
    assert len(set(everything)) == len(everything)
    assert len(ours_of(everything, stored)) == len(first) + len(pending) + len(meanwhile)


async def test_a_page_ends_at_its_byte_bound(nissa, monkeypatch):
    _, stub, conn = nissa
    await store(conn, [at(_snapshot("run-s", step, 1.0), step) for step in range(5)])
    monkeypatch.setattr(listing, "MAX_PAGE_BYTES", 1)  # the server runs in this process
    ids, pages = await listing_of(stub, 100, run_id="run-s")
    assert len(ids) == 5 and pages == 5


async def test_hostile_requests_name_the_field_and_nissa_keeps_serving(nissa):
    _, stub, conn = nissa
    await store(conn, [at(_snapshot("run-h", step, 1.0), step) for step in range(4)])
    first = await stub.ListEvents(nissa_pb2.ListEventsRequest(run_id="run-h", page_size=2))
    cases = [
        (dict(kinds=["nonsense"]), "kinds"),
        (dict(run_id="x" * 300), "run_id"),
        (dict(run_id="bad\x00id"), "run_id"),
        (dict(page_token="garbage"), "page_token"),
        (dict(page_token="A" * 5000), "page_token"),
        (dict(page_token=first.next_page_token), "page_token"),  # issued for other filters
        (dict(run_id="run-h", kinds=["ack"], page_token=first.next_page_token), "page_token"),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListEvents(nissa_pb2.ListEventsRequest(**request))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert info.value.details().startswith(field), info.value.details()
    rest = await stub.ListEvents(nissa_pb2.ListEventsRequest(run_id="run-h", page_size=2,
                                                             page_token=first.next_page_token))
    assert len(rest.events) == 2


async def test_simic_reads_episodes_through_nissa(nissa, tmp_path, capsys):
    server, _, conn = nissa
    episodes = [synthetic_episode(run_id=run, decisions=8, seed_value=i) for i, run in enumerate(("ep-1", "ep-2"))]
    await store(conn, [e for ep in episodes for e in ep.events])
    context = tamiyo_pb2.SessionOpen()
    context.CopyFrom(episodes[0].open)
    context.run_id = ""
    data = await read_nissa(server.address, context, episodes[0].candidates)
    assert sorted(e.run_id for e in data.episodes) == ["ep-1", "ep-2"]
    assert len(data.transitions()) == 16 and data.problems.count == 0
    only = await read_nissa(server.address, context, episodes[0].candidates, run_ids=["ep-2", "ep-2"])
    assert [e.run_id for e in only.episodes] == ["ep-2"] and len(only.transitions()) == 8
    with pytest.raises(DatasetError, match="no run with decisions"):
        await read_nissa(server.address, context, episodes[0].candidates, run_ids=["nobody"])
    with pytest.raises(DatasetError, match="INVALID_ARGUMENT: run_id"):
        await read_nissa(server.address, context, episodes[0].candidates, run_ids=["x" * 300])
    # The CLI: esper tamiyo train --nissa ADDRESS --run ... (asyncio.run in its own thread).
    out = tmp_path / "p.safetensors"
    code = await asyncio.to_thread(esper_main, [
        "tamiyo", "train", "--nissa", server.address, "--run", "ep-1", "--out", str(out),
        "--epochs", "2", "--version", "gnn@nissa-1"])
    assert code == 0 and out.is_file()
    assert "gnn@nissa-1" in capsys.readouterr().out


def test_train_cli_reads_nissa_and_names_an_unreachable_one(tmp_path, capsys, monkeypatch):
    from esper.runtime.infra import free_port

    monkeypatch.delenv("ESPER_NISSA_ADDRESS", raising=False)
    dead = f"127.0.0.1:{free_port()}"
    code = esper_main(["tamiyo", "train", "--nissa", dead, "--out", str(tmp_path / "p.safetensors")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"Nissa at {dead}: UNAVAILABLE" in err, err
