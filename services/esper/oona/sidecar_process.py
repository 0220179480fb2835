"""The Oona sidecar process: an OonaProducer fed through a socket by a training process.

Started by SidecarOonaProducer (esper.oona.sidecar) as
`python -m esper.oona.sidecar_process --fd N --bootstrap HOST:PORT --client-id ID
--queue-capacity N`; fd N is its end of a SOCK_SEQPACKET socket pair (esper.oona.sidecar_wire).
It sends "ready", then offers every record packet to its producer's bounded buffer, answers
flush/connected/stop requests, and reports its counters twice a second. When the training
process goes away (the socket reaches EOF, whatever killed it) it sends what it holds, for
up to ORPHAN_FLUSH_S, and exits."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import sys

from esper.oona.aio import cancel_and_join
from esper.oona.envelope import MAX_EVENT_BYTES
from esper.oona.producer import DEFAULT_BATCH_MAX, DEFAULT_QUEUE_CAPACITY, OonaProducer
from esper.oona.sidecar_wire import (
    READY,
    RECORD,
    STATS,
    WireError,
    decode_message,
    decode_record,
    encode_message,
)
from esper.runtime.logs import configure_logging

log = logging.getLogger("esper.oona.sidecar")

# The largest packet: an event of MAX_EVENT_BYTES plus its topic, key and headers.
MAX_PACKET = MAX_EVENT_BYTES + 64 * 1024
# Seconds between unrequested stats reports (Tolaria reads drops into every snapshot).
STATS_INTERVAL_S = 0.5
# Seconds an orphaned sidecar keeps sending what it holds before it exits.
ORPHAN_FLUSH_S = 5.0
# Here the sender has a core of its own (no GIL shared with training): a short linger
# only gathers records into bigger batches.
LINGER_S = 0.05


class Sidecar:
    """Serves one training process over `sock` until stopped or orphaned."""

    def __init__(self, sock: socket.socket, producer: OonaProducer) -> None:
        self.sock = sock
        self.producer = producer
        self.malformed = 0
        self._requests: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        await self.producer.start()
        await self._send(encode_message(READY, {"pid": os.getpid()}))
        reporter = asyncio.create_task(self._report_stats())
        buffer = bytearray(MAX_PACKET)
        try:
            while True:
                size = await loop.sock_recv_into(self.sock, buffer)
                if size == 0:
                    log.info("oona sidecar: the training process is gone; flushing")
                    await self.producer.stop(ORPHAN_FLUSH_S)
                    return
                if buffer[:1] == RECORD:
                    self._offer(bytes(buffer[:size]))
                elif await self._control(bytes(buffer[:size])):
                    return
        finally:
            await cancel_and_join(reporter, log)
            for task in list(self._requests):
                await cancel_and_join(task, log)

    def _offer(self, packet: bytes) -> None:
        try:
            self.producer.publish_record(decode_record(packet))
        except WireError as exc:
            self.malformed += 1
            log.warning("oona sidecar: dropped a malformed record packet: %s", exc)

    async def _control(self, packet: bytes) -> bool:
        """Handle a request; True once a stop request has been answered."""
        try:
            _, request = decode_message(packet)
        except WireError as exc:
            self.malformed += 1
            log.warning("oona sidecar: ignored a malformed control packet: %s", exc)
            return False
        if request["op"] == "stop":
            await self.producer.stop(float(request.get("timeout", 5.0)))
            await self._reply(request, True)
            return True
        # Flushes and connection waits take a while: records keep flowing meanwhile.
        task = asyncio.create_task(self._answer(request))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)
        return False

    async def _answer(self, request: dict) -> None:
        timeout = float(request.get("timeout", 5.0))
        if request["op"] == "flush":
            ok = await self.producer.flush(timeout)
        else:
            ok = await self.producer.wait_connected(timeout)
        await self._reply(request, ok)

    async def _reply(self, request: dict, ok: bool) -> None:
        await self._send(self._stats_packet(id=request["id"], ok=ok))

    async def _report_stats(self) -> None:
        last = None
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            packet = self._stats_packet()
            if packet != last:
                with contextlib.suppress(BlockingIOError):  # the reader is busy: next time
                    self.sock.send(packet)
                    last = packet

    def _stats_packet(self, **extra: object) -> bytes:
        stats = dataclasses.asdict(self.producer.stats())
        return encode_message(STATS, {**stats, "malformed": self.malformed, **extra})

    async def _send(self, packet: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, packet)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="esper.oona.sidecar_process")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--client-id", default="esper")
    parser.add_argument("--queue-capacity", type=int, default=DEFAULT_QUEUE_CAPACITY)
    parser.add_argument("--log-level", default=os.environ.get("ESPER_LOG_LEVEL", "WARNING"))
    args = parser.parse_args(argv)
    configure_logging("text", args.log_level)
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(False)

    async def run() -> None:
        producer = OonaProducer(args.bootstrap, client_id=args.client_id,
                                queue_capacity=args.queue_capacity, linger_s=LINGER_S,
                                wake_at=DEFAULT_BATCH_MAX // 2)
        await Sidecar(sock, producer).serve()

    try:
        asyncio.run(run())
    except (ConnectionError, BrokenPipeError) as exc:  # the training process vanished
        log.info("oona sidecar: %s", exc)
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
