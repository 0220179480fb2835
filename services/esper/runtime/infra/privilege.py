"""Who runs PostgreSQL when we are root (initdb and postgres refuse root).

Three ways, the first that applies:
- not root: the current user, no switch;
- root, where user namespaces are allowed: root itself, entered into a new user namespace
  as an unprivileged id (`unshare --user --map-user`). PostgreSQL sees a non-root owner of
  its data directory, while the kernel checks every file access as root, the directory's
  real owner: the state dir may sit anywhere root can reach — a 0700 home, a `mktemp -d` —
  and nobody's permissions need loosening;
- root without user namespaces (e.g. a container whose seccomp profile forbids them):
  `nobody`, given the data directory; every ancestor must then be searchable by it.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from esper.runtime.infra.errors import InfraConfigError

# Debian's unprivileged account; every Debian-based machine has it (also the id root takes
# inside the user namespace: a name getpwuid() finds, for PostgreSQL's messages).
UNPRIVILEGED_USER = "nobody"
UNSHARE = "unshare"
# A user-namespace probe is a fork and exec of `true`; it answers in milliseconds.
USERNS_PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ServiceUser:
    """Who a child process runs as. `drop`: switch to `uid`/`gid` (we are root and they are
    someone else). `namespace`: stay root, seen as `uid`/`gid` inside a user namespace."""

    name: str
    uid: int
    gid: int
    drop: bool
    namespace: bool = False

    def popen_kwargs(self) -> dict[str, object]:
        """Keyword arguments for `subprocess.Popen` that switch to this user."""
        if not self.drop:
            return {}
        # extra_groups=[] drops root's supplementary groups too.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """`argv` run as this user (entered into its user namespace when it has one). Wrap
        last: a parent-death signal armed outside would be cleared by the id change."""
        if not self.namespace:
            return list(argv)
        return [UNSHARE, "--user", f"--map-user={self.uid}", f"--map-group={self.gid}",
                "--", *argv]

    @property
    def host_uid(self) -> int:
        """The id that owns this user's files on the host."""
        return os.geteuid() if self.namespace else self.uid

    def chown(self, path: Path) -> None:
        """Give `path` (not recursively) to this user when we are switching to it."""
        if self.drop:
            os.chown(path, self.uid, self.gid)

    def take_tree(self, path: Path) -> None:
        """Give every file under `path` to this user's host owner when another owns it (a
        data directory made by an earlier way of running, e.g. `nobody` before namespaces)."""
        if not path.exists() or path.stat().st_uid == self.host_uid:
            return
        gid = os.getegid() if self.namespace else self.gid
        os.chown(path, self.host_uid, gid)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), self.host_uid, gid, follow_symlinks=False)


def service_user() -> ServiceUser:
    """The user PostgreSQL runs as (see the module's docstring)."""
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
    if user_namespaces_work(entry.pw_uid, entry.pw_gid):
        return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid, drop=False, namespace=True)
    return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid, drop=True)


@functools.cache
def user_namespaces_work(uid: int, gid: int) -> bool:
    """Whether this process may enter a new user namespace as `uid`/`gid` (kernels and
    container profiles can forbid it)."""
    if shutil.which(UNSHARE) is None:
        return False
    probe = ServiceUser("probe", uid, gid, drop=False, namespace=True).wrap(["true"])
    try:
        done = subprocess.run(probe, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=USERNS_PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _searchable_by(st: os.stat_result, uid: int, gid: int) -> bool:
    """Plain permission bits: also right for root inside a user namespace, which keeps its
    host ids but none of its capabilities over the host's files."""
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def ensure_reachable(path: Path, user: ServiceUser) -> None:
    """Raise `InfraConfigError` when `user` cannot traverse every ancestor of `path`."""
    if not (user.drop or user.namespace):
        return
    uid, gid = (user.host_uid, os.getegid()) if user.namespace else (user.uid, user.gid)
    for ancestor in reversed(path.resolve().parents):
        if not _searchable_by(ancestor.stat(), uid, gid):
            raise InfraConfigError(_unreachable_message(path, ancestor, user))


def _unreachable_message(path: Path, ancestor: Path, user: ServiceUser) -> str:
    if user.namespace:
        return (f"PostgreSQL runs as root inside a user namespace, without root's power over "
                f"other users' files, and cannot reach {path}: directory {ancestor} belongs "
                "to another user and is not searchable; choose a state dir root owns "
                "(--state-dir or ESPER_STATE_DIR)")
    return (f"PostgreSQL runs as user {user.name!r} (it refuses root, and this machine "
            f"forbids user namespaces) and cannot reach {path}: directory {ancestor} is not "
            "searchable by that user; choose a state dir under a world-searchable path "
            "(--state-dir /var/tmp/esper, or ESPER_STATE_DIR)")
