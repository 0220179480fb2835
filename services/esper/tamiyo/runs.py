"""Per-run state kept on the server, so a session that reconnects with the same run id
resumes: the graph, budget, policy, validation history, the client's seed states and the
decisions issued and acked. The client is the truth for seed states; on resume its view
replaces ours, and decisions it has not acked are retracted, never re-sent."""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import NoReturn

from esper.leyline.v1.control_pb2 import AckStatus, AdaptationDecision, DecisionAck
from esper.leyline.v1.lifecycle_pb2 import SeedState
from esper.leyline.v1.signals_pb2 import ModelGraph, TrainingSnapshot
from esper.leyline.v1.tamiyo_pb2 import Capabilities, ResourceBudget, SessionOpen
from esper.leyline.v1.telemetry_pb2 import FieldReport
from esper.policy import RunHistory
from esper.policy.context import graph_digest
from esper.runtime.auth import ANONYMOUS
from esper.runtime.errors import PermissionDenied
from esper.runtime.limits import MAX_COUNTER

# Decision ids remembered per run (issued and acked): enough to recognise any ack of a live
# run's recent decisions; older ones are forgotten first.
MAX_REMEMBERED_DECISIONS = 4096
# Field reports kept per run for inspection (they also go to Urza/Nissa via Oona elsewhere).
MAX_FIELD_REPORTS = 256
# How far one snapshot's step may move past the last accepted one (TamiyoConfig overrides):
# a run that trained on while disconnected resumes far ahead, but never by more than this.
DEFAULT_MAX_STEP_ADVANCE = 1_000_000
# No real run reaches this step (the runtime's one counter limit, 2^53); a snapshot
# claiming more is refused, so one absurd step cannot shut out every later one.
MAX_STEP = MAX_COUNTER


def _bounded_add(d: OrderedDict, key: str, value: object) -> None:
    d[key] = value
    d.move_to_end(key)
    while len(d) > MAX_REMEMBERED_DECISIONS:
        d.popitem(last=False)


@dataclass
class RunState:
    run_id: str
    graph: ModelGraph
    capabilities: Capabilities
    budget: ResourceBudget
    policy: str
    history: RunHistory = field(default_factory=RunHistory)
    seeds: dict[str, SeedState] = field(default_factory=dict)
    last_step: int = -1
    last_sequence: int = -1
    # Whether the snapshot at last_step closed an epoch: the epoch-end snapshot may follow a
    # periodic one at the same step (it carries the fresh validation metrics), once.
    last_was_epoch_end: bool = False
    issued: OrderedDict[str, AdaptationDecision] = field(default_factory=OrderedDict)
    acked: OrderedDict[str, int] = field(default_factory=OrderedDict)  # id -> AckStatus
    outstanding: str | None = None
    field_reports: list[FieldReport] = field(default_factory=list)
    warnings: Counter[str] = field(default_factory=Counter)
    decisions_sent: int = 0
    session_id: str = ""
    superseded: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _slot_ids: tuple | None = field(default=None, repr=False, compare=False)
    _graph_digest: tuple | None = field(default=None, repr=False, compare=False)
    # The identity that opened the run (esper.runtime.auth): only it may resume it.
    owner: str = ANONYMOUS
    max_step_advance: int = DEFAULT_MAX_STEP_ADVANCE
    # The open this state belongs to, where runs are shared by replicas (run_store.py): a
    # write holding an older generation than the stored one is refused.
    generation: int = 0

    def check_owner(self, identity: str) -> None:
        """A run is bound to the identity that opened it: anyone else is refused before the
        owner's stream or state is touched."""
        if identity != self.owner:
            self.denied(self.run_id, identity)

    @staticmethod
    def denied(run_id: str, identity: str) -> NoReturn:
        raise PermissionDenied(f"open.run_id: run {run_id!r} belongs to another identity; "
                               f"{identity!r} may not resume or supersede it")

    def reconcile(self, open_: SessionOpen, policy: str) -> None:
        """Adopt the client's view on (re)open."""
        self.graph, self.capabilities, self.budget, self.policy = (
            open_.graph, open_.capabilities, open_.budget, policy)
        known = {s.slot_id for s in open_.graph.slots}
        self.seeds = {s.slot_id: s for s in open_.seeds if s.slot_id in known}
        for decision_id in [*open_.acked_decision_ids, open_.last_applied_decision_id]:
            if decision_id:
                _bounded_add(self.acked, decision_id, AckStatus.ACK_STATUS_UNSPECIFIED)
        self.outstanding = None  # unacked decisions are retracted, never re-sent

    def accept_snapshot(self, snapshot: TrainingSnapshot) -> tuple[str, str] | None:
        """Order check: (code, detail) for a repeated, out-of-order or implausibly far
        snapshot, else None. A refused snapshot changes nothing."""
        if snapshot.step > MAX_STEP:
            return "step_jump", f"snapshot.step {snapshot.step} exceeds the largest step {MAX_STEP}"
        if self.last_step >= 0 and snapshot.step - self.last_step > self.max_step_advance:
            return "step_jump", (f"snapshot.step {snapshot.step} is more than {self.max_step_advance} "
                                 f"steps after the last step {self.last_step}")
        if snapshot.sequence > MAX_STEP or (
                self.last_sequence >= 0 and snapshot.sequence - self.last_sequence > self.max_step_advance):
            return "step_jump", f"snapshot.sequence {snapshot.sequence} jumps implausibly far"
        closes_epoch_at_same_step = (
            snapshot.step == self.last_step and snapshot.epoch_end and not self.last_was_epoch_end
            and snapshot.sequence > self.last_sequence
        )
        if snapshot.step <= self.last_step and self.last_step >= 0 and not closes_epoch_at_same_step:
            code = "repeated_snapshot" if snapshot.step == self.last_step else "out_of_order_snapshot"
            return code, f"snapshot.step {snapshot.step} is not after the last step {self.last_step}"
        if snapshot.sequence and snapshot.sequence <= self.last_sequence:
            return "out_of_order_snapshot", (
                f"snapshot.sequence {snapshot.sequence} is not after the last sequence {self.last_sequence}")
        self.last_was_epoch_end = snapshot.epoch_end
        self.last_step = snapshot.step
        self.last_sequence = max(self.last_sequence, snapshot.sequence)
        return None

    @property
    def slot_ids(self) -> frozenset[str]:
        """The graph's slot ids, read once per graph (it changes only on a reopen)."""
        cached = self._slot_ids
        if cached is None or cached[0] is not self.graph:
            cached = self._slot_ids = (self.graph, frozenset(s.slot_id for s in self.graph.slots))
        return cached[1]

    @property
    def graph_digest(self) -> str:
        """The graph's digest (esper.policy.context.graph_digest), hashed once per graph."""
        cached = self._graph_digest
        if cached is None or cached[0] is not self.graph:
            cached = self._graph_digest = (self.graph, graph_digest(self.graph))
        return cached[1]

    def take_seeds(self, snapshot: TrainingSnapshot) -> list[str]:
        """Adopt the snapshot's seed states; returns the unknown slot ids it named."""
        known = self.slot_ids
        unknown = []
        for seed in snapshot.seeds:
            if seed.slot_id in known:
                self.seeds[seed.slot_id] = seed
            else:
                unknown.append(seed.slot_id)
        return unknown

    def pending(self, step: int) -> AdaptationDecision | None:
        """The decision sent and not yet acked, while it can still be applied."""
        if self.outstanding is None:
            return None
        decision = self.issued.get(self.outstanding)
        if decision is None or self.outstanding in self.acked or step > decision.expires_at_step:
            self.outstanding = None
            return None
        return decision

    def issue(self, decision: AdaptationDecision) -> None:
        _bounded_add(self.issued, decision.decision_id, decision)
        self.outstanding = decision.decision_id
        self.decisions_sent += 1

    def record_ack(self, ack: DecisionAck) -> tuple[str, str] | None:
        """Fold in an ack; (code, detail) for an unknown or repeated one."""
        if ack.decision_id in self.acked and self.acked[ack.decision_id] != AckStatus.ACK_STATUS_UNSPECIFIED:
            return "duplicate_ack", f"ack.decision_id {ack.decision_id!r} was already acked"
        if ack.decision_id not in self.issued and ack.decision_id not in self.acked:
            return "unknown_decision", f"ack.decision_id {ack.decision_id!r} was not issued for this run"
        if ack.status == AckStatus.ACK_STATUS_UNSPECIFIED:
            return "invalid_ack", "ack.status must be APPLIED, REJECTED or EXPIRED"
        _bounded_add(self.acked, ack.decision_id, ack.status)
        if self.outstanding == ack.decision_id:
            self.outstanding = None
        return None

    def add_field_report(self, report: FieldReport) -> None:
        self.field_reports.append(report)
        del self.field_reports[:-MAX_FIELD_REPORTS]


class RunRegistry:
    """Run states by id, least recently used forgotten first beyond `max_runs` or beyond
    `max_graph_bytes` of graphs kept over all runs (a graph is most of a run's state).
    One owner keeps at most `max_runs_per_owner` runs (its own least recently used is
    forgotten first), so no identity can open runs until others' are forgotten and then
    claim their ids."""

    def __init__(self, max_runs: int, max_graph_bytes: int = 2**40,
                 max_runs_per_owner: int | None = None) -> None:
        self.max_runs = max_runs
        self.max_runs_per_owner = max_runs if max_runs_per_owner is None else max_runs_per_owner
        self.max_graph_bytes = max_graph_bytes
        self.graph_bytes = 0
        self._runs: OrderedDict[str, RunState] = OrderedDict()
        self._sizes: dict[str, int] = {}

    def get(self, run_id: str) -> RunState | None:
        return self._runs.get(run_id)

    def put(self, state: RunState) -> None:
        self._forget(state.run_id)
        self._runs[state.run_id] = state
        self._sizes[state.run_id] = state.graph.ByteSize()
        self.graph_bytes += self._sizes[state.run_id]
        owned = [run_id for run_id, run in self._runs.items() if run.owner == state.owner]
        for run_id in owned[:max(0, len(owned) - self.max_runs_per_owner)]:
            self._forget(run_id)  # least recently used first; the new run is the last
        while len(self._runs) > 1 and (len(self._runs) > self.max_runs
                                       or self.graph_bytes > self.max_graph_bytes):
            self._forget(next(iter(self._runs)))

    def _forget(self, run_id: str) -> None:
        if self._runs.pop(run_id, None) is not None:
            self.graph_bytes -= self._sizes.pop(run_id)

    def touch(self, run_id: str) -> None:
        if run_id in self._runs:
            self._runs.move_to_end(run_id)

    def __len__(self) -> int:
        return len(self._runs)
