"""Reading process facts from /proc: liveness, start time, process-group members.

A pid alone can be reused by the kernel after its process exits, so a pid file also records
the process's start time (field 22 of /proc/PID/stat, in clock ticks since boot); a pid whose
start time differs is someone else's process and the pid file is stale.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
# Zombie (Z) and dead (X) processes have exited; only their parent has yet to reap them.
_EXITED_STATES = frozenset({"Z", "X"})


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 = field 3, state)."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces or ')'.
    return raw[raw.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it does not exist."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_running(pid: int, expected_start: int | None = None) -> bool:
    """True when `pid` exists, has not exited, and (if given) started at `expected_start`."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in _EXITED_STATES:
        return False
    return expected_start is None or int(fields[19]) == expected_start


def group_members(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes whose process group is `pgid`."""
    members = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] not in _EXITED_STATES and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def signal_quietly(pid: int, signum: int, *, group: bool = False) -> None:
    """Send `signum` to a pid (or its process group); a vanished target is not an error."""
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
