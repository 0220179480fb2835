"""The unprivileged user that runs PostgreSQL when we are root (initdb refuses root)."""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from esper.runtime.infra.errors import InfraConfigError

# Debian's unprivileged account; every Debian-based machine has it (INFRA.md's recipe).
UNPRIVILEGED_USER = "nobody"


@dataclass(frozen=True)
class ServiceUser:
    """Who a child process runs as. `drop` is False when we already are unprivileged."""

    name: str
    uid: int
    gid: int
    drop: bool

    def popen_kwargs(self) -> dict[str, object]:
        """Keyword arguments for `subprocess.Popen` that switch to this user."""
        if not self.drop:
            return {}
        # extra_groups=[] drops root's supplementary groups too.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        """Give `path` (not recursively) to this user when we are switching to it."""
        if self.drop:
            os.chown(path, self.uid, self.gid)


def service_user() -> ServiceUser:
    """`nobody` when running as root, else the current user (no switch)."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid, drop=False)
    try:
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        raise InfraConfigError(
            f"running as root, but user {UNPRIVILEGED_USER!r} (needed to run PostgreSQL, "
            "which refuses root) does not exist"
        ) from None
    return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid, drop=True)


def _searchable_by(st: os.stat_result, user: ServiceUser) -> bool:
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == user.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def ensure_reachable(path: Path, user: ServiceUser) -> None:
    """Raise `InfraConfigError` when `user` cannot traverse every ancestor of `path`."""
    if not user.drop:
        return
    for ancestor in reversed(path.resolve().parents):
        if not _searchable_by(ancestor.stat(), user):
            raise InfraConfigError(
                f"PostgreSQL runs as user {user.name!r} (it refuses root) and cannot reach "
                f"{path}: directory {ancestor} is not searchable by that user; choose a "
                "state dir under a world-searchable path (e.g. /tmp/esper or /var/tmp/esper)"
            )
