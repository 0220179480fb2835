"""Where sessions find their runs: this process's RunRegistry, in front of PostgreSQL when
`postgres_dsn` is set, so any number of Tamiyo replicas share every run.

What a resumed session needs to decide as one process would have lives in the `tamiyo`
schema: the policy's history (validation losses per epoch), the session's position (last
step, sequence, epoch end), the decisions issued with their acks, the run's owner. The
graph, budget, capabilities and seed states are not stored: the client sends them again
with every open, and the server adopts them (runs.RunState.reconcile) — exactly what one
process does.

Every open bumps the run's `generation`; a replica writes a run only while it holds the
newest generation, so a session superseded on another replica changes nothing and ends
ABORTED at its next write. A decision is recorded before it is sent, so an ack reaching any
replica finds it. Snapshots are written one row update each, with synchronous_commit off:
a Tamiyo killed at any moment loses nothing committed (the commit is in PostgreSQL's
memory); only a crash of PostgreSQL itself may lose its last fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from esper.leyline.v1.control_pb2 import AckStatus, AdaptationDecision, DecisionAck
from esper.leyline.v1.tamiyo_pb2 import SessionOpen
from esper.policy import RunHistory
from esper.runtime import postgres
from esper.runtime.errors import Aborted, Unavailable
from esper.runtime.postgres import CONNECTION_ERRORS, MigrationLedger
from esper.tamiyo.runs import MAX_REMEMBERED_DECISIONS, RunRegistry, RunState

SCHEMA = "tamiyo"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Fixed advisory-lock key ("TAMI" in ASCII, sub-key 1: migrations).
MIGRATION_LOCK_KEY = 0x54414D49_0001
MIGRATION_LEDGER = MigrationLedger(table=f"{SCHEMA}.schema_migrations", lock_key=MIGRATION_LOCK_KEY,
                                   schema=SCHEMA)
# Every snapshot is one short update; a few connections keep up with hundreds of sessions
# on 2 cores (the event loop, not PostgreSQL, is the bottleneck).
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 8
# A write slower than this is a stuck database: end the session (the client reconnects)
# rather than hold the run.
COMMAND_TIMEOUT_S = 10.0
# Old decisions of a run are pruned (beyond MAX_REMEMBERED_DECISIONS) every this many.
PRUNE_EVERY = 64

_CLAIM = """
INSERT INTO tamiyo.runs AS r (run_id, owner, generation, session_id) VALUES ($1, $2, 1, $3)
ON CONFLICT (run_id) DO UPDATE
    SET generation = r.generation + 1, session_id = EXCLUDED.session_id, updated_at = now()
    WHERE r.owner = EXCLUDED.owner
RETURNING generation, last_step, last_sequence, last_was_epoch_end, val_losses, last_epoch,
          start_loss, first_epoch_pace, decisions_sent
"""
_DECISIONS = """
SELECT decision, ack_status FROM (
    SELECT seq, decision, ack_status FROM tamiyo.decisions WHERE run_id = $1 ORDER BY seq DESC LIMIT $2
) recent ORDER BY seq
"""
# Least recently used first: the owner's runs beyond its limit, then anyone's beyond max_runs.
_FORGET_OWNERS = """
DELETE FROM tamiyo.runs WHERE run_id IN (
    SELECT run_id FROM tamiyo.runs WHERE owner = $1 AND run_id <> $2 ORDER BY updated_at DESC OFFSET $3)
"""
_FORGET_ANY = """
DELETE FROM tamiyo.runs WHERE run_id IN (
    SELECT run_id FROM tamiyo.runs WHERE run_id <> $1 ORDER BY updated_at DESC OFFSET $2)
"""
_POSITION = """
UPDATE tamiyo.runs SET last_step = $3, last_sequence = $4, last_was_epoch_end = $5, val_losses = $6,
                       last_epoch = $7, start_loss = $8, decisions_sent = $9, first_epoch_pace = $10,
                       updated_at = now()
WHERE run_id = $1 AND generation = $2
"""
_POSITION_AND_DECISION = f"""
WITH run AS ({_POSITION} RETURNING run_id)
INSERT INTO tamiyo.decisions (run_id, seq, decision_id, decision) SELECT run_id, $11, $12, $13 FROM run
RETURNING seq
"""
_PRUNE = "DELETE FROM tamiyo.decisions WHERE run_id = $1 AND seq <= $2"
_ACK = """
UPDATE tamiyo.decisions SET ack_status = $3 WHERE run_id = $1 AND decision_id = $2 AND ack_status IS NULL
"""


class OwnedElsewhere(Exception):
    """The run id belongs to another identity."""


async def _as_left(conn: asyncpg.Connection) -> None:
    """How a connection goes back to the pool: as it was left. asyncpg's default reset is
    one more round trip after every statement (advisory unlock, CLOSE ALL, UNLISTEN, RESET
    ALL), doubling what each snapshot and ack cost both processes; the store leaves none of
    that behind (no SET, cursor or LISTEN; the migrations release their advisory lock
    themselves), and asyncpg still rolls back a transaction left open."""


@dataclass(frozen=True)
class ClaimedRun:
    """A run's stored state as of the open that claimed it."""

    generation: int
    row: asyncpg.Record
    decisions: list[tuple[bytes, int | None]]

    def apply(self, run: RunState) -> None:
        row = self.row
        run.generation = self.generation
        run.last_step, run.last_sequence = row["last_step"], row["last_sequence"]
        run.last_was_epoch_end = row["last_was_epoch_end"]
        run.history = RunHistory(list(row["val_losses"]), row["last_epoch"], row["start_loss"],
                                 row["first_epoch_pace"])
        run.decisions_sent = row["decisions_sent"]
        for data, status in self.decisions:
            decision = AdaptationDecision.FromString(data)
            run.issued[decision.decision_id] = decision
            if status is not None:
                run.acked[decision.decision_id] = status


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """A lost database is an outage of the session (UNAVAILABLE: the client reconnects)."""
    try:
        yield
    except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
        raise Unavailable(f"tamiyo: the run store is unavailable: {type(exc).__name__}: {exc}") from exc


class RunStore:
    """Tamiyo's tables; see the module docstring."""

    def __init__(self, pool: asyncpg.Pool, max_runs: int, max_runs_per_owner: int) -> None:
        self.pool, self.max_runs, self.max_runs_per_owner = pool, max_runs, max_runs_per_owner

    @classmethod
    async def connect(cls, dsn: str, connect_timeout_s: float, max_runs: int,
                      max_runs_per_owner: int) -> RunStore:
        """A pool on `dsn` with Tamiyo's migrations applied (raises asyncpg/OS errors)."""
        pool = await asyncio.wait_for(asyncpg.create_pool(
            dsn, min_size=POOL_MIN_SIZE, max_size=POOL_MAX_SIZE, timeout=connect_timeout_s,
            command_timeout=COMMAND_TIMEOUT_S, server_settings={"synchronous_commit": "off"}, reset=_as_left,
        ), connect_timeout_s * 2)
        try:
            async with pool.acquire() as conn:
                await postgres.apply_migrations(conn, postgres.load_migrations(MIGRATIONS_DIR), MIGRATION_LEDGER)
        except BaseException:
            pool.terminate()
            raise
        return cls(pool, max_runs, max_runs_per_owner)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), COMMAND_TIMEOUT_S)
        except (TimeoutError, *CONNECTION_ERRORS):
            self.pool.terminate()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        with _unavailable():
            async with self.pool.acquire(timeout=COMMAND_TIMEOUT_S) as conn, conn.transaction():
                yield conn

    async def claim(self, run_id: str, owner: str, session_id: str) -> ClaimedRun:
        """Open (or resume) `run_id` for `owner`: its stored state, now at a new generation.
        Raises OwnedElsewhere, before anything of the owner's changes."""
        async with self._transaction() as conn:
            row = await conn.fetchrow(_CLAIM, run_id, owner, session_id)
            if row is None:
                raise OwnedElsewhere(run_id)
            if row["generation"] == 1:  # a new run: make room, as RunRegistry does in memory
                await conn.execute(_FORGET_OWNERS, owner, run_id, self.max_runs_per_owner - 1)
                await conn.execute(_FORGET_ANY, run_id, self.max_runs - 1)
                decisions = []
            else:
                decisions = [(r["decision"], r["ack_status"])
                             for r in await conn.fetch(_DECISIONS, run_id, MAX_REMEMBERED_DECISIONS)]
        return ClaimedRun(row["generation"], row, decisions)

    async def save(self, run: RunState, decision: AdaptationDecision | None) -> None:
        """Record the run's position and history, and `decision` if one was issued; raises
        Aborted when a newer open (on any replica) superseded this session."""
        position = (run.run_id, run.generation, run.last_step, run.last_sequence, run.last_was_epoch_end,
                    run.history.val_losses, run.history.last_epoch, run.history.start_loss,
                    run.decisions_sent, run.history.first_epoch_pace)
        with _unavailable():
            if decision is None:
                written = await self.pool.execute(_POSITION, *position, timeout=COMMAND_TIMEOUT_S) != "UPDATE 0"
            else:
                written = await self.pool.fetchval(
                    _POSITION_AND_DECISION, *position, run.decisions_sent, decision.decision_id,
                    decision.SerializeToString(), timeout=COMMAND_TIMEOUT_S) is not None
                if written and run.decisions_sent % PRUNE_EVERY == 0:
                    await self.pool.execute(_PRUNE, run.run_id, run.decisions_sent - MAX_REMEMBERED_DECISIONS)
        if not written:
            raise Aborted(f"session: run {run.run_id!r} was resumed by a newer session (or forgotten); "
                          "this one ends")

    async def ack(self, run: RunState, ack: DecisionAck) -> None:
        """Record the client's ack of a stored decision (ids only acked in an open are
        not stored: the client sends them again with every open)."""
        with _unavailable():
            await self.pool.execute(_ACK, run.run_id, ack.decision_id, int(ack.status), timeout=COMMAND_TIMEOUT_S)


class RunBook:
    """The runs of this process (RunRegistry: the live RunStates, least recently used
    forgotten first), backed by a RunStore shared with other replicas when there is one."""

    def __init__(self, registry: RunRegistry, store: RunStore | None = None) -> None:
        self.registry, self.store = registry, store

    async def open(self, open_: SessionOpen, policy: str, identity: str, session_id: str,
                   max_step_advance: int) -> tuple[RunState, bool]:
        """The run `open_` names, adopted to the client's view and bound to this session;
        whether it was resumed. PermissionDenied for another identity's run."""
        cached = self.registry.get(open_.run_id)
        if self.store is None and cached is not None:
            run, resumed = cached, True
            run.check_owner(identity)  # PERMISSION_DENIED, before anything of the owner's changes
        else:
            run = RunState(open_.run_id, open_.graph, open_.capabilities, open_.budget, policy,
                           owner=identity, max_step_advance=max_step_advance)
            resumed = False
            if self.store is not None:
                resumed = await self._claim(run, identity, session_id)
        if cached is not None:
            cached.superseded.set()  # an older stream of this run in this process ends now
            run.superseded = asyncio.Event()
        run.reconcile(open_, policy)
        run.session_id = session_id
        self.registry.put(run)
        return run, resumed

    async def _claim(self, run: RunState, identity: str, session_id: str) -> bool:
        assert self.store is not None
        try:
            claimed = await self.store.claim(run.run_id, identity, session_id)
        except OwnedElsewhere:
            RunState.denied(run.run_id, identity)
        claimed.apply(run)
        return claimed.generation > 1

    async def save(self, run: RunState, decision: AdaptationDecision | None = None) -> None:
        if self.store is not None:
            await self.store.save(run, decision)

    async def ack(self, run: RunState, ack: DecisionAck) -> None:
        if self.store is not None and ack.status != AckStatus.ACK_STATUS_UNSPECIFIED:
            await self.store.ack(run, ack)

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
