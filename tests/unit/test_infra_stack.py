"""Pure logic of the local stack: port resolution, stack.json, state dir checks, CLI pins,
the endpoint table."""

from __future__ import annotations

from pathlib import Path

import pytest

from esper.cli.stack import parse_port_pins
from esper.runtime.infra.errors import InfraConfigError
from esper.runtime.stack import ComponentStatus, format_table
from esper.runtime.stack.state import (
    StackState,
    load_state,
    port_names,
    prepare_state_dir,
    resolve_ports,
    save_state,
)


def test_port_names_cover_infra_servers_and_metrics() -> None:
    names = port_names()
    assert names[:3] == ("postgres", "broker", "objectstore")
    for server in ("urza", "tezzeret", "tamiyo", "nissa"):
        assert server in names and f"{server}-metrics" in names
    assert len(names) == len(set(names)) == 11


def test_free_ports_are_allocated_distinct() -> None:
    ports = resolve_ports({}, {})
    assert set(ports) == set(port_names())
    assert len(set(ports.values())) == len(ports)


def test_saved_ports_are_reused_and_requested_ones_win() -> None:
    saved = resolve_ports({}, {})
    again = resolve_ports(saved, {})
    assert again == saved
    pinned = resolve_ports(saved, {"postgres": "15432"})
    assert pinned["postgres"] == 15432
    assert {k: v for k, v in pinned.items() if k != "postgres"} == {
        k: v for k, v in saved.items() if k != "postgres"
    }


def test_unknown_port_name_is_rejected() -> None:
    with pytest.raises(InfraConfigError, match="unknown port name 'kafka'"):
        resolve_ports({}, {"kafka": 9092})


def test_bad_port_value_names_the_component() -> None:
    with pytest.raises(InfraConfigError, match="^broker: port"):
        resolve_ports({}, {"broker": "ninety"})
    with pytest.raises(InfraConfigError, match="out of range"):
        resolve_ports({}, {"urza": 70000})


def test_two_components_on_one_port_are_rejected() -> None:
    with pytest.raises(InfraConfigError, match="port 20000 is also assigned to postgres"):
        resolve_ports({}, {"postgres": 20000, "broker": 20000})


def test_stack_json_round_trips(tmp_path: Path) -> None:
    state = StackState(ports=resolve_ports({}, {}), database="esper", bucket="esper-kernels")
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state
    assert load_state(tmp_path / "elsewhere") is None


def test_corrupt_stack_json_is_named(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text("{not json")
    with pytest.raises(InfraConfigError, match="stack.json: not valid JSON"):
        load_state(tmp_path)
    (tmp_path / "stack.json").write_text('{"ports": {"postgres": "x"}}')
    with pytest.raises(InfraConfigError, match="ports.postgres: port must be an integer"):
        load_state(tmp_path)


def test_state_dir_is_created(tmp_path: Path) -> None:
    assert prepare_state_dir(tmp_path / "a" / "b") == (tmp_path / "a" / "b").resolve()


def test_unwritable_state_dir_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(InfraConfigError, match=f"state dir {blocker}/state is not writable"):
        prepare_state_dir(blocker / "state")


def test_port_pins() -> None:
    assert parse_port_pins(["postgres=5432", " urza = 50051 "]) == {
        "postgres": "5432",
        "urza": "50051",
    }
    for bad in ("postgres", "=5432", ""):
        with pytest.raises(InfraConfigError, match="expected NAME=PORT"):
            parse_port_pins([bad])


def test_table_lists_every_component() -> None:
    table = format_table(
        [
            ComponentStatus("postgres", "postgresql://postgres@127.0.0.1:5/esper", 42, "healthy"),
            ComponentStatus("urza", "127.0.0.1:7", None, "stopped"),
        ]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["component", "address", "pid", "health"]
    assert lines[2].split() == [
        "postgres",
        "postgresql://postgres@127.0.0.1:5/esper",
        "42",
        "healthy",
    ]
    assert lines[3].split() == ["urza", "127.0.0.1:7", "-", "stopped"]


def test_tamiyo_replicas_get_their_own_ports_and_one_address_list(tmp_path: Path) -> None:
    from esper.runtime.stack.components import build_stack
    from esper.runtime.stack.state import server_components

    assert server_components(3) == ("urza", "tezzeret", "tamiyo", "tamiyo-2", "tamiyo-3", "nissa")
    names = port_names(2)
    assert "tamiyo-2" in names and "tamiyo-2-metrics" in names and len(names) == 13
    state = StackState(resolve_ports({}, {}, replicas=2), tamiyo_replicas=2)
    assert state.tamiyo_target() == f"127.0.0.1:{state.ports['tamiyo']},127.0.0.1:{state.ports['tamiyo-2']}"
    save_state(tmp_path, state)
    again = load_state(tmp_path)
    assert again is not None and again.tamiyo_replicas == 2 and again.ports == state.ports
    stack = build_stack(tmp_path, again)
    replica = stack.servers["tamiyo-2"]
    assert replica.process.spec.argv[-2:] == ["serve", "tamiyo"]  # a replica runs Tamiyo
    assert replica.process.spec.env["ESPER_TAMIYO_ADDRESS"] == state.tamiyo_target()
    # Fewer replicas later: the extra replica's ports are dropped.
    assert "tamiyo-2" not in resolve_ports(state.ports, {}, replicas=1)


@pytest.mark.parametrize("value", [0, 17, "two", -1])
def test_a_bad_replica_count_is_refused(tmp_path: Path, value: object) -> None:
    from esper.runtime.stack.state import check_replicas

    with pytest.raises(InfraConfigError, match="--tamiyo-replicas: .* must be a whole number from 1 to 16"):
        check_replicas(value, "--tamiyo-replicas")
    (tmp_path / "stack.json").write_text(f'{{"tamiyo_replicas": "{value}"}}')
    with pytest.raises(InfraConfigError, match="tamiyo_replicas"):
        load_state(tmp_path)
