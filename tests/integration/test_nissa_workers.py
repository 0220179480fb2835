"""Nissa's ingest worker processes against the real broker and PostgreSQL: two workers
share the group; a SIGKILLed worker is replaced and its partitions' events are stored
exactly once; workers stop with the server, also when the server is SIGKILLed; a broker
that cannot be reached fails the start naming kafka_bootstrap."""

import os
import signal
import subprocess
import sys
import uuid

import psutil
import pytest
from prometheus_client import REGISTRY

from esper.nissa.config import NissaConfig
from esper.nissa.service import SPEC
from esper.nissa.workers import IngestWorkers
from esper.runtime.config import ConfigError
from esper.runtime.infra import free_port
from esper.runtime.server import StartupError, start_server
from tests.fixtures.processes import children_running
from tests.fixtures.waiting import eventually
from tests.integration.test_nissa import _counts, _publish, _run_events

pytestmark = pytest.mark.integration
WORKER_MODULE = "esper.nissa.worker"


def _workers_of(pid: int) -> list[psutil.Process]:
    return children_running(pid, WORKER_MODULE)


def _config(dsn: str, bootstrap: str, **changes) -> NissaConfig:
    config = NissaConfig(port=0, metrics_port=-1, postgres_dsn=dsn, kafka_bootstrap=bootstrap,
                         consumer_group=f"g-{uuid.uuid4().hex[:8]}", ingest_workers=2,
                         **changes)
    config.validate()
    return config


async def _all_stored(dsn: str, run: str, expected: int) -> bool:
    stored, counted = await _counts(dsn, run)
    assert stored <= expected and counted <= expected, "an event was stored twice"
    return stored == counted == expected


async def test_a_killed_worker_is_replaced_and_nothing_is_lost_or_doubled(
    fresh_database, kafka_bootstrap
):
    config = _config(fresh_database, kafka_bootstrap)
    running = await start_server(SPEC, config)
    try:
        workers = _workers_of(os.getpid())
        assert len(workers) == 2
        first = f"run-{uuid.uuid4().hex[:8]}"
        events = [e for _ in range(4) for e in _run_events(first)]
        for i, event in enumerate(events):  # four times the run, each event its own id
            event.event_id = f"{first}-{i}"
        await _publish(kafka_bootstrap, events)
        assert await eventually(lambda: _all_stored(fresh_database, first, len(events)))

        # The workers' consumer metrics reach the server's /metrics.
        snapshots = sum(1 for e in events if e.HasField("snapshot"))
        labels = {"group": config.consumer_group, "topic": "esper.telemetry.training"}

        # (The session's broker also holds other tests' events: the new group reads them too.)
        async def forwarded() -> bool:
            value = REGISTRY.get_sample_value("esper_oona_events_consumed_total", labels) or 0
            lags = [s.value for m in REGISTRY.collect()
                    if m.name == "esper_oona_consumer_lag_records"
                    for s in m.samples if s.labels["group"] == config.consumer_group]
            return value >= snapshots and lags and not any(lags)

        assert await eventually(forwarded, 15)

        victim = workers[0]
        victim.send_signal(signal.SIGKILL)
        second = f"run-{uuid.uuid4().hex[:8]}"
        later = _run_events(second)
        await _publish(kafka_bootstrap, later)
        assert await eventually(lambda: _all_stored(fresh_database, second, len(later)), 60)

        async def replaced() -> bool:
            now = _workers_of(os.getpid())
            return len(now) == 2 and victim.pid not in {w.pid for w in now}

        assert await eventually(replaced, 60)
        # The first run was not stored again by the replacement (its offsets were committed).
        assert await _all_stored(fresh_database, first, len(events))
    finally:
        await running.stop(0)
    assert _workers_of(os.getpid()) == []


async def test_unreachable_broker_fails_the_start_naming_kafka_bootstrap(fresh_database):
    config = _config(fresh_database, f"127.0.0.1:{free_port()}")
    with pytest.raises(StartupError, match="kafka_bootstrap"):
        await start_server(SPEC, config)
    assert _workers_of(os.getpid()) == []


def test_workers_die_with_a_killed_server(fresh_database, kafka_bootstrap, tmp_path):
    env = dict(os.environ, ESPER_POSTGRES_DSN=fresh_database,
               ESPER_KAFKA_BOOTSTRAP=kafka_bootstrap, ESPER_METRICS_PORT="-1",
               ESPER_STATE_DIR=str(tmp_path), ESPER_CONSUMER_GROUP=f"g-{uuid.uuid4().hex[:8]}")
    server = subprocess.Popen([sys.executable, "-m", "esper.cli.main", "serve", "nissa"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    try:
        for line in server.stdout:  # the banner comes once every worker is ingesting
            if "serving on" in line:
                break
        else:
            raise AssertionError(f"esper serve nissa exited {server.wait()}")
        workers = _workers_of(server.pid)
        assert len(workers) == 2
        server.send_signal(signal.SIGKILL)
        server.wait(30)
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert alive == []
    finally:
        server.kill()
        server.wait(30)


def test_ingest_workers_setting_is_validated():
    with pytest.raises(ConfigError, match="ingest_workers"):
        NissaConfig(ingest_workers=-1).validate()
    with pytest.raises(ConfigError, match="ingest_workers"):
        NissaConfig(ingest_workers=17).validate()


async def test_a_report_that_fails_to_apply_does_not_stop_the_supervision(
    fresh_database, kafka_bootstrap
):
    applied: list[int] = []

    def flaky(report) -> None:
        applied.append(len(report.bodies))
        if len(applied) == 1:
            raise RuntimeError("a bug in the fan-out")

    workers = IngestWorkers(_config(fresh_database, kafka_bootstrap), 1, flaky)
    await workers.start()
    try:
        for part in range(2):
            run = f"run-{uuid.uuid4().hex[:8]}"
            events = _run_events(run)
            await _publish(kafka_bootstrap, events)
            assert await eventually(lambda: _all_stored(fresh_database, run, len(events)))

        async def both_applied() -> bool:
            return len(applied) >= 2

        assert await eventually(both_applied, 15)
        assert all(proc.returncode is None for proc in workers._procs.values())
    finally:
        await workers.stop()


@pytest.mark.parametrize("setup", [b"", b"not json\n", b'{"config": {"bogus": 1}, "worker": 0}\n',
                                   b'{"config": {"ingest_workers": -1}, "worker": 0}\n'])
def test_a_worker_given_a_bad_setup_line_exits_2_naming_it(setup):
    worker = subprocess.run([sys.executable, "-m", WORKER_MODULE], input=setup,
                            capture_output=True, timeout=60)
    assert worker.returncode == 2
    assert worker.stdout == b""  # no frame: the server reads "did not start"
    assert b"worker setup" in worker.stderr or b"ingest_workers" in worker.stderr
