"""The settings and the plumbing of a server run as several processes on one port
(esper.runtime.processes); serving is tested in tests/integration/test_tamiyo_processes.py."""

from __future__ import annotations

import socket

import pytest

from esper.runtime.config import ConfigError
from esper.runtime.processes import (
    MAX_PROCESSES,
    claim_port,
    config_line,
    parse_config_line,
    process_config,
    serves_in_processes,
)
from esper.runtime.server import StartupError
from esper.tamiyo.config import TamiyoConfig

DSN = "postgresql://postgres@127.0.0.1:5432/esper"


@pytest.mark.parametrize("processes", [0, -1, MAX_PROCESSES + 1])
def test_processes_out_of_range_is_refused_naming_it(processes):
    with pytest.raises(ConfigError, match=r"^processes: "):
        TamiyoConfig(processes=processes, postgres_dsn=DSN).validate()


def test_tamiyo_processes_need_the_run_store():
    TamiyoConfig(processes=1).validate()
    with pytest.raises(ConfigError, match="processes: 2 processes need postgres_dsn"):
        TamiyoConfig(processes=2).validate()
    TamiyoConfig(processes=2, postgres_dsn=DSN).validate()


def test_a_fixed_metrics_port_leaves_room_for_every_process():
    TamiyoConfig(processes=4, postgres_dsn=DSN, metrics_port=65532).validate()
    with pytest.raises(ConfigError, match="metrics ports 65533-65536"):
        TamiyoConfig(processes=4, postgres_dsn=DSN, metrics_port=65533).validate()


def test_each_process_serves_the_shared_port_with_its_own_metrics_port():
    config = TamiyoConfig(processes=3, postgres_dsn=DSN, port=0, metrics_port=9100)
    assert serves_in_processes(config)
    third = process_config(config, 50123, 2)
    assert (third.port, third.metrics_port, third.processes) == (50123, 9102, 1)
    assert not serves_in_processes(third)
    for metrics_port in (0, -1):  # a free one each, or none
        assert process_config(TamiyoConfig(metrics_port=metrics_port), 1, 2).metrics_port == metrics_port


def test_a_process_reads_exactly_the_config_it_was_given():
    config = TamiyoConfig(processes=2, postgres_dsn=DSN, gnn_batch_window_ms=1.5, publish_events=False,
                          grant_admin=("admin", "ops"), heuristic_config="")
    spec, parsed = parse_config_line(config_line("tamiyo", config))
    assert spec.name == "tamiyo"
    assert parsed == config
    with pytest.raises(ConfigError, match="process setup"):
        parse_config_line(b"not json\n")
    with pytest.raises(ConfigError, match="gnn_workers"):  # validated as any config
        parse_config_line(config_line("tamiyo", TamiyoConfig(gnn_workers=0)))


def test_the_port_is_claimed_free_or_refused():
    port = claim_port("127.0.0.1", 0)
    assert port > 0
    with socket.create_server(("127.0.0.1", 0)) as taken:
        with pytest.raises(StartupError, match=r"^port: cannot bind 127.0.0.1:"):
            claim_port("127.0.0.1", taken.getsockname()[1])
