"""RemotePolicy: the Tolaria side of Tamiyo's bidirectional `Session` stream.

A daemon thread runs its own asyncio loop holding the gRPC stream, so the training thread
never waits on the network: `observe`/`acked`/`field_report` post to the loop
(`call_soon_threadsafe`, O(1)) and `decisions` drains a deque. Snapshots are coalesced
(when the stream is slow, only the newest waits), acks and field reports are kept in a
bounded outbox while disconnected and sent after the next open. `close()` sends what is
still queued (the field reports of the seeds a closing session settles) before the
stream ends, within CLOSE_FLUSH_S.

When Tamiyo is unreachable, refuses the open, or goes silent for `SILENCE_HEARTBEATS`
heartbeat periods, `outage()` says why (the session then uses the local policy or no
decisions) and the stream is re-opened with exponential backoff, with the same run id,
the last applied decision id, every acked decision id and the current seed states, so
Tamiyo resumes the run and never re-sends an applied decision.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import threading
import time

from esper.leyline.v1.control_pb2 import AckStatus, AdaptationDecision, DecisionAck
from esper.leyline.v1.signals_pb2 import TrainingSnapshot
from esper.leyline.v1.tamiyo_pb2 import (
    SessionHeartbeat,
    SessionOpen,
    SessionRequest,
    SessionResponse,
)
from esper.leyline.v1.telemetry_pb2 import FieldReport
from esper.oona.aio import within
from esper.rpc.clients import TamiyoClient
from esper.rpc.errors import ServiceError

log = logging.getLogger(__name__)

# Reconnect backoff: a quick first retry, doubling to a cap that notices a restarted
# Tamiyo within seconds without hammering a dead address; jitter spreads many clients.
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 10.0
BACKOFF_JITTER = 0.2
# Heartbeat period until the server's accept says otherwise.
DEFAULT_HEARTBEAT_S = 5.0
# A stream silent this many heartbeat periods is treated as down (Tamiyo too slow).
SILENCE_HEARTBEATS = 3
# Acks and field reports held while disconnected: acks are recovered from the re-open's
# acked ids anyway; field reports are small and rare (one per seed).
OUTBOX_MAX = 1_000
# Decisions held for the training thread: far more than a policy ever has in flight.
INBOX_MAX = 1_000
# Seconds close() waits for the stream thread to finish.
CLOSE_TIMEOUT_S = 5.0
# How long close() lets the stream deliver what is still queued (acks, and the field
# reports of the seeds close() settles) before it cuts the call: the request stream
# drains its outbox and half-closes, and Tamiyo then ends the call at once.
CLOSE_FLUSH_S = 2.0

_STOP = object()


class RemotePolicy:
    """A PolicySource backed by a remote Tamiyo `Session` at `address` (host:port)."""

    name = "tamiyo"

    def __init__(self, address: str, *, policy: str = "heuristic",
                 backoff_min_s: float = BACKOFF_MIN_S, backoff_max_s: float = BACKOFF_MAX_S) -> None:
        self.address = address
        self.policy = policy
        self.backoff_min_s, self.backoff_max_s = backoff_min_s, backoff_max_s
        self.accepted_every: int | None = None
        self.heartbeat_s = DEFAULT_HEARTBEAT_S
        self.session_id = ""
        self.resumed = False
        self.connects = 0
        self.warnings: collections.Counter[str] = collections.Counter()
        self.snapshots_sent = 0
        self.snapshots_dropped = 0
        self._open: SessionOpen | None = None
        self._seeds = []
        self._acked: list[str] = []
        self._acked_set: set[str] = set()
        self._last_applied = ""
        self._inbox: collections.deque[AdaptationDecision] = collections.deque(maxlen=INBOX_MAX)
        self._outbox: collections.deque[SessionRequest] = collections.deque(maxlen=OUTBOX_MAX)
        self._latest: TrainingSnapshot | None = None
        self._outage: str | None = "not connected yet"
        self._loop = asyncio.new_event_loop()
        self._wake: asyncio.Event | None = None
        self._call = None
        self._accepted_flag = False
        self._stopping = False
        self._thread = threading.Thread(target=self._thread_main, name="tolaria-tamiyo",
                                        daemon=True)

    # ---- PolicySource (training thread; never blocks) ---------------------------------------
    def start(self, open_message: SessionOpen) -> None:
        self._open = SessionOpen()
        self._open.CopyFrom(open_message)
        self._open.policy = self.policy
        self._seeds = list(open_message.seeds)
        self._last_applied = open_message.last_applied_decision_id
        for decision_id in open_message.acked_decision_ids:
            self._remember_ack(decision_id)
        self._thread.start()

    def snapshot_every(self) -> int | None:
        return self.accepted_every

    def observe(self, snapshot: TrainingSnapshot) -> None:
        self._post(self._set_latest, snapshot)

    def decisions(self) -> list[AdaptationDecision]:
        out = []
        while self._inbox:
            out.append(self._inbox.popleft())
        return out

    def acked(self, ack: DecisionAck) -> None:
        self._post(self._queue_ack, ack)

    def field_report(self, report: FieldReport) -> None:
        self._post(self._queue, SessionRequest(field_report=report))

    def outage(self) -> str | None:
        return self._outage

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._post(self._stop)
        self._thread.join(CLOSE_TIMEOUT_S)

    def _post(self, fn, *args) -> None:
        if self._loop.is_closed():
            return
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop stopped meanwhile
            pass

    # ---- the stream thread --------------------------------------------------------------------
    def _thread_main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._wake = asyncio.Event()
        try:
            self._loop.run_until_complete(self._run())
        finally:
            self._loop.close()

    def _stop(self) -> None:
        """Stop once the queued messages are sent (see CLOSE_FLUSH_S); a stream that is
        down keeps its outbox unsent."""
        self._stopping = True
        self._wake.set()
        if self._call is not None:
            self._loop.call_later(CLOSE_FLUSH_S, self._cut)

    def _cut(self) -> None:
        if self._call is not None:
            self._call.cancel()

    def _set_latest(self, snapshot: TrainingSnapshot) -> None:
        if self._latest is not None:
            self.snapshots_dropped += 1  # coalesced: the stream did not keep up
        self._latest = snapshot
        self._seeds = list(snapshot.seeds)
        self._wake.set()

    def _queue_ack(self, ack: DecisionAck) -> None:
        self._remember_ack(ack.decision_id)
        if ack.status == AckStatus.ACK_STATUS_APPLIED:
            self._last_applied = ack.decision_id
        self._queue(SessionRequest(ack=ack))

    def _remember_ack(self, decision_id: str) -> None:
        if decision_id and decision_id not in self._acked_set:
            self._acked_set.add(decision_id)
            self._acked.append(decision_id)

    def _queue(self, request: SessionRequest) -> None:
        self._outbox.append(request)
        self._wake.set()

    async def _run(self) -> None:
        backoff = self.backoff_min_s
        while not self._stopping:
            self._accepted_flag = False
            try:
                await self._session_once()
            except ServiceError as exc:
                self._outage = str(exc)  # "Tamiyo at ADDRESS: CODE: details"
            except Exception as exc:  # noqa: BLE001 - never let the stream thread die
                self._outage = f"Tamiyo at {self.address}: {type(exc).__name__}: {exc}"
            if self._stopping:
                break
            log.warning("Tamiyo session down (%s); reconnecting in %.1fs", self._outage, backoff)
            await self._sleep(backoff * (1 + random.uniform(-BACKOFF_JITTER, BACKOFF_JITTER)))
            backoff = self.backoff_min_s if self._accepted_flag else min(backoff * 2,
                                                                         self.backoff_max_s)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wait_stop(), seconds)
        except TimeoutError:
            pass

    async def _wait_stop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            await self._wake.wait()

    def _open_request(self) -> SessionRequest:
        opening = SessionOpen()
        opening.CopyFrom(self._open)
        del opening.seeds[:]
        opening.seeds.extend(self._seeds)
        opening.last_applied_decision_id = self._last_applied
        del opening.acked_decision_ids[:]
        opening.acked_decision_ids.extend(self._acked)
        return SessionRequest(open=opening)

    async def _session_once(self) -> bool:
        """One stream from open to its end; returns whether it was accepted."""
        async with TamiyoClient(self.address) as tamiyo:
            self._call = tamiyo.session(self._requests())
            accepted = False
            try:
                accepted = await self._read(self._call)
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
            finally:
                self._call.cancel()
                self._call = None
            return accepted

    async def _read(self, call) -> bool:
        """Read until the stream ends: Tamiyo ends it, falls silent, or (on close, once
        the requests half-closed) finishes the call."""
        self._accepted_flag = False
        iterator = call.__aiter__()
        while True:
            limit = self.heartbeat_s * SILENCE_HEARTBEATS
            try:
                response: SessionResponse = await asyncio.wait_for(iterator.__anext__(), limit)
            except StopAsyncIteration:
                if not self._stopping:  # on close, ending the call is what we asked for
                    self._outage = f"Tamiyo at {self.address} ended the session"
                return self._accepted_flag
            except TimeoutError:
                self._outage = f"Tamiyo at {self.address} silent for {limit:.0f}s"
                return self._accepted_flag
            kind = response.WhichOneof("message")
            if kind == "accept":
                self._accepted_flag = True
                self._accepted(response.accept)
            elif kind == "decision":
                self._inbox.append(response.decision)
            elif kind == "warning":
                self.warnings[response.warning.code] += 1
                log.warning("Tamiyo warning %s: %s", response.warning.code, response.warning.detail)

    def _accepted(self, accept) -> None:
        self.connects += 1
        self.session_id, self.resumed = accept.session_id, accept.resumed
        if accept.snapshot_every_steps > 0:
            self.accepted_every = int(accept.snapshot_every_steps)
        if accept.heartbeat_seconds > 0:
            self.heartbeat_s = float(accept.heartbeat_seconds)
        self._outage = None
        log.info("Tamiyo session %s %s (snapshots every %s steps)", accept.session_id,
                 "resumed" if accept.resumed else "opened", self.accepted_every)

    async def _requests(self):
        yield self._open_request()
        beat = 0
        last_beat = time.monotonic()
        while not self._stopping:
            while self._outbox:
                yield self._outbox.popleft()
            if self._latest is not None:
                snapshot, self._latest = self._latest, None
                self.snapshots_sent += 1
                yield SessionRequest(snapshot=snapshot)
                continue
            if time.monotonic() - last_beat >= self.heartbeat_s:
                beat += 1
                last_beat = time.monotonic()
                yield SessionRequest(heartbeat=SessionHeartbeat(sequence=beat))
                continue
            self._wake.clear()
            try:
                await within(self.heartbeat_s, self._wake.wait())
            except TimeoutError:
                pass
        # Stopping: what is still queued goes out, then the stream half-closes.
        while self._outbox:
            yield self._outbox.popleft()
