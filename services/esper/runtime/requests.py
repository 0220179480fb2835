"""Every request a server receives is decodable and within the limits, or refused with
INVALID_ARGUMENT before a servicer sees it (checked by esper.runtime.interceptor).

gRPC itself answers bytes that do not parse as the request type with UNKNOWN and logs a
traceback per request (a cheap log flood). The interceptor swaps each method's request
deserializer for one that never raises: an undecodable request becomes `Undecodable`, which
the wrapped handler refuses with INVALID_ARGUMENT, logging at most once per client per
minute (a counter counts every one).

Unary and server-streaming requests are also held to esper.runtime.limits (strings, repeated
fields, enum values, integer ranges) here, once for every RPC. The messages of a client
stream pass the limits to the servicer, which decides what a bad one costs (Tamiyo drops it
with a SessionWarning; Urza's upload refuses it).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, Counter

from esper.runtime.errors import InvalidArgument
from esper.runtime.limits import message_problem
from esper.runtime.peers import client_key

log = logging.getLogger("esper.runtime.requests")

REFUSED = Counter("esper_rpc_requests_refused_total",
                  "Requests refused before their handler: undecodable or beyond the limits",
                  ["method", "reason"], registry=REGISTRY)

# One log line per client and this many seconds; clients remembered at most (oldest first out).
LOG_EVERY_S = 60.0
MAX_LOGGED_CLIENTS = 10_000


@dataclass(frozen=True)
class Undecodable:
    """A request whose bytes are not a valid message of `type_name`."""

    type_name: str
    error: str

    def refusal(self) -> InvalidArgument:
        return InvalidArgument("request", f"not a valid {self.type_name} ({self.error})")


class LogLimiter:
    """Says whether to log about a client now: at most once per `every_s` per client."""

    def __init__(self, every_s: float = LOG_EVERY_S, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.clock = every_s, clock
        self._last: OrderedDict[str, float] = OrderedDict()

    def allow(self, client: str) -> bool:
        now = self.clock()
        last = self._last.get(client)
        if last is not None and now - last < self.every_s:
            return False
        self._last[client] = now
        self._last.move_to_end(client)
        while len(self._last) > MAX_LOGGED_CLIENTS:
            self._last.popitem(last=False)
        return True


def safe_deserializer(deserialize: Callable[[bytes], Any] | None, type_name: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        if deserialize is None:
            return data
        try:
            return deserialize(data)
        except Exception as exc:  # noqa: BLE001 — any parse failure is the client's bytes
            return Undecodable(type_name, type(exc).__name__)
    return parse


def request_type_name(deserialize: Callable | None, method: str) -> str:
    """The request type a method's deserializer makes: generated stubs register
    `Message.FromString`, whose class names it."""
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return descriptor.full_name if descriptor is not None else f"request of {method}"


class RequestChecks:
    """Refuses undecodable and out-of-limits requests with INVALID_ARGUMENT; the one server
    interceptor (esper.runtime.interceptor) runs these before every handler."""

    def __init__(self, limiter: LogLimiter | None = None) -> None:
        self.limiter = limiter or LogLimiter()

    def refusal(self, request: Any, method: str, context, *, limits: bool) -> InvalidArgument | None:
        if isinstance(request, Undecodable):
            REFUSED.labels(method, "undecodable").inc()
            client = client_key(context)
            if self.limiter.allow(client):
                log.warning("undecodable request", extra={"rpc": method, "client": client,
                                                          "type": request.type_name, "error": request.error})
            return request.refusal()
        if limits and hasattr(request, "ListFields"):
            problem = message_problem(request)
            if problem is not None:
                REFUSED.labels(method, problem.kind).inc()
                return problem.error()
        return None

    def checked(self, requests, method: str, context) -> AsyncIterator[Any]:
        """A client stream's messages: undecodable ones raise their refusal; the limits are
        the servicer's to apply (see the module's docstring)."""
        return _CheckedStream(requests, lambda request: self.refusal(request, method, context, limits=False))


class _CheckedStream:
    """A client stream's messages; an undecodable one raises its refusal (which the servicer
    maps to INVALID_ARGUMENT). A class, not an async generator: nothing is left for the
    event loop to finalize when gRPC drops a stream mid-read."""

    def __init__(self, requests, refusal: Callable[[Any], InvalidArgument | None]) -> None:
        self._requests = aiter(requests)
        self._refusal = refusal

    def __aiter__(self) -> _CheckedStream:
        return self

    async def __anext__(self) -> Any:
        request = await anext(self._requests)
        refusal = self._refusal(request)
        if refusal is not None:
            raise refusal
        return request

