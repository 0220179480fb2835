"""The process helper with real tiny child processes (sh, sleep): pid files, readiness,
stopping whole process groups, stale pid detection."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from esper.runtime.infra import proc
from esper.runtime.infra.errors import InfraError, PortInUseError, ReadinessError
from esper.runtime.infra.ports import ensure_port_free, free_port, port_is_free, tcp_accepts
from esper.runtime.infra.process import (
    ManagedProcess,
    PidRecord,
    ProcessSpec,
    read_pid_file,
    tail,
    with_death_signal,
    write_pid_file,
)


def _spec(tmp_path: Path, script: str, **kwargs: object) -> ProcessSpec:
    return ProcessSpec(
        name="child",
        argv=["sh", "-c", script],
        log_path=tmp_path / "logs" / "child.log",
        pid_path=tmp_path / "run" / "child.pid",
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def managed(tmp_path: Path):
    started: list[ManagedProcess] = []

    def make(script: str, **kwargs: object) -> ManagedProcess:
        process = ManagedProcess(_spec(tmp_path, script, **kwargs))
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop(grace_s=0.5)


def test_start_records_pid_and_stop_removes_it(managed) -> None:
    process = managed("exec sleep 30")
    pid = process.start()
    record = read_pid_file(process.spec.pid_path)
    assert record is not None and record.pid == pid
    assert record.start_ticks == proc.start_ticks(pid)
    assert process.is_running()
    assert process.stop() is True
    assert not process.spec.pid_path.exists()
    assert not proc.is_running(pid)
    assert process.stop() is False  # stopping a stopped process is harmless


def test_output_goes_to_the_log_file(managed) -> None:
    process = managed("echo hello-from-child; echo oops >&2; exec sleep 30")
    process.start()
    process.wait_ready(lambda: "oops" in tail(process.spec.log_path), timeout_s=10)
    text = process.spec.log_path.read_text()
    assert "hello-from-child" in text and "oops" in text


def test_start_refuses_a_second_copy(managed) -> None:
    process = managed("exec sleep 30")
    process.start()
    with pytest.raises(InfraError, match="already running"):
        managed("exec sleep 30").start()


def test_stop_kills_the_whole_process_group(managed) -> None:
    # The shell starts a grandchild that would outlive its parent.
    process = managed("sleep 300 & echo $! > grandchild.pid; wait", cwd=None)
    process.spec.cwd = process.spec.log_path.parent.parent
    pid = process.start()
    grandchild_file = process.spec.cwd / "grandchild.pid"
    process.wait_ready(lambda: grandchild_file.exists() and grandchild_file.read_text(), 10)
    grandchild = int(grandchild_file.read_text())
    assert proc.is_running(grandchild)
    assert set(proc.group_members(pid)) >= {pid, grandchild}
    process.stop(grace_s=2)
    assert not proc.is_running(grandchild)
    assert proc.group_members(pid) == []


def test_a_process_ignoring_sigterm_is_killed_after_the_grace(managed) -> None:
    process = managed("trap '' TERM; echo armed; while :; do sleep 0.1; done")
    pid = process.start()
    process.wait_ready(lambda: "armed" in tail(process.spec.log_path), 10)
    process.stop(grace_s=0.3)
    assert not proc.is_running(pid)
    assert proc.group_members(pid) == []


def test_stop_signal_is_configurable(managed) -> None:
    process = managed(
        "trap 'echo got-int; exit 0' INT; echo armed; while :; do sleep 0.1; done",
        stop_signal=signal.SIGINT,
    )
    process.start()
    process.wait_ready(lambda: "armed" in tail(process.spec.log_path), 10)
    process.stop(grace_s=10)
    assert "got-int" in process.spec.log_path.read_text()


def test_a_process_found_through_its_pid_file_can_be_stopped(managed, tmp_path: Path) -> None:
    owner = managed("exec sleep 30")
    pid = owner.start()
    stranger = ManagedProcess(_spec(tmp_path, "unused"))  # as `esper down` would see it
    assert stranger.is_running() and stranger.pid == pid
    assert stranger.stop(grace_s=2) is True
    owner._reap()
    assert not proc.is_running(pid)


def test_readiness_timeout_quotes_the_log(managed) -> None:
    process = managed("echo line-one; echo line-two; exec sleep 30")
    process.start()
    with pytest.raises(ReadinessError) as caught:
        process.wait_ready(lambda: False, timeout_s=0.5, what="listening")
    message = str(caught.value)
    assert "was not listening within 0.5 s" in message
    assert "line-two" in message and str(process.spec.log_path) in message


def test_readiness_fails_fast_when_the_process_exits(managed) -> None:
    process = managed("echo fatal: bad config; exit 3")
    process.start()
    with pytest.raises(ReadinessError) as caught:
        process.wait_ready(lambda: False, timeout_s=30)
    assert "exited before it was ready" in str(caught.value)
    assert "exit code 3" in str(caught.value)
    assert "fatal: bad config" in str(caught.value)


def test_a_probe_that_raises_counts_as_not_ready(managed) -> None:
    process = managed("exec sleep 30")
    process.start()
    calls = []

    def probe() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError
        return True

    process.wait_ready(probe, timeout_s=10)
    assert len(calls) == 3


def test_pid_file_of_a_dead_process_is_stale(managed, tmp_path: Path) -> None:
    process = managed("exit 0")
    pid = process.start()
    process._reap()
    assert not process.is_running()
    record = read_pid_file(process.spec.pid_path)
    assert record is not None and record.pid == pid and not record.is_running()
    assert process.clear_stale() is True
    assert not process.spec.pid_path.exists()


def test_pid_file_with_a_reused_pid_is_stale(tmp_path: Path) -> None:
    # Our own pid is alive, but with another start time it names a different process.
    path = tmp_path / "x.pid"
    write_pid_file(path, PidRecord(os.getpid(), (proc.start_ticks(os.getpid()) or 0) + 1))
    record = read_pid_file(path)
    assert record is not None and not record.is_running()
    assert PidRecord(os.getpid(), proc.start_ticks(os.getpid()) or 0).is_running()


def test_unreadable_pid_file_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "bad.pid"
    path.write_text("not json")
    assert read_pid_file(path) is None
    assert read_pid_file(tmp_path / "missing.pid") is None


def test_missing_executable_is_a_clear_error(tmp_path: Path) -> None:
    spec = ProcessSpec(
        name="ghost",
        argv=[str(tmp_path / "no-such-binary")],
        log_path=tmp_path / "ghost.log",
        pid_path=tmp_path / "ghost.pid",
    )
    with pytest.raises(InfraError, match="cannot start ghost"):
        ManagedProcess(spec).start()


def test_die_with_parent_kills_the_child_when_its_parent_exits(tmp_path: Path) -> None:
    # A helper Python process starts a managed `sleep` with die_with_parent and exits hard.
    pid_file = tmp_path / "run" / "orphan.pid"
    code = (
        "import os, sys; from pathlib import Path\n"
        "from esper.runtime.infra.process import ManagedProcess, ProcessSpec\n"
        f"p = ManagedProcess(ProcessSpec('orphan', ['sleep', '300'], Path({str(tmp_path)!r})"
        f" / 'orphan.log', Path({str(pid_file)!r}), die_with_parent=True))\n"
        "p.start(); os._exit(0)\n"
    )
    helper = ManagedProcess(
        ProcessSpec("helper", [sys.executable, "-c", code], tmp_path / "h.log", tmp_path / "h.pid")
    )
    helper.start()
    helper._popen.wait(timeout=60)  # type: ignore[union-attr]
    record = read_pid_file(pid_file)
    assert record is not None, tail(tmp_path / "h.log")
    orphan = ManagedProcess(ProcessSpec("orphan", ["sleep"], tmp_path / "o.log", pid_file))
    try:
        # The kernel delivers the death signal as the helper exits; allow it a moment to act.
        deadline = time.monotonic() + 10
        while orphan.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not orphan.is_running(), "child outlived its parent despite die_with_parent"
    finally:
        orphan.stop(grace_s=0.5)


def test_the_death_signal_wrapper_runs_the_command_only_under_the_parent_that_started_it() -> None:
    """The race the parent guard closes: a parent that exits before setpriv armed the
    signal would leave the process running for good. Seen from the wrapped process, that
    parent is no longer its parent; simulated here by naming another pid as the starter."""
    import subprocess

    argv = with_death_signal([sys.executable, "-c", "raise SystemExit(7)"], signal.SIGTERM)
    assert subprocess.run(argv, timeout=30).returncode == 7  # started by us: it runs
    pid_at = argv.index(str(os.getpid()))
    orphaned = [*argv[:pid_at], "1", *argv[pid_at + 1:]]
    assert subprocess.run(orphaned, timeout=30).returncode == 0  # not its starter: it never runs


def test_port_helpers() -> None:
    port = free_port()
    assert port_is_free(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not port_is_free(port)
        assert tcp_accepts(port)
        with pytest.raises(PortInUseError, match=f"broker: port {port}"):
            ensure_port_free(port, "broker")
    assert not tcp_accepts(port)
