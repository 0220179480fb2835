"""Nissa against the real broker and PostgreSQL: a run's events arrive in order, a
restarted Nissa (and a full redelivery) loses and double-counts nothing, alerts fire,
live tail works, and hostile RPC inputs get the right status while Nissa keeps serving."""

import asyncio
import contextlib
import datetime as dt
import io
import math
import urllib.request
import uuid

import asyncpg
import grpc
import pytest

from esper.cli.main import main as esper_main
from esper.leyline.v1 import (
    control_pb2,
    lifecycle_pb2,
    nissa_pb2,
    signals_pb2,
    telemetry_pb2,
)
from esper.nissa.config import NissaConfig
from esper.nissa.service import SPEC
from esper.oona import OonaProducer, new_event
from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import NissaClient
from esper.rpc.errors import ServiceError
from esper.runtime.server import start_server
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration
STAGE = lifecycle_pb2


def _config(dsn: str, bootstrap: str, group: str, ingest_workers: int = 2) -> NissaConfig:
    config = NissaConfig(
        port=0,
        metrics_port=0,
        postgres_dsn=dsn,
        kafka_bootstrap=bootstrap,
        consumer_group=group,
        heartbeat_check_s=0.5,
        ingest_workers=ingest_workers,
    )
    config.validate()
    return config


def _snapshot(run: str, step: int, loss: float, epoch_end: bool = False):
    snap = signals_pb2.TrainingSnapshot(
        run_id=run, step=step, epoch=step // 10, epoch_end=epoch_end
    )
    snap.metrics.train_loss = loss
    snap.metrics.val_loss = loss
    snap.metrics.val_accuracy = min(1.0, step / 30)
    snap.resources.total_params = 1000 + step
    snap.seeds.add(seed_id="s1", stage=STAGE.SEED_STAGE_TRAINING)
    return new_event(source="tolaria", run_id=run, snapshot=snap)


def _run_events(run: str) -> list[telemetry_pb2.TelemetryEvent]:
    """One small run: 30 snapshots (3 epochs), a seed's life ending in a breaker cull, a
    decision with its ack, a field report."""
    events = [
        _snapshot(run, step, 1.0 / (step + 1), epoch_end=step % 10 == 9) for step in range(30)
    ]
    for step, (a, b, why) in enumerate(
        [
            (STAGE.SEED_STAGE_DORMANT, STAGE.SEED_STAGE_GERMINATED, "decision d1"),
            (STAGE.SEED_STAGE_GERMINATED, STAGE.SEED_STAGE_TRAINING, "G1 passed"),
            (STAGE.SEED_STAGE_TRAINING, STAGE.SEED_STAGE_CULLED, "INSTABILITY: loss 9x"),
        ]
    ):
        events.append(
            new_event(
                source="tolaria",
                run_id=run,
                seed_transition=(
                    telemetry_pb2.SeedTransition(
                        seed_id="s1",
                        slot_id="slot0",
                        from_stage=a,
                        to_stage=b,
                        step=5 + step,
                        reason=why,
                    )
                ),
            )
        )
    decision = control_pb2.AdaptationDecision(decision_id=f"d1-{run}", run_id=run, issued_at_step=4)
    decision.germinate.slot_id = "slot0"
    events.append(new_event(source="tamiyo", run_id=run, decision=decision))
    events.append(
        new_event(
            source="tolaria",
            run_id=run,
            ack=control_pb2.DecisionAck(
                decision_id=f"d1-{run}", run_id=run, status=control_pb2.ACK_STATUS_APPLIED, step=5
            ),
        )
    )
    events.append(
        new_event(
            source="tamiyo",
            run_id=run,
            field_report=telemetry_pb2.FieldReport(
                run_id=run,
                seed_id="s1",
                final_stage=STAGE.SEED_STAGE_CULLED,
                cull_reason=control_pb2.CULL_REASON_INSTABILITY,
            ),
        )
    )
    return events


async def _publish(bootstrap: str, events) -> None:
    producer = OonaProducer(bootstrap, client_id="test-nissa")
    await producer.start()
    try:
        for event in events:
            assert producer.publish(event)
        assert await producer.flush(30)
    finally:
        await producer.stop()
    assert producer.stats().dropped == 0


async def _counts(dsn: str, run: str) -> tuple[int, int]:
    """(events of the run stored, events the run counts), both without the alert events
    Nissa itself publishes about the run. One statement, so one snapshot: Nissa's alerts
    come back through the broker and are stored (and counted) while a test polls, and
    reads from separate statements could count one that the other did not see."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM nissa.events WHERE run_id = $1 AND kind <> 'alert')"
            " AS stored,"
            " (SELECT count(*) FROM nissa.events WHERE run_id = $1 AND kind = 'alert') AS alerts,"
            " (SELECT event_count FROM nissa.runs WHERE run_id = $1) AS counted",
            run,
        )
        return row["stored"], (row["counted"] or 0) - row["alerts"]
    finally:
        await conn.close()


async def _summary(address: str, run: str) -> nissa_pb2.GetRunSummaryResponse | None:
    async with NissaClient(address, security=ChannelSecurity()) as nissa:
        try:
            return await nissa.get_run_summary(run)
        except ServiceError as exc:
            assert exc.code == grpc.StatusCode.NOT_FOUND
            return None


@pytest.mark.parametrize("ingest_workers", [2, 0], ids=["workers", "in-process"])
async def test_run_history_restart_and_redelivery(
    fresh_database, kafka_bootstrap, tmp_path, ingest_workers
):
    run = f"run-{uuid.uuid4().hex[:8]}"
    group = f"nissa-{uuid.uuid4().hex[:6]}"
    events = _run_events(run)
    first_half, rest = events[:20], events[20:]
    running = await start_server(SPEC, _config(fresh_database, kafka_bootstrap, group, ingest_workers))
    try:
        await _publish(kafka_bootstrap, first_half)
        assert await eventually(lambda: _has_count(fresh_database, run, 20))
    finally:
        await running.stop(0)

    await _publish(kafka_bootstrap, rest)  # published while Nissa is down
    running = await start_server(SPEC, _config(fresh_database, kafka_bootstrap, group, ingest_workers))
    total = len(first_half) + len(rest)
    try:
        assert await eventually(lambda: _has_count(fresh_database, run, total))
        summary = await _summary(running.address, run)
        cli = await asyncio.to_thread(_cli_outputs, running.address, run, tmp_path / "run.png")
        metrics = await asyncio.to_thread(_scrape, running.metrics_port)
    finally:
        await running.stop(0)
    assert await _counts(fresh_database, run) == (total, total)

    # Events in order per run, a seed timeline with reasons, the decision with its ack.
    assert [p.epoch for p in summary.epochs] == [0, 1, 2]
    assert [p.step for p in summary.epochs] == [9, 19, 29]
    assert [p.total_params for p in summary.epochs] == [1009, 1019, 1029]
    assert [t.to_stage for t in summary.seed_timeline] == [
        STAGE.SEED_STAGE_GERMINATED,
        STAGE.SEED_STAGE_TRAINING,
        STAGE.SEED_STAGE_CULLED,
    ]
    assert summary.seed_timeline[2].reason.startswith("INSTABILITY")
    assert len(summary.decisions) == 1
    assert summary.decisions[0].ack.status == control_pb2.ACK_STATUS_APPLIED
    assert len(summary.field_reports) == 1
    assert summary.run.culled == 1 and summary.run.last_step == 29
    assert math.isclose(summary.run.last_val_accuracy, 29 / 30)
    breaker = [a for a in summary.alerts if a.rule == "seed_culled_by_circuit_breaker"]
    assert len(breaker) == 1  # the transition and the field report raise one alert
    assert f'esper_nissa_run_loss{{run_id="{run}",split="train"}}' in metrics
    listing, show, plot, compare = cli
    assert run in listing
    assert "GERMINATED@" in show and "-> TRAINING@" in show
    assert "fate: culled (INSTABILITY: loss 9x" in show
    assert "+0.00 pp" in compare and compare.count(run) == 2
    assert "APPLIED" in show and "seed_culled_by_circuit_breaker" in show
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in plot

    # A brand-new consumer group re-reads every event: nothing is counted twice. Markers
    # of the run on each of its topics (same key, same partition) arrive after the replay.
    running = await start_server(SPEC, _config(fresh_database, kafka_bootstrap, f"{group}-replay", ingest_workers))
    markers = _run_events(run)[27:]  # a snapshot and one event of every other kind
    try:
        await _publish(kafka_bootstrap, markers)
        await eventually(lambda: _has_count(fresh_database, run, total + len(markers)))
    finally:
        await running.stop(0)
    assert await _counts(fresh_database, run) == (total + len(markers),) * 2


def _cli_outputs(address: str, run: str, png) -> tuple[str, ...]:
    """`esper runs`, `esper runs show RUN`, `esper runs plot RUN -o PNG --baseline RUN`,
    `esper runs compare RUN RUN`, in process (a fresh interpreter per command is slow on a
    loaded machine)."""
    outputs = []
    for args in ([], ["show", run], ["plot", run, "-o", str(png), "--baseline", run],
                 ["compare", run, run]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert esper_main(["runs", *args, "--nissa", address]) == 0
        outputs.append(out.getvalue())
    return tuple(outputs)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


async def _has_count(dsn: str, run: str, want: int) -> bool:
    return (await _counts(dsn, run))[1] >= want


async def test_alerts_live_tail_and_hostile_inputs(fresh_database, kafka_bootstrap):
    run = f"run-{uuid.uuid4().hex[:8]}"
    running = await start_server(
        SPEC, _config(fresh_database, kafka_bootstrap, f"nissa-{uuid.uuid4().hex[:6]}")
    )
    try:
        # The raw stub from the client layer: these checks are of Nissa's exact statuses.
        async with NissaClient(running.address, security=ChannelSecurity()) as nissa:
            stub = nissa.stub
            await _check_hostile_inputs(stub)
            stream = stub.StreamEvents(
                nissa_pb2.StreamEventsRequest(run_id=run, kinds=["snapshot"])
            )
            await asyncio.sleep(0.5)  # let the subscription register
            bad = _snapshot(run, 3, float("nan"))
            await _publish(kafka_bootstrap, [_snapshot(run, 1, 0.5), bad])
            got = []
            async for response in stream:
                got.append(response.event)
                if len(got) == 2:
                    break
            stream.cancel()
            assert [e.snapshot.step for e in got] == [1, 3]

            async def nan_alerts():
                page = await stub.ListAlerts(nissa_pb2.ListAlertsRequest(run_id=run))
                return [a for a in page.alerts if a.rule == "nan_in_training"]

            alerts = await eventually(nan_alerts)
            assert len(alerts) == 1 and alerts[0].severity == telemetry_pb2.SEVERITY_CRITICAL
            acked = await stub.AcknowledgeAlert(
                nissa_pb2.AcknowledgeAlertRequest(alert_id=alerts[0].alert_id)
            )
            assert acked.alert.acknowledged
            assert await nan_alerts() == []  # acknowledged ones are hidden by default
            # Pages of one run: ours among them once (the fixture's Nissa may also have
            # ingested other tests' runs from the shared broker), and no empty last page.
            listed, token = [], ""
            while True:
                page = await stub.ListRuns(nissa_pb2.ListRunsRequest(page_size=1, page_token=token))
                assert len(page.runs) == 1
                listed += [r.run_id for r in page.runs]
                token = page.next_page_token
                if not token:
                    break
            assert run in listed and len(set(listed)) == len(listed)
    finally:
        await running.stop(0)


async def _check_hostile_inputs(stub) -> None:
    cases = [
        (stub.GetRunSummary(nissa_pb2.GetRunSummaryRequest()), "INVALID_ARGUMENT", "run_id"),
        (
            stub.GetRunSummary(nissa_pb2.GetRunSummaryRequest(run_id="x" * 1000)),
            "INVALID_ARGUMENT",
            "run_id",
        ),
        (stub.GetRunSummary(nissa_pb2.GetRunSummaryRequest(run_id="nope")), "NOT_FOUND", "run_id"),
        (
            stub.ListRuns(nissa_pb2.ListRunsRequest(page_token="garbage!")),
            "INVALID_ARGUMENT",
            "page_token",
        ),
        (
            stub.ListAlerts(nissa_pb2.ListAlertsRequest(min_severity=99)),
            "INVALID_ARGUMENT",
            "min_severity",
        ),
        (
            stub.AcknowledgeAlert(nissa_pb2.AcknowledgeAlertRequest()),
            "INVALID_ARGUMENT",
            "alert_id",
        ),
        (
            stub.AcknowledgeAlert(nissa_pb2.AcknowledgeAlertRequest(alert_id="none")),
            "NOT_FOUND",
            "alert_id",
        ),
    ]
    for call, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code().name == code and field in info.value.details()
    stream = stub.StreamEvents(nissa_pb2.StreamEventsRequest(kinds=["bogus"]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stream:
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kinds" in info.value.details()


async def test_list_pages_see_every_existing_row_once_while_rows_arrive(fresh_database, kafka_bootstrap):
    """Keyset pages (esper.runtime.pagination): runs and alerts that arrive between two
    pages, and runs that keep reporting, neither skip nor repeat an existing row."""
    running = await start_server(
        SPEC, _config(fresh_database, kafka_bootstrap, f"nissa-{uuid.uuid4().hex[:6]}")
    )
    conn = await asyncpg.connect(fresh_database)
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    counter = iter(range(10_000))

    async def add_runs(n: int) -> list[str]:
        ids = []
        for _ in range(n):
            i = next(counter)
            ids.append(f"keyset-{i:04d}")
            when = base + dt.timedelta(minutes=i)
            await conn.execute(
                "INSERT INTO nissa.runs (run_id, started_at, last_event_at) VALUES ($1, $2, $2)",
                ids[-1], when)
        return ids

    async def add_alerts(n: int, run: str) -> list[str]:
        ids = []
        for _ in range(n):
            i = next(counter)
            ids.append(f"alert-{i:04d}")
            await conn.execute(
                "INSERT INTO nissa.alerts (alert_id, event_id, rule, severity, run_id, service,"
                " message, fired_at) VALUES ($1, $1, 'test', 2, $2, 'nissa', 'm', $3)",
                ids[-1], run, base + dt.timedelta(minutes=i % 7))  # ties on fired_at too
        return ids

    try:
        existing = await add_runs(23)
        existing_alerts = await add_alerts(17, "keyset-0000")
        async with NissaClient(running.address, security=ChannelSecurity()) as nissa:
            stub = nissa.stub  # raw pages: this checks the tokens themselves
            seen: list[str] = []
            token = ""
            while True:
                page = await stub.ListRuns(nissa_pb2.ListRunsRequest(page_size=4, page_token=token))
                assert len(page.runs) <= 4
                seen += [r.run_id for r in page.runs]
                token = page.next_page_token
                if not token:
                    break
                await add_runs(3)  # new runs arrive on top of the newest-first list...
                # ...and existing runs keep reporting.
                await conn.execute(
                    "UPDATE nissa.runs SET last_event_at = now() WHERE run_id = ANY($1)", existing[::5])
            assert sorted(r for r in seen if r in existing) == sorted(existing)
            assert len(seen) == len(set(seen))
            listed = [r for r in seen if r in existing]
            assert listed == sorted(existing, reverse=True)  # newest first

            seen = []
            token = ""
            filters = {"run_id": "keyset-0000", "include_acknowledged": True}
            while True:
                page = await stub.ListAlerts(
                    nissa_pb2.ListAlertsRequest(page_size=5, page_token=token, **filters))
                seen += [a.alert_id for a in page.alerts]
                fired = [a.fired_at.ToDatetime() for a in page.alerts]
                assert fired == sorted(fired, reverse=True)
                token = page.next_page_token
                if not token:
                    break
                await add_alerts(2, "keyset-0000")
            assert sorted(a for a in seen if a in existing_alerts) == sorted(existing_alerts)
            assert len(seen) == len(set(seen))

            first = await stub.ListAlerts(nissa_pb2.ListAlertsRequest(page_size=1, **filters))
            for other in ({"run_id": "keyset-0001"}, {"include_acknowledged": False}):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.ListAlerts(nissa_pb2.ListAlertsRequest(
                        page_size=1, page_token=first.next_page_token, **{**filters, **other}))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert err.value.details().startswith("page_token: ")
            runs_token = (await stub.ListRuns(nissa_pb2.ListRunsRequest(page_size=1))).next_page_token
            with pytest.raises(grpc.aio.AioRpcError) as err:  # another RPC's token
                await stub.ListAlerts(nissa_pb2.ListAlertsRequest(page_token=runs_token, **filters))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith("page_token: ")
    finally:
        await conn.close()
        await running.stop(0)
