"""PostgreSQL for the local stack and the test fixtures: the installed Debian server binaries,
initialised on first use under `<state>/postgres/data`, listening on 127.0.0.1.

As root, initdb and the server run as an unprivileged id (both refuse root): root itself
inside a user namespace where it can, else `nobody` (see `privilege`). `fsync=False` is for test fixtures only: `esper up`
keeps the default durable settings.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import asyncpg

from esper.runtime.infra.blocking import run_sync
from esper.runtime.infra.errors import InfraConfigError, InfraError, MissingBinaryError
from esper.runtime.infra.launcher import LoopbackProcess
from esper.runtime.infra.paths import log_path, pid_path
from esper.runtime.infra.ports import LOOPBACK, ensure_port_free, tcp_accepts
from esper.runtime.infra.privilege import ensure_reachable, service_user
from esper.runtime.infra.process import ManagedProcess, ProcessSpec

NAME = "postgres"
DEFAULT_DATABASE = "esper"
# The superuser initdb creates; `-A trust` on loopback only, so no password.
SUPERUSER = "postgres"
# The database every cluster has; admin statements (CREATE/DROP DATABASE) connect here.
MAINTENANCE_DATABASE = "postgres"
# Where Debian installs server binaries when they are not on PATH.
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
INSTALL_HINT = "apt-get install -y postgresql-15"
# initdb takes about a second; the deadline leaves room for a loaded 2-core machine.
INITDB_TIMEOUT_S = 120.0
# Crash recovery after an unclean stop can take a while on a big WAL; start is ~0.1 s normally.
READY_TIMEOUT_S = 60.0
# A fast shutdown (SIGINT) checkpoints; give it time before SIGKILL.
STOP_GRACE_S = 30.0
# Linux limits a unix socket path to 107 bytes; postgres appends "/.s.PGSQL.NNNNN".
MAX_SOCKET_DIR_LEN = 107 - len("/.s.PGSQL.65535")
PROBE_TIMEOUT_S = 3.0
# Database names we create: plain identifiers, so they never need quoting games.
DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Test-only settings: durability off for speed (never used by `esper up`).
NON_DURABLE_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def find_binary(name: str) -> str:
    """Path of a PostgreSQL server binary, from PATH or Debian's versioned directory."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"{DEBIAN_BIN_GLOB}/{name}"), key=_version_key, reverse=True)
    if candidates:
        return candidates[0]
    raise MissingBinaryError(
        f"PostgreSQL server binary {name!r} not found on PATH or in {DEBIAN_BIN_GLOB}; "
        f"install it with: {INSTALL_HINT}"
    )


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def validate_database_name(name: str) -> str:
    if not DATABASE_NAME.match(name):
        raise InfraConfigError(
            f"database name {name!r} must match {DATABASE_NAME.pattern} (lower-case identifier)"
        )
    return name


class PostgresServer(LoopbackProcess):
    """One PostgreSQL cluster under `<state_dir>/postgres`, served on 127.0.0.1:`port`."""

    ready_what = "accepting connections"
    ready_timeout_s = READY_TIMEOUT_S

    def __init__(
        self,
        state_dir: Path,
        port: int,
        *,
        durable: bool = True,
        database: str = DEFAULT_DATABASE,
        die_with_parent: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.port = port
        self.durable = durable
        self.database = validate_database_name(database)
        self.root = self.state_dir / NAME
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "run"
        self.user = service_user()
        self.process = ManagedProcess(
            ProcessSpec(
                name=NAME,
                argv=[],  # filled in by start(): the binary is looked up only when needed
                log_path=log_path(self.state_dir, NAME),
                pid_path=pid_path(self.state_dir, NAME),
                die_with_parent=die_with_parent,
                user=self.user,
                # SIGINT is postgres's "fast" shutdown: abort sessions, checkpoint, exit.
                stop_signal=signal.SIGINT,
                stop_grace_s=STOP_GRACE_S,
            )
        )

    # -- addresses ---------------------------------------------------------------------------
    def dsn(self, database: str | None = None) -> str:
        return f"postgresql://{SUPERUSER}@{LOOPBACK}:{self.port}/{database or self.database}"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout_s: float = READY_TIMEOUT_S) -> str:
        """Initialise on first use, start, wait until it accepts queries, create the
        database; return its DSN. Already running: just ensure the database."""
        self.ensure_running(timeout_s)
        self.ensure_database(self.database)
        return self.dsn()

    def launch(self) -> None:
        """Initialise if needed and start the server process without waiting."""
        ensure_port_free(self.port, NAME)
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self.process.spec.argv = self._server_argv()
        self.process.start()

    def is_ready(self) -> bool:
        """A real round trip: connect over TCP and run `SELECT 1`."""
        if not tcp_accepts(self.port):
            return False
        return run_sync(lambda: _select_one(self.dsn(MAINTENANCE_DATABASE)), PROBE_TIMEOUT_S) == 1

    # -- databases ---------------------------------------------------------------------------
    def ensure_database(self, name: str) -> bool:
        """Create database `name` if missing; True when it was created."""
        validate_database_name(name)
        return run_sync(
            lambda: _create_database(self.dsn(MAINTENANCE_DATABASE), name), PROBE_TIMEOUT_S * 4
        )

    def drop_database(self, name: str) -> None:
        validate_database_name(name)
        run_sync(lambda: _drop_database(self.dsn(MAINTENANCE_DATABASE), name), PROBE_TIMEOUT_S * 4)

    # -- internals ---------------------------------------------------------------------------
    def _prepare_dirs(self) -> None:
        self.user.take_tree(self.root)
        for directory in (self.root, self.socket_dir):
            directory.mkdir(parents=True, exist_ok=True)
            self.user.chown(directory)
        os.chmod(self.socket_dir, 0o700)
        ensure_reachable(self.root, self.user)

    def _initdb(self) -> None:
        argv = [
            find_binary("initdb"),
            "-D", str(self.data_dir),
            "-U", SUPERUSER,
            "-A", "trust",
            "-E", "UTF8",
            "--no-locale",
        ]  # fmt: skip
        if not self.durable:
            argv.append("--no-sync")
        result = subprocess.run(
            self.user.wrap(argv),
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INITDB_TIMEOUT_S,
            env=_server_env(),
            **self.user.popen_kwargs(),  # type: ignore[arg-type]
        )
        if result.returncode != 0:
            raise InfraError(
                f"initdb failed for {self.data_dir} (exit code {result.returncode}):\n"
                f"{(result.stdout + result.stderr).strip()}"
            )

    def _server_argv(self) -> list[str]:
        socket_dir = str(self.socket_dir)
        if len(socket_dir) > MAX_SOCKET_DIR_LEN:
            socket_dir = ""  # path too long for a unix socket: TCP only
        settings = [f"listen_addresses={LOOPBACK}", f"unix_socket_directories={socket_dir}"]
        if not self.durable:
            settings.extend(NON_DURABLE_SETTINGS)
        argv = [find_binary("postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for setting in settings:
            argv += ["-c", setting]
        self.process.spec.env = _server_env()
        return argv


def _server_env() -> dict[str, str]:
    """The caller's environment minus libpq/server variables that would override flags."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"  # --no-locale cluster; avoids warnings about unset locales
    return env


async def _select_one(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT_S)
    try:
        return int(await conn.fetchval("SELECT 1"))
    finally:
        await conn.close()


async def _create_database(admin_dsn: str, name: str) -> bool:
    conn = await asyncpg.connect(admin_dsn, timeout=PROBE_TIMEOUT_S)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            return False  # created concurrently by another caller
        return True
    finally:
        await conn.close()


async def _drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=PROBE_TIMEOUT_S)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
