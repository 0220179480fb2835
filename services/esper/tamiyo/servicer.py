"""TamiyoService over gRPC: thin — it validates, translates and calls SessionProtocol,
Decider and PolicyRegistry. Errors become statuses through the runtime's one mapping
(esper.runtime.errors)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import grpc

from esper.leyline.v1 import tamiyo_pb2, tamiyo_pb2_grpc
from esper.runtime.errors import (
    Aborted,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ServiceError,
    StatusError,
    serves_errors,
)
from esper.runtime.peers import client_key
from esper.runtime.streams import StreamSlots
from esper.tamiyo.outbox import Outbox
from esper.tamiyo.policies.errors import PolicyArtifactError
from esper.tamiyo.policy_registry import PolicyUnavailable
from esper.tamiyo.session import SessionContext, SessionProtocol
from esper.tamiyo.validation import (
    check_budget,
    check_graph,
    check_run_id,
    snapshot_problem,
)

log = logging.getLogger("esper.tamiyo.servicer")

_END = object()


def _policy_refused(field: str, policy: str, exc: PolicyUnavailable) -> ServiceError:
    """An unloaded gnn is the server's state; an unknown policy name is the caller's error."""
    if policy == "gnn":
        return FailedPrecondition(f"{field}: {exc}")
    return InvalidArgument(field, str(exc))


@serves_errors()
class TamiyoServicer(tamiyo_pb2_grpc.TamiyoServiceServicer):
    def __init__(self, shared: SessionContext) -> None:
        self.shared = shared
        config = shared.config
        self.streams = StreamSlots("Session", config.max_sessions, config.max_sessions_per_client)

    # -- Session --------------------------------------------------------------------------

    async def Session(self, request_iterator, context):
        with self.streams.hold(client_key(context)):  # RESOURCE_EXHAUSTED beyond the limits
            async for response in self._session(request_iterator, context):
                yield response

    async def _session(self, request_iterator, context):
        config = self.shared.config
        protocol = SessionProtocol(self.shared)
        try:  # a stream that never opens would hold its slot forever
            first = await asyncio.wait_for(anext(aiter(request_iterator), None), config.open_timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(f"open: no open message within {config.open_timeout_s:g} s") from None
        if first is None:
            raise InvalidArgument("message", "the stream ended before open")
        accept = await protocol.open(first)  # OpenRefused carries its status
        yield accept
        assert protocol.run is not None
        superseded = protocol.run.superseded
        out = Outbox(context, config.session_send_queue, config.session_send_timeout_s)
        seen = [asyncio.get_running_loop().time()]  # when the client's last message came
        tasks = [
            asyncio.create_task(self._read(protocol, request_iterator, out, superseded, seen)),
            asyncio.create_task(self._beat(protocol, out)),
            asyncio.create_task(self._watch(superseded, out)),
            asyncio.create_task(self._idle(seen, out)),
        ]
        try:
            while True:
                item = await out.get()
                if item is _END:
                    return
                if isinstance(item, ServiceError):
                    raise item
                yield item
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            protocol.announce()  # what a cut stream left unannounced
            log.info("session closed", extra={"run_id": protocol.run.run_id, "session_id": protocol.session_id})

    async def _read(
        self, protocol: SessionProtocol, request_iterator, out: Outbox, superseded: asyncio.Event,
        seen: list[float],
    ) -> None:
        clock = asyncio.get_running_loop().time
        iterator = aiter(request_iterator)
        while True:
            try:
                request = await anext(iterator)
            except StopAsyncIteration:
                break
            except ServiceError as exc:  # refused by esper.runtime.requests, which logged it
                await out.put(exc)
                return
            except Exception as exc:  # noqa: BLE001 — garbage bytes end this session only
                log.warning("unreadable session message", extra={"session_id": protocol.session_id,
                                                                  "error": repr(exc)})
                await out.put(InvalidArgument("stream", f"unreadable client message ({exc})"))
                return
            seen[0] = clock()
            if superseded.is_set():  # a newer session owns the run now; touch nothing
                return
            try:
                responses = await protocol.handle(request)
            except ServiceError as exc:  # superseded on another replica, or the run store is down
                await out.put(exc)
                return
            except Exception:
                log.exception("session message failed", extra={"session_id": protocol.session_id})
                await out.put(StatusError(grpc.StatusCode.INTERNAL,
                                          "session: the server failed on a message; see its log"))
                return
            for response in responses:
                await out.put(response)
            seen[0] = clock()  # idle is waiting for the client, not handling its message
            if protocol.has_unannounced:  # once the sending side (woken by put) took the decision
                asyncio.get_running_loop().call_soon(protocol.announce)
        await out.put(_END)

    async def _beat(self, protocol: SessionProtocol, out: Outbox) -> None:
        period = self.shared.config.heartbeat_seconds
        while True:
            await asyncio.sleep(period)
            run = protocol.run
            await out.put(protocol.heartbeat(run.last_step if run and run.last_step > 0 else 0))

    async def _idle(self, seen: list[float], out: Outbox) -> None:
        """End the stream when the client sent nothing for idle_timeout_seconds. A watchdog
        rather than a timeout around each read: that cost ~12 us per message (a timer
        scheduled and cancelled), this a clock read."""
        idle = self.shared.config.idle_timeout_seconds
        loop = asyncio.get_running_loop()
        while True:
            left = seen[0] + idle - loop.time()
            if left <= 0:
                await out.put(DeadlineExceeded(f"no message from the client for {idle} s"))
                return
            await asyncio.sleep(left)

    @staticmethod
    async def _watch(superseded: asyncio.Event, out: Outbox) -> None:
        await superseded.wait()
        await out.put(Aborted("session: superseded by a newer session of the same run"))

    # -- unary ----------------------------------------------------------------------------

    async def Decide(self, request, context):
        limits = self.shared.limits
        check_run_id("snapshot.run_id", request.snapshot.run_id)
        check_graph("graph", request.graph, limits)
        check_budget("budget", request.budget)
        problem = snapshot_problem(request.snapshot, limits)
        if problem:  # (warning code, detail naming the field)
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, problem[1])
        policy = request.policy or self.shared.config.default_policy
        try:
            decision = await self.shared.decider.decide(
                policy, request.snapshot, request.graph, request.capabilities, request.budget)
        except PolicyUnavailable as exc:
            raise _policy_refused("policy", policy, exc) from None
        return tamiyo_pb2.DecideResponse(decision=decision)

    async def ListPolicies(self, request, context):
        return tamiyo_pb2.ListPoliciesResponse(policies=self.shared.decider.policies.infos())

    async def ReloadPolicy(self, request, context):
        if request.name != "gnn":
            raise InvalidArgument("name", f"only 'gnn' is reloadable, got {request.name!r}")
        config = self.shared.config
        path = request.artifact_path or config.gnn_artifact
        if not path:
            raise FailedPrecondition("artifact_path: empty, and no gnn_artifact is configured")
        if request.artifact_path and not _inside(Path(request.artifact_path), Path(config.resolved_policy_dir)):
            raise InvalidArgument("artifact_path", f"must be inside the policy directory {config.resolved_policy_dir}")
        expected = config.gnn_artifact_sha256 if path == config.gnn_artifact else ""
        try:
            info = await self.shared.decider.policies.load_gnn(path, expected)
        except PolicyArtifactError as exc:
            raise FailedPrecondition(f"artifact_path: {exc}") from None
        return tamiyo_pb2.ReloadPolicyResponse(policy=info)


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True
