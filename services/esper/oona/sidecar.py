"""SidecarOonaProducer: the training process's producer, with the sending in a child process.

A producer thread inside the training process shares its GIL: every send round (batching,
compression, the Kafka protocol: ~17 us of Python per event) stalls the training thread,
which costs ~3% of a 1.5 ms step when a snapshot is published every step. Here `publish`
only encodes the event and hands one packet to the sidecar (esper.oona.sidecar_process)
over a SOCK_SEQPACKET socket, non-blocking: a full socket drops and counts, as a full
buffer does. The sidecar runs the ordinary OonaProducer on a core of its own.

Same interface as ThreadedOonaProducer (start, publish, stats, flush, wait_connected,
stop). The sidecar dies with the training process: it sees the socket close, sends what
it holds for a few seconds, and exits."""

from __future__ import annotations

import logging
import select
import socket
import subprocess
import sys
import time
from typing import Any, Self

from esper.leyline.v1 import telemetry_pb2
from esper.oona.producer import (
    DEFAULT_QUEUE_CAPACITY,
    SEND_ROUND_TIMEOUT_S,
    ProducerStats,
    outbound_record,
)
from esper.oona.sidecar_wire import (
    READY,
    REQUEST,
    STATS,
    WireError,
    decode_message,
    encode_message,
    encode_record,
)

log = logging.getLogger(__name__)

# Packets the sidecar sends back (stats, replies) are small.
MAX_REPLY = 64 * 1024
# Seconds a stopped sidecar gets to exit after its final reply before it is killed.
EXIT_TIMEOUT_S = 5.0
_SIDECAR_GONE = (BrokenPipeError, ConnectionResetError, ConnectionRefusedError)


class SidecarError(RuntimeError):
    """The sidecar could not be started or stopped answering."""


class SidecarOonaProducer:
    """Non-blocking TelemetryEvent producer for a (synchronous) training process."""

    def __init__(self, bootstrap: str, *, client_id: str = "esper",
                 queue_capacity: int = DEFAULT_QUEUE_CAPACITY) -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.queue_capacity = queue_capacity
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._sent_packets = 0  # handed to the sidecar
        self._refused = 0  # socket full, sidecar gone, or not encodable
        self._remote: dict[str, Any] = {}  # the sidecar's latest stats
        self._next_id = 0
        self._lost_logged = False

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        """Start the sidecar and wait until it runs (it connects to the broker later, in
        the background, holding events meanwhile); SidecarError when it does not start."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-m", "esper.oona.sidecar_process", "--fd", str(theirs.fileno()),
                "--bootstrap", self.bootstrap, "--client-id", self.client_id,
                "--queue-capacity", str(self.queue_capacity)]
        try:
            self._proc = subprocess.Popen(argv, pass_fds=[theirs.fileno()],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        finally:
            theirs.close()
        self._sock = ours
        ours.setblocking(False)
        kind, body = self._receive(time.monotonic() + timeout)
        if kind != READY:
            self.stop(0)
            raise SidecarError(f"oona sidecar sent {kind!r} before ready")
        log.debug("oona sidecar %s started (pid %s)", self.client_id, body.get("pid"))
        return self

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Send what the sidecar holds (up to `flush_timeout`), then end it. Events still
        held then are counted as dropped."""
        if self._sock is None:
            return
        try:
            self._request("stop", flush_timeout, flush_timeout + SEND_ROUND_TIMEOUT_S)
        except (SidecarError, OSError) as exc:
            log.warning("oona sidecar %s: no clean stop: %s", self.client_id, exc)
        finally:
            self._sock.close()
            self._sock = None
            self._end_process()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the training thread's side ----------------------------------------------------

    def publish(self, event: telemetry_pb2.TelemetryEvent, *, topic: str | None = None,
                key: bytes | None = None) -> bool:
        """Hand an event to the sidecar; never waits. False when it was dropped (the
        sidecar is behind, gone or stopped, or the event is too big for a packet)."""
        if self._sock is None:
            self._refused += 1
            return False
        try:
            self._sock.send(encode_record(outbound_record(event, topic=topic, key=key)))
        except BlockingIOError:
            self._refused += 1
            return False
        except _SIDECAR_GONE as exc:
            self._refused += 1
            self._sidecar_lost(exc)
            return False
        except (WireError, OSError) as exc:  # EMSGSIZE: bigger than the socket's buffer
            self._refused += 1
            log.warning("oona sidecar %s: event not sent: %s", self.client_id, exc)
            return False
        self._sent_packets += 1
        return True

    def stats(self) -> ProducerStats:
        """The counters: what the training process handed over and what the sidecar did
        with it (as of its latest report, at most half a second old)."""
        self._drain()
        remote = self._remote
        full_there = int(remote.get("dropped_queue_full", 0))
        return ProducerStats(
            published=self._sent_packets - full_there,
            sent=int(remote.get("sent", 0)),
            dropped_queue_full=self._refused + full_there,
            dropped_send_failed=int(remote.get("dropped_send_failed", 0)),
            queue_depth=int(remote.get("queue_depth", 0)),
            backpressure=float(remote.get("backpressure", 0.0)),
            connected=bool(remote.get("connected", False)),
        )

    def flush(self, timeout: float) -> bool:
        """Wait until the sidecar sent everything handed to it so far."""
        return self._ask("flush", timeout)

    def wait_connected(self, timeout: float) -> bool:
        return self._ask("connected", timeout)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # ---- talking to the sidecar --------------------------------------------------------

    def _ask(self, op: str, timeout: float) -> bool:
        if self._sock is None:
            return False
        try:
            return bool(self._request(op, timeout, timeout + 1.0).get("ok"))
        except (SidecarError, OSError) as exc:
            log.warning("oona sidecar %s: %s failed: %s", self.client_id, op, exc)
            return False

    def _request(self, op: str, timeout: float, wait_s: float) -> dict[str, Any]:
        """Send a request (after the records handed over before it) and wait for its
        answer; the stats it carries become the latest."""
        assert self._sock is not None
        self._next_id += 1
        request_id = self._next_id
        deadline = time.monotonic() + wait_s
        packet = encode_message(REQUEST, {"op": op, "id": request_id, "timeout": timeout})
        while True:
            try:
                self._sock.send(packet)
                break
            except BlockingIOError:  # records queued ahead of it: wait for room
                self._wait(select.POLLOUT, deadline)
        while True:
            kind, body = self._receive(deadline)
            if kind == STATS and body.get("id") == request_id:
                return body

    def _receive(self, deadline: float) -> tuple[bytes, dict[str, Any]]:
        """The next packet from the sidecar (stats packets also update the latest)."""
        assert self._sock is not None
        while True:
            try:
                packet = self._sock.recv(MAX_REPLY)
            except BlockingIOError:
                self._wait(select.POLLIN, deadline)
                continue
            if not packet:
                raise SidecarError(f"the sidecar exited (code {self._exit_code()})")
            try:
                kind, body = decode_message(packet)
            except WireError as exc:
                raise SidecarError(f"the sidecar sent garbage: {exc}") from None
            if kind == STATS:
                self._remote = body
            return kind, body

    def _drain(self) -> None:
        """Take the sidecar's unrequested stats reports that are waiting."""
        if self._sock is None:
            return
        while True:
            try:
                packet = self._sock.recv(MAX_REPLY)
            except (BlockingIOError, *_SIDECAR_GONE):
                return
            if not packet:
                return
            try:
                kind, body = decode_message(packet)
            except WireError:
                continue
            if kind == STATS:
                self._remote = body

    def _wait(self, events: int, deadline: float) -> None:
        assert self._sock is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise SidecarError("the sidecar did not answer in time")
        poller = select.poll()
        poller.register(self._sock, events)
        poller.poll(left * 1000)

    def _sidecar_lost(self, exc: BaseException) -> None:
        if not self._lost_logged:
            self._lost_logged = True
            log.error("oona sidecar %s is gone (%s; exit code %s): telemetry is dropped",
                      self.client_id, exc, self._exit_code())

    def _exit_code(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def _end_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
