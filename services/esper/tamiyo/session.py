"""One Session stream's protocol, without gRPC: open (version, validation, resume), then
snapshots -> decisions, acks, field reports and heartbeats. A bad message inside the stream
is dropped with a SessionWarning and counted; a bad open is refused (`OpenRefused`).

Only actionable decisions travel on the stream (a wait is not sent: it would only cost an
ack), and at most one is outstanding per run: while a decision is unacked and unexpired,
snapshots update the state but no new decision is made.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import grpc
from prometheus_client import REGISTRY, Counter

from esper.leyline.ids import new_session_id
from esper.leyline.v1.tamiyo_pb2 import (
    SessionAccept,
    SessionHeartbeat,
    SessionOpen,
    SessionRequest,
    SessionResponse,
    SessionWarning,
    SessionWarningCode,
)
from esper.leyline.version import compatibility_error, contract_version
from esper.runtime.auth import caller
from esper.runtime.errors import ResourceExhausted, StatusError
from esper.runtime.limits import message_problem
from esper.runtime.quota import RateQuota
from esper.tamiyo.config import TamiyoConfig
from esper.tamiyo.decider import Decider
from esper.tamiyo.events import DecisionEvents
from esper.tamiyo.policy_registry import PolicyUnavailable
from esper.tamiyo.run_store import RunBook
from esper.tamiyo.runs import RunState
from esper.tamiyo.validation import (
    InvalidInput,
    Limits,
    check_budget,
    check_graph,
    check_run_id,
    snapshot_problem,
)

log = logging.getLogger("esper.tamiyo.session")

WARNINGS = Counter("esper_tamiyo_session_warnings_total", "Session messages dropped, by warning code",
                   ["code"], registry=REGISTRY)
DECISIONS = Counter("esper_tamiyo_decisions_total", "Decisions sent on sessions, by policy and action",
                    ["policy", "action"], registry=REGISTRY)


@functools.lru_cache(maxsize=64)  # a label lookup hashes and locks per call; the pairs are few
def _decisions(policy: str, action: str):
    return DECISIONS.labels(policy=policy, action=action)


class OpenRefused(StatusError):
    """The session cannot start; `code` is the gRPC status to answer with."""


@dataclass
class SessionContext:
    config: TamiyoConfig
    runs: RunBook
    decider: Decider
    events: DecisionEvents = field(default_factory=lambda: DecisionEvents(None))
    report_quota: RateQuota = field(init=False)

    def __post_init__(self) -> None:
        self.report_quota = RateQuota("field_report", self.config.field_reports_per_minute)

    @property
    def limits(self) -> Limits:
        return Limits(self.config.max_graph_nodes, self.config.max_slots, self.config.max_graph_bytes)


_WARNING_CODE_PREFIX = "SESSION_WARNING_CODE_"


_UNMAPPED_CODES: set[str] = set()


def warning_code(code: str) -> int:
    """The SessionWarningCode of a warning's text code ("non_finite" -> ..._NON_FINITE);
    UNSPECIFIED for a code the contract has no value for yet (its text still travels)."""
    try:
        return SessionWarningCode.Value(_WARNING_CODE_PREFIX + code.upper())
    except ValueError:
        if code not in _UNMAPPED_CODES:  # once per code: hostile input must not flood the log
            _UNMAPPED_CODES.add(code)
            log.error("session warning code %r has no SessionWarningCode value: add one to tamiyo.proto", code)
        return SessionWarningCode.SESSION_WARNING_CODE_UNSPECIFIED


def _warning(code: str, detail: str) -> SessionResponse:
    WARNINGS.labels(code=code).inc()
    return SessionResponse(warning=SessionWarning(code=code, detail=detail, warning_code=warning_code(code)))


class SessionProtocol:
    """The state of one stream. `open` first, then `handle` for every further message."""

    def __init__(self, shared: SessionContext) -> None:
        self.shared = shared
        self.session_id = new_session_id()
        self.run: RunState | None = None
        self._heartbeat_seq = 0
        # Decisions handed out but not yet announced (Oona event, metric, log): see announce.
        self._unannounced: list[tuple[RunState, object]] = []

    # -- open -----------------------------------------------------------------------------

    def _validate_open(self, open_: SessionOpen) -> str:
        problem = compatibility_error(open_.contract_version)
        if problem:
            raise OpenRefused(grpc.StatusCode.FAILED_PRECONDITION, f"open.contract_version: {problem}")
        beyond = message_problem(open_, "open")  # sizes, enum values, integer ranges
        if beyond is not None:
            raise OpenRefused(grpc.StatusCode.INVALID_ARGUMENT, beyond.detail)
        try:
            check_run_id("open.run_id", open_.run_id)
            check_graph("open.graph", open_.graph, self.shared.limits)
            check_budget("open.budget", open_.budget)
        except InvalidInput as exc:
            raise OpenRefused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        policy = open_.policy or self.shared.config.default_policy
        try:
            self.shared.decider.policies.get(policy)
        except PolicyUnavailable as exc:
            code = grpc.StatusCode.FAILED_PRECONDITION if policy == "gnn" else grpc.StatusCode.INVALID_ARGUMENT
            raise OpenRefused(code, f"open.policy: {exc}") from None
        return policy

    async def open(self, request: SessionRequest) -> SessionResponse:
        """Accept or resume a run; raises OpenRefused."""
        if request.WhichOneof("message") != "open":
            raise OpenRefused(grpc.StatusCode.INVALID_ARGUMENT,
                              f"message: the first session message must be open, got {request.WhichOneof('message')}")
        open_ = request.open
        policy = self._validate_open(open_)
        run, resumed = await self.shared.runs.open(open_, policy, caller(), self.session_id,
                                                   self.shared.config.max_step_advance)
        self.run = run
        # Kernels for this run's slots: compiled in the background if Urza has none yet.
        self.shared.decider.supply.ensure(run.graph, run.capabilities)
        policy_version = self.shared.decider.policies.get(policy).version
        log.info("session open", extra={"run_id": run.run_id, "session_id": self.session_id,
                                        "resumed": resumed, "policy": policy_version})
        c = self.shared.config
        return SessionResponse(accept=SessionAccept(
            run_id=run.run_id, session_id=self.session_id, contract_version=contract_version(),
            snapshot_every_steps=c.snapshot_every_steps, heartbeat_seconds=c.heartbeat_seconds,
            idle_timeout_seconds=c.idle_timeout_seconds, policy_version=policy_version, resumed=resumed))

    # -- stream ---------------------------------------------------------------------------

    def heartbeat(self, step: int = 0) -> SessionResponse:
        self._heartbeat_seq += 1
        return SessionResponse(heartbeat=SessionHeartbeat(sequence=self._heartbeat_seq, step=step))

    async def handle(self, request: SessionRequest) -> list[SessionResponse]:
        """Responses to one client message after open."""
        run = self.run
        assert run is not None, "open first"
        kind = request.WhichOneof("message")
        beyond = message_problem(request)  # e.g. step 2^64-1, stage 999: dropped, never stored
        if beyond is not None:
            return self._count(run, (beyond.kind, beyond.detail))
        if kind == "snapshot":
            return await self._snapshot(run, request)
        if kind == "ack":
            return await self._ack(run, request)
        if kind == "field_report":
            report = request.field_report
            if not self._same_run(run, report.run_id):
                return self._count(run, ("wrong_run", f"field_report.run_id {report.run_id!r} is not {run.run_id!r}"))
            try:
                self.shared.report_quota.take(run.owner)
            except ResourceExhausted as exc:
                return self._count(run, ("quota_exceeded", str(exc)))
            run.add_field_report(report)
            self.shared.decider.urza.forward_field_report(report)
            return []
        if kind == "heartbeat":
            return []
        if kind == "open":
            return self._count(run, ("repeated_open", "message: open may only be the first message"))
        return self._count(run, ("empty_message", "message: no field of the oneof is set"))

    @staticmethod
    def _same_run(run: RunState, run_id: str) -> bool:
        return not run_id or run_id == run.run_id

    @staticmethod
    def _count(run: RunState, problem: tuple[str, str] | None) -> list[SessionResponse]:
        if problem is None:
            return []
        run.warnings[problem[0]] += 1
        return [_warning(*problem)]

    async def _snapshot(self, run: RunState, request: SessionRequest) -> list[SessionResponse]:
        snapshot = request.snapshot
        if not self._same_run(run, snapshot.run_id):
            return self._count(run, ("wrong_run", f"snapshot.run_id {snapshot.run_id!r} is not {run.run_id!r}"))
        problem = snapshot_problem(snapshot, self.shared.limits)
        if problem:
            return self._count(run, problem)
        async with run.lock:
            problem = run.accept_snapshot(snapshot)
            if problem:
                return self._count(run, problem)
            out: list[SessionResponse] = []
            unknown = run.take_seeds(snapshot)
            if unknown:
                out += self._count(run, ("unknown_slot", f"snapshot.seeds names unknown slot ids {unknown[:5]}"))
            run.history.record(snapshot)
            decision = None if run.pending(snapshot.step) is not None else await self._decide(run, snapshot)
            await self.shared.runs.save(run, decision)  # recorded before it is sent: any replica knows it
            if decision is not None:
                self._unannounced.append((run, decision))
                out.append(SessionResponse(decision=decision))
            return out

    async def _ack(self, run: RunState, request: SessionRequest) -> list[SessionResponse]:
        ack = request.ack
        if not self._same_run(run, ack.run_id):
            return self._count(run, ("wrong_run", f"ack.run_id {ack.run_id!r} is not {run.run_id!r}"))
        problem = run.record_ack(ack)
        if problem is None:
            await self.shared.runs.ack(run, ack)
        return self._count(run, problem)

    async def _decide(self, run: RunState, snapshot) -> object | None:
        try:
            decision = await self.shared.decider.decide(
                run.policy, snapshot, run.graph, run.capabilities, run.budget,
                seeds=run.seeds, history=run.history, run_id=run.run_id, graph_digest=run.graph_digest)
        except PolicyUnavailable as exc:  # e.g. the gnn was unloaded under the session
            log.warning("policy unavailable", extra={"run_id": run.run_id, "error": str(exc)})
            return None
        action = decision.WhichOneof("action")
        if action == "wait":
            return None
        run.issue(decision)
        return decision

    @property
    def has_unannounced(self) -> bool:
        return bool(self._unannounced)

    def announce(self) -> None:
        """Publish the decisions `handle` returned since the last call (their Oona event,
        their count, their log line). Apart from `handle` so the stream can send a decision
        first: building and encoding its event (~40 us) is history, not control, and need
        not delay it. The decision itself was recorded in the run before it was returned."""
        pending, self._unannounced = self._unannounced, []
        for run, decision in pending:
            action = decision.WhichOneof("action")
            self.shared.events.decision(run.run_id, decision)
            _decisions(decision.policy_version.split("@")[0], action).inc()
            log.info("decision", extra={"run_id": run.run_id, "decision_id": decision.decision_id,
                                        "action": action, "rationale": decision.rationale})
