"""Child processes of the local stack: start with a log file and pid file, wait for
readiness, stop the whole process group.

Each process runs in its own session (so its process group id is its pid): `stop` signals the
leader for a graceful exit, then SIGKILLs whatever is left of the group after a grace period.
The pid file records pid and start time, so another process (`esper down`) can find and stop
it, and a pid file left by a process that died is recognised as stale.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from esper.runtime.infra import proc
from esper.runtime.infra.errors import InfraError, ReadinessError
from esper.runtime.infra.privilege import ServiceUser

# How often readiness probes and stop loops look again: fast enough that a ready server is
# noticed within a tenth of a second, slow enough not to busy-spin on a 2-core machine.
POLL_INTERVAL_S = 0.1
# Lines of a process's log quoted in a startup error: enough to show the real cause.
LOG_TAIL_LINES = 25
# Default seconds a process gets to exit after its stop signal before SIGKILL.
DEFAULT_STOP_GRACE_S = 10.0

Probe = Callable[[], bool]


@dataclass(frozen=True)
class PidRecord:
    """What a pid file holds: the pid and its start time (to detect pid reuse)."""

    pid: int
    start_ticks: int

    def is_running(self) -> bool:
        return proc.is_running(self.pid, self.start_ticks)


def read_pid_file(path: Path) -> PidRecord | None:
    """The record in `path`, or None when the file is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
        return PidRecord(pid=int(data["pid"]), start_ticks=int(data["start_ticks"]))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def write_pid_file(path: Path, record: PidRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"pid": record.pid, "start_ticks": record.start_ticks}))
    tmp.replace(path)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a text file ('' when it does not exist)."""
    try:
        with path.open("r", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except FileNotFoundError:
        return ""


@dataclass
class ProcessSpec:
    """How to run one child process."""

    name: str
    argv: Sequence[str]
    log_path: Path
    pid_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    user: ServiceUser | None = None
    # Signal sent to the leader alone for a graceful stop (postgres wants SIGINT).
    stop_signal: int = signal.SIGTERM
    stop_grace_s: float = DEFAULT_STOP_GRACE_S
    # Test fixtures: the kernel sends `stop_signal` to the process if its parent dies, so a
    # hard-killed pytest leaves nothing behind. Never for `esper up`, whose CLI exits.
    die_with_parent: bool = False


class ManagedProcess:
    """One child process, started by us or found again through its pid file."""

    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self._popen: subprocess.Popen[bytes] | None = None

    # -- discovery ---------------------------------------------------------------------------
    def record(self) -> PidRecord | None:
        return read_pid_file(self.spec.pid_path)

    @property
    def pid(self) -> int | None:
        record = self.record()
        return record.pid if record else None

    def is_running(self) -> bool:
        if self._popen is not None and self._popen.poll() is not None:
            return False
        record = self.record()
        return record is not None and record.is_running()

    def clear_stale(self) -> bool:
        """Remove a pid file whose process is gone; True if one was removed."""
        record = self.record()
        if record is not None and not record.is_running():
            self.spec.pid_path.unlink(missing_ok=True)
            return True
        return False

    # -- start -------------------------------------------------------------------------------
    def start(self) -> int:
        """Start the process (its output appended to the log file); return its pid."""
        if self.is_running():
            raise InfraError(f"{self.spec.name} is already running (pid {self.pid})")
        self.clear_stale()
        spec = self.spec
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with spec.log_path.open("ab") as log:
            log.write(f"--- starting {spec.name}: {' '.join(spec.argv)}\n".encode())
            log.flush()
            try:
                self._popen = subprocess.Popen(
                    self._argv(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(spec.env) if spec.env is not None else None,
                    cwd=spec.cwd,
                    start_new_session=True,
                    **(spec.user.popen_kwargs() if spec.user else {}),  # type: ignore[arg-type]
                )
            except OSError as exc:
                raise InfraError(f"cannot start {spec.name} ({spec.argv[0]}): {exc}") from exc
        pid = self._popen.pid
        ticks = proc.start_ticks(pid)
        write_pid_file(spec.pid_path, PidRecord(pid, ticks if ticks is not None else -1))
        return pid

    def _argv(self) -> list[str]:
        spec = self.spec
        argv = with_death_signal(spec.argv, spec.stop_signal) if spec.die_with_parent \
            else list(spec.argv)
        return spec.user.wrap(argv) if spec.user else argv

    # -- readiness ---------------------------------------------------------------------------
    def wait_ready(self, probe: Probe, timeout_s: float, what: str = "ready") -> None:
        """Poll `probe` until it returns True; raise `ReadinessError` with the log tail when
        the deadline passes or the process exits first."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.is_running():
                raise self._readiness_error(f"exited before it was {what}")
            if _probe_quietly(probe):
                return
            if time.monotonic() >= deadline:
                raise self._readiness_error(f"was not {what} within {timeout_s:g} s")
            time.sleep(POLL_INTERVAL_S)

    def _readiness_error(self, problem: str) -> ReadinessError:
        code = self._popen.poll() if self._popen is not None else None
        status = f"exit code {code}" if code is not None else f"pid {self.pid}"
        log_tail = tail(self.spec.log_path).rstrip() or "(log is empty)"
        return ReadinessError(
            f"{self.spec.name} {problem} ({status}); last lines of {self.spec.log_path}:\n"
            f"{log_tail}"
        )

    # -- stop --------------------------------------------------------------------------------
    def stop(self, grace_s: float | None = None) -> bool:
        """Stop the process and everything in its process group. True if it was running."""
        record = self.record()
        grace = self.spec.stop_grace_s if grace_s is None else grace_s
        was_running = record is not None and record.is_running()
        if record is not None:
            if was_running:
                proc.signal_quietly(record.pid, self.spec.stop_signal)
                self._wait_exit(record, grace)
            self._kill_group(record.pid)
        self._reap()
        self.spec.pid_path.unlink(missing_ok=True)
        return was_running

    def _wait_exit(self, record: PidRecord, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._reap(block=False)
            if not record.is_running():
                return True
            time.sleep(POLL_INTERVAL_S)
        return False

    def _kill_group(self, pgid: int) -> None:
        """SIGKILL every process left in the group and wait until none remains."""
        for _ in range(int(DEFAULT_STOP_GRACE_S / POLL_INTERVAL_S)):
            members = proc.group_members(pgid)
            if not members:
                return
            proc.signal_quietly(pgid, signal.SIGKILL, group=True)
            self._reap(block=False)
            time.sleep(POLL_INTERVAL_S)
        raise InfraError(f"{self.spec.name}: processes {members} survived SIGKILL")

    def _reap(self, block: bool = True) -> None:
        """Collect our own child's exit status so it does not linger as a zombie."""
        if self._popen is None:
            _reap_if_our_child(self.record())
            return
        if block:
            try:
                self._popen.wait(timeout=DEFAULT_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                return
        else:
            self._popen.poll()


def _reap_if_our_child(record: PidRecord | None) -> None:
    """Reap a process this interpreter started through another handle (e.g. `up` then
    `down` in one test process); for anyone else's process this does nothing."""
    if record is None or record.is_running():
        return
    try:
        os.waitpid(record.pid, os.WNOHANG)
    except ChildProcessError:
        pass


# util-linux's setpriv sets the parent-death signal (prctl PR_SET_PDEATHSIG) and execs the
# command: the same process, armed after Popen's user switch (which would clear it). No
# Python runs between fork and exec: a preexec_fn in a process with gRPC threads (pytest)
# occasionally aborted the child.
SETPRIV = "setpriv"
# A parent that exits before setpriv has armed the signal never sends it (the process was
# already handed to init). So the armed process first checks that its parent is still the
# one that started it ($1), and exits if not; from then on the signal covers it.
_PARENT_GUARD = 'if [ "$PPID" != "$1" ]; then exit 0; fi; shift; exec "$@"'


def with_death_signal(argv: Sequence[str], signum: int) -> list[str]:
    """`argv` wrapped so the process gets `signum` when its parent (this process) dies,
    also when it dies while the process is still starting."""
    if shutil.which(SETPRIV) is None:
        raise InfraError(f"{SETPRIV} not found (Debian package util-linux); it arms die_with_parent")
    return [SETPRIV, f"--pdeathsig={signal.Signals(signum).name.removeprefix('SIG')}", "--",
            "sh", "-c", _PARENT_GUARD, "esper-parent-guard", str(os.getpid()), *argv]


def _probe_quietly(probe: Probe) -> bool:
    """A probe that raises counts as 'not ready yet'."""
    try:
        return bool(probe())
    except Exception:  # noqa: BLE001 - any failure of a probe means not ready
        return False
