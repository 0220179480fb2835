"""`esper up`/`down`/`status` against real processes: seven healthy components, idempotent
`up`, remembered ports, state kept across `down`/`up`, no process left behind."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from esper.cli.main import main
from esper.runtime.infra import ReadinessError, proc
from esper.runtime.infra.objectstore import ObjectStore
from esper.runtime.stack import HEALTHY, STOPPED, down, status, up
from esper.runtime.stack.servers import health_check
from esper.runtime.stack.state import load_state

pytestmark = pytest.mark.integration

COMPONENTS = ["postgres", "broker", "objectstore", "urza", "tezzeret", "tamiyo", "nissa"]
# Seconds a CLI call may take before the test gives up on it (a stuck CLI, not a timing claim).
CLI_TIMEOUT_S = 240


@pytest.fixture
def state_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="esper-test-stack-"))
    os.chmod(path, 0o755)  # PostgreSQL runs as `nobody` under root and must reach it
    try:
        yield path
    finally:
        down(path)  # even when the test failed half way
        shutil.rmtree(path, ignore_errors=True)


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line or environment names `text` (our state dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob and proc.is_running(int(entry.name)):
            found.append(int(entry.name))
    return found


def _assert_nothing_left(state_dir: Path, pids: list[int]) -> None:
    for pid in pids:
        assert not proc.is_running(pid), f"pid {pid} survived down"
        assert proc.group_members(pid) == [], f"process group {pid} survived down"
    assert _processes_mentioning(str(state_dir)) == []


def _esper(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esper.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


async def test_up_down_up_keeps_state_and_leaves_nothing(state_dir: Path) -> None:
    first = up(state_dir)
    assert [s.name for s in first.statuses] == COMPONENTS
    assert all(s.health == HEALTHY for s in first.statuses), first.statuses
    assert sorted(first.started) == sorted(COMPONENTS)
    print(f"cold up: {first.elapsed_s:.2f} s")  # measured; see the report
    stack_ports = load_state(state_dir).ports  # type: ignore[union-attr]
    for name in ("urza", "tezzeret", "tamiyo", "nissa"):
        assert health_check(f"127.0.0.1:{stack_ports[name]}")

    # Up again while up: nothing restarts.
    again = up(state_dir)
    assert again.started == []
    assert [s.pid for s in again.statuses] == [s.pid for s in first.statuses]

    # Write state into the database and the object store.
    dsn = first.statuses[0].address
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE stack_test_marker (id text PRIMARY KEY)")
        await conn.execute("INSERT INTO stack_test_marker VALUES ('k-1')")
    finally:
        await conn.close()
    store = ObjectStore(state_dir, stack_ports["objectstore"])
    store.endpoint().client().put_object("esper-kernels", "k-1", io.BytesIO(b"w"), 1)

    pids = [s.pid for s in first.statuses if s.pid is not None]
    assert sorted(down(state_dir)) == sorted(COMPONENTS)
    _assert_nothing_left(state_dir, pids)
    assert all(s.health == STOPPED for s in status(state_dir))

    # Back up: same ports, same data.
    second = up(state_dir)
    assert all(s.health == HEALTHY for s in second.statuses)
    assert load_state(state_dir).ports == stack_ports  # type: ignore[union-attr]
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT id FROM stack_test_marker") == "k-1"
    finally:
        await conn.close()
    assert store.endpoint().client().get_object("esper-kernels", "k-1").read() == b"w"
    pids = [s.pid for s in second.statuses if s.pid is not None]
    down(state_dir)
    _assert_nothing_left(state_dir, pids)


def test_a_crashed_component_is_restarted_by_up(state_dir: Path) -> None:
    first = up(state_dir)
    tamiyo = next(s for s in first.statuses if s.name == "tamiyo")
    assert tamiyo.pid is not None
    os.killpg(tamiyo.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously
    while proc.is_running(tamiyo.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert next(s for s in status(state_dir) if s.name == "tamiyo").health == STOPPED
    second = up(state_dir)
    assert second.started == ["tamiyo"]
    assert all(s.health == HEALTHY for s in second.statuses)


def test_cli_up_status_down(state_dir: Path) -> None:
    result = _esper("up", "--state-dir", str(state_dir))
    assert result.returncode == 0, result.stderr
    for name in COMPONENTS:
        assert name in result.stdout
    assert "stack up in" in result.stdout
    result = _esper("status", "--state-dir", str(state_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("healthy") == len(COMPONENTS)
    result = _esper("status", "--state-dir", str(state_dir), "--address", "tamiyo")
    tamiyo = next(s for s in status(state_dir) if s.name == "tamiyo")
    assert result.returncode == 0 and result.stdout.strip() == tamiyo.address
    result = _esper("status", "--state-dir", str(state_dir), "--address", "nosuch")
    assert result.returncode == 2 and "--address" in result.stderr
    pids = [s.pid for s in status(state_dir) if s.pid is not None]
    result = _esper("down", "--state-dir", str(state_dir))
    assert result.returncode == 0, result.stderr
    _assert_nothing_left(state_dir, pids)
    result = _esper("status", "--state-dir", str(state_dir))
    assert result.returncode == 1
    assert result.stdout.count("stopped") == len(COMPONENTS)


def test_cli_foreground_stops_the_stack_on_sigterm(state_dir: Path) -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "esper.cli.main",
            "up",
            "--foreground",
            "--state-dir",
            str(state_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if "running in the foreground" in line:
                break
        else:
            pytest.fail(f"esper up --foreground ended early: {child.stderr.read()}")  # type: ignore[union-attr]
        pids = [s.pid for s in status(state_dir) if s.pid is not None]
        assert len(pids) == len(COMPONENTS)
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=CLI_TIMEOUT_S) == 0
        _assert_nothing_left(state_dir, pids)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_cli_port_in_use_fails_fast_and_starts_nothing(state_dir: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _esper("up", "--state-dir", str(state_dir), "--port", f"broker={port}")
    assert result.returncode == 2
    assert f"broker: port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert all(s.pid is None for s in status(state_dir))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "postgres=abc"], "postgres: port must be an integer, got 'abc'"),
        (["--port", "postgres=70000"], "postgres: port 70000 is out of range"),
        (["--port", "kafka=9092"], "unknown port name 'kafka'"),
        (["--port", "postgres"], "expected NAME=PORT"),
    ],
)
def test_cli_bad_ports_fail_fast(
    state_dir: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["up", "--state-dir", str(state_dir), *args]) == 2
    assert message in capsys.readouterr().err
    assert all(s.pid is None for s in status(state_dir))


def test_cli_unwritable_state_dir_fails_fast(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["up", "--state-dir", str(blocker / "state")]) == 2
    assert f"state dir {blocker}/state is not writable" in capsys.readouterr().err


def test_cli_down_without_a_stack_is_harmless(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["down", "--state-dir", str(tmp_path / "never-up")]) == 0
    assert "nothing running" in capsys.readouterr().out


def test_a_server_that_fails_to_start_is_reported_with_its_log(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every server reads ESPER_CONFIG; a config file with an unknown table makes them exit.
    bad_config = state_dir / "bad.toml"
    bad_config.write_text("[no_such_service]\nport = 1\n")
    monkeypatch.setenv("ESPER_CONFIG", str(bad_config))
    with pytest.raises(ReadinessError) as caught:
        up(state_dir)
    message = str(caught.value)
    assert "exited before it was SERVING" in message
    assert "no_such_service" in message  # the server's own error, quoted from its log
    # Nothing that this `up` started is left running.
    assert all(s.pid is None for s in status(state_dir))
    assert _processes_mentioning(str(state_dir)) == []


def test_cli_up_runs_tamiyo_replicas_behind_one_address_list(state_dir: Path) -> None:
    result = _esper("up", "--state-dir", str(state_dir), "--tamiyo-replicas", "2")
    assert result.returncode == 0, result.stderr
    assert "tamiyo-2" in result.stdout and "2 replicas" in result.stdout
    statuses = {s.name: s for s in status(state_dir)}
    assert statuses["tamiyo-2"].health == HEALTHY
    target = _esper("status", "--state-dir", str(state_dir), "--address", "tamiyo").stdout.strip()
    assert target == f"{statuses['tamiyo'].address},{statuses['tamiyo-2'].address}"
    # A run opened on the first replica, which then dies, resumes through the list on the other.
    asyncio.run(_open(statuses["tamiyo"].address, "run-stack", resumed=False))
    os.killpg(statuses["tamiyo"].pid, signal.SIGKILL)
    asyncio.run(_open(target, "run-stack", resumed=True))
    changing = _esper("up", "--state-dir", str(state_dir), "--tamiyo-replicas", "3")
    assert changing.returncode == 2 and "esper down" in changing.stderr


async def _open(address: str, run_id: str, resumed: bool) -> None:
    from esper.rpc.channels import ChannelSecurity
    from esper.rpc.clients import TamiyoClient
    from tests.integration.test_tamiyo_server import Client, open_message

    async with TamiyoClient(address, security=ChannelSecurity()) as tamiyo:
        client = Client(tamiyo.stub)
        await client.send(open=open_message(run_id))
        assert (await client.next("accept")).accept.resumed is resumed
        await client.close()
