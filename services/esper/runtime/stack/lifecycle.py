"""`up`, `down` and `status` of the local stack.

`up` starts PostgreSQL, the broker and the object store, waits for each, ensures the database
and the bucket, then starts the four servers and waits until each answers SERVING on its
gRPC health check. Components already running are kept (so `up` is idempotent); if `up`
fails, what it started in that call is stopped again. `down` stops the servers first, then
the infrastructure, and leaves no process behind. State (the database cluster, the object
store's folders, the ports) stays in the state dir across `down`/`up`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from esper.runtime.infra.errors import InfraConfigError
from esper.runtime.infra.paths import pid_path
from esper.runtime.infra.process import read_pid_file
from esper.runtime.stack.components import Component, Stack, build_stack
from esper.runtime.stack.state import (
    INFRA_COMPONENTS,
    StackState,
    check_replicas,
    load_state,
    locked,
    port_names,
    prepare_state_dir,
    resolve_ports,
    save_state,
)
from esper.runtime.stack.tls import ensure_pki

HEALTHY, UNHEALTHY, STOPPED = "healthy", "unhealthy", "stopped"


@dataclass(frozen=True)
class ComponentStatus:
    """One row of `esper status`."""

    name: str
    address: str
    pid: int | None
    health: str


@dataclass(frozen=True)
class UpResult:
    statuses: list[ComponentStatus]
    started: list[str]  # components this call started (the rest were already running)
    elapsed_s: float
    infra_s: float = 0.0  # until PostgreSQL, the broker and the object store were ready


def up(state_dir: Path, ports: Mapping[str, object] | None = None, tls: bool | None = None,
       tamiyo_replicas: int | None = None) -> UpResult:
    """Bring the whole stack up under `state_dir`; see the module docstring. `tls` turns
    mutual TLS and auth on or off, `tamiyo_replicas` sets how many Tamiyo processes share
    its runs (None: as the last `up` left them)."""
    began = time.monotonic()
    state_dir = prepare_state_dir(state_dir)
    with locked(state_dir):
        saved = load_state(state_dir)
        state = StackState() if saved is None else saved
        requested = dict(ports or {})
        _refuse_port_changes_while_running(state_dir, state, requested)
        if tls is not None and tls != state.tls:
            _refuse_change_while_running(state_dir, state, f"the stack is running with TLS {'on' if state.tls else 'off'}",
                                         f"`esper up {'--tls' if tls else '--no-tls'}`")
            state.tls = tls
        if tamiyo_replicas is not None and tamiyo_replicas != state.tamiyo_replicas:
            replicas = check_replicas(tamiyo_replicas, "--tamiyo-replicas")
            _refuse_change_while_running(state_dir, state, f"Tamiyo runs as {state.tamiyo_replicas} replica(s)",
                                         f"`esper up --tamiyo-replicas {replicas}`")
            state.tamiyo_replicas = replicas
        if state.tls:
            ensure_pki(state_dir)
        state.ports = resolve_ports(state.ports, requested, state.tamiyo_replicas)
        save_state(state_dir, state)  # before starting, so `down` finds everything
        stack = build_stack(state_dir, state)
        started: list[str] = []
        try:
            _start_group(stack, INFRA_COMPONENTS, started)
            stack.postgres.ensure_database(state.database)
            stack.objectstore.ensure_bucket(state.bucket)
            infra_s = time.monotonic() - began
            _start_group(stack, state.servers, started)
        except BaseException:
            for name in reversed(started):
                stack.components[name].stop()
            raise
        return UpResult(_statuses(stack), started, time.monotonic() - began, infra_s)


def down(state_dir: Path) -> list[str]:
    """Stop every component (servers first); return the names of those that were running."""
    state_dir = Path(state_dir).expanduser().resolve()
    if not state_dir.is_dir():
        return []
    with locked(state_dir):
        stack = _stack_for_inspection(state_dir)
        # The servers drain in parallel (each takes a second or two), then the
        # infrastructure they used stops, in reverse start order.
        servers = stack.state.servers
        with ThreadPoolExecutor(max_workers=len(servers)) as pool:
            servers_stopped = list(pool.map(lambda n: stack.components[n].stop(), servers))
        stopped = [name for name, was in zip(servers, servers_stopped) if was]
        for name in reversed(INFRA_COMPONENTS):
            if stack.components[name].stop():
                stopped.append(name)
        return stopped


def status(state_dir: Path) -> list[ComponentStatus]:
    """The health of every component; an empty list when there is no stack here."""
    state_dir = Path(state_dir).expanduser().resolve()
    if load_state(state_dir) is None:
        return []
    return _statuses(_stack_for_inspection(state_dir))


def exited(state_dir: Path) -> list[str]:
    """Components with no live process (a cheap check: pid files and /proc, no probes)."""
    state_dir = Path(state_dir).expanduser().resolve()
    stack = _stack_for_inspection(state_dir)
    return [name for name, c in stack.components.items() if not c.process.is_running()]


def _start_group(stack: Stack, names: tuple[str, ...], started: list[str]) -> None:
    """Launch every stopped component of `names` at once, then wait for each."""
    for name in names:
        component = stack.components[name]
        if not component.process.is_running():
            component.launch()
            started.append(name)
    for name in names:
        stack.components[name].wait_ready()


def _refuse_port_changes_while_running(
    state_dir: Path, state: StackState, requested: Mapping[str, object]
) -> None:
    for name in (*INFRA_COMPONENTS, *state.servers):
        record = read_pid_file(pid_path(state_dir, name))
        if record is None or not record.is_running():
            continue
        if name not in state.ports:
            raise InfraConfigError(
                f"{name} is running (pid {record.pid}) but {state_dir}/stack.json does not "
                "record its port; run `esper down` first"
            )
        wanted = requested.get(name)
        if wanted is not None and str(wanted).strip() != str(state.ports[name]):
            raise InfraConfigError(
                f"{name} is running on port {state.ports[name]}; run `esper down` before "
                f"moving it to port {wanted}"
            )


def _refuse_change_while_running(state_dir: Path, state: StackState, what: str, command: str) -> None:
    """A setting every server starts with changes only while none runs."""
    for name in state.servers:
        record = read_pid_file(pid_path(state_dir, name))
        if record is not None and record.is_running():
            raise InfraConfigError(f"{what}; run `esper down` before {command}")


def _stack_for_inspection(state_dir: Path) -> Stack:
    """The stack as recorded; components without a recorded port get a placeholder (their
    pid files still find them)."""
    state = load_state(state_dir) or StackState()
    ports = {name: state.ports.get(name, 0) for name in port_names(state.tamiyo_replicas)}
    return build_stack(state_dir, StackState(ports, state.database, state.bucket, state.tls, state.tamiyo_replicas))


def _statuses(stack: Stack) -> list[ComponentStatus]:
    return [_status_of(stack, name, c) for name, c in stack.components.items()]


def _status_of(stack: Stack, name: str, component: Component) -> ComponentStatus:
    pid = component.process.pid if component.process.is_running() else None
    if pid is None:
        health = STOPPED
    else:
        try:
            health = HEALTHY if component.is_ready() else UNHEALTHY
        except Exception:  # noqa: BLE001 - any failure of a probe means unhealthy
            health = UNHEALTHY
    return ComponentStatus(name, stack.address(name), pid, health)
