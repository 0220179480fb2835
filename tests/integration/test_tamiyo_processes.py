"""Tamiyo as several processes on one port (`processes`, esper.runtime.processes): the
kernel spreads the connections over the processes, each session is served by the process
its connection reached, runs are shared in PostgreSQL, and the decisions are those of one
process; a process that dies is restarted, SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import signal

import psutil
import pytest

from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import TamiyoClient
from esper.runtime.infra import free_port
from tests.fixtures.processes import children_running
from tests.fixtures.waiting import until
from tests.integration.test_tamiyo_replicas import (
    EPOCHS,
    MOVE_AFTER_EPOCH,
    PLATEAU_EPOCH,
    SimulatedRun,
    germinations,
    replica,
    tamiyo_process,
)
from tests.integration.test_tamiyo_server import Client, open_message, urza  # noqa: F401 (urza is a fixture)

pytestmark = pytest.mark.integration

PROCESS_MODULE = "esper.runtime.processes"
# Connections opened to see both processes serve: the kernel hashes each to one of the two,
# so all of them reaching the same one has a chance of 2 in 2^24.
CONNECTIONS = 24


def serving_processes(pid: int) -> list[psutil.Process]:
    return children_running(pid, PROCESS_MODULE)


def sessions_served(process: psutil.Process, port: int) -> int:
    """The process's established connections on the server's port."""
    return sum(1 for c in process.net_connections(kind="tcp")
               if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)


def client(port: int) -> TamiyoClient:
    """A connection of its own, as a training run in its own process has."""
    return TamiyoClient(f"127.0.0.1:{port}", security=ChannelSecurity(), own_connection=True)


async def test_two_processes_on_one_port_serve_sessions_with_the_decisions_of_one_process(
        fresh_database, urza):  # noqa: F811
    urza_address = urza[0].address
    reference = SimulatedRun("run-one-process")
    async with replica(fresh_database, urza_address) as (_, one):
        assert not await reference.train(one, range(EPOCHS))
    assert germinations(reference)[:1] == [PLATEAU_EPOCH]
    port = free_port()
    with tamiyo_process(port, fresh_database, urza_address, "--processes", "2", "--log-level", "WARNING") as server:
        processes = serving_processes(server.pid)
        assert len(processes) == 2
        clients = [client(port) for _ in range(CONNECTIONS)]
        opened = [Client(c.stub) for c in clients]
        try:
            for i, session in enumerate(opened):
                await session.send(open=open_message(f"run-spread-{i}"))
                await session.next("accept")
            served = [sessions_served(p, port) for p in processes]
            assert sum(served) == CONNECTIONS and min(served) >= 1, served  # both processes serve
        finally:
            for session in opened:
                await session.close()
            for c in clients:
                await c.close()
        # A run trained over two connections (each reaching either process) gets the
        # decisions of one process.
        moved = SimulatedRun("run-over-processes")
        async with client(port) as first:
            assert not await moved.train(first.stub, range(MOVE_AFTER_EPOCH + 1))
        async with client(port) as second:
            assert await moved.train(second.stub, range(MOVE_AFTER_EPOCH + 1, EPOCHS))
    assert moved.decisions == reference.decisions


async def test_a_process_that_dies_is_restarted_and_sigterm_stops_them_all(fresh_database):
    port = free_port()
    with tamiyo_process(port, fresh_database, "", "--processes", "2", "--log-level", "WARNING") as server:
        first, second = serving_processes(server.pid)
        first.kill()
        assert await until(lambda: len(serving_processes(server.pid)) == 2 and first.pid not in
                           {p.pid for p in serving_processes(server.pid)}, timeout_s=120)
        run = SimulatedRun("run-after-restart")
        async with client(port) as tamiyo:  # served whichever process the connection reaches
            assert not await run.train(tamiyo.stub, range(1))
        children = serving_processes(server.pid)
        server.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait, 60) == 0
        _, alive = psutil.wait_procs(children, timeout=30)
        assert alive == []
        assert second.pid in {p.pid for p in children}  # the other process served on throughout
