"""Every request a server receives is decodable and within the limits, or refused with
INVALID_ARGUMENT before a servicer sees it.

gRPC itself answers bytes that do not parse as the request type with UNKNOWN and logs a
traceback per request (a cheap log flood). This interceptor swaps each method's request
deserializer for one that never raises: an undecodable request becomes `Undecodable`, which
the wrapped handler refuses with INVALID_ARGUMENT, logging at most once per client per
minute (a counter counts every one).

Unary and server-streaming requests are also held to esper.runtime.limits (strings, repeated
fields, enum values, integer ranges) here, once for every RPC. The messages of a client
stream pass the limits to the servicer, which decides what a bad one costs (Tamiyo drops it
with a SessionWarning; Urza's upload refuses it).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
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


def _type_name(deserialize: Callable | None, method: str) -> str:
    # Generated stubs register `Message.FromString`; its class names the request type.
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return descriptor.full_name if descriptor is not None else f"request of {method}"


class RequestGuard(grpc.aio.ServerInterceptor):
    """Refuses undecodable and out-of-limits requests with INVALID_ARGUMENT."""

    def __init__(self, limiter: LogLimiter | None = None) -> None:
        self.limiter = limiter or LogLimiter()

    async def intercept_service(self, continuation, handler_call_details: grpc.HandlerCallDetails):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        parse = safe_deserializer(handler.request_deserializer,
                                  _type_name(handler.request_deserializer, method))
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method), parse, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(handler.unary_stream, method), parse, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._stream_unary(handler.stream_unary, method), parse, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._stream_stream(handler.stream_stream, method), parse, handler.response_serializer)

    # -- checks -----------------------------------------------------------------------------

    def _refusal(self, request: Any, method: str, context, *, limits: bool) -> InvalidArgument | None:
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

    def _unary(self, inner, method: str):
        async def unary(request, context):
            refusal = self._refusal(request, method, context, limits=True)
            if refusal is not None:
                await context.abort(refusal.code, refusal.message)
            result = inner(request, context)
            return await result if inspect.isawaitable(result) else result
        return unary

    def _unary_stream(self, inner, method: str):
        async def unary_stream(request, context):
            refusal = self._refusal(request, method, context, limits=True)
            if refusal is not None:
                await context.abort(refusal.code, refusal.message)
            async for response in _responses(inner(request, context)):
                yield response
        return unary_stream

    def _checked(self, requests, method: str, context) -> AsyncIterator[Any]:
        return _CheckedStream(requests, lambda request: self._refusal(request, method, context, limits=False))

    def _stream_unary(self, inner, method: str):
        async def stream_unary(requests, context):
            result = inner(self._checked(requests, method, context), context)
            return await result if inspect.isawaitable(result) else result
        return stream_unary

    def _stream_stream(self, inner, method: str):
        async def stream_stream(requests, context):
            async for response in _responses(inner(self._checked(requests, method, context), context)):
                yield response
        return stream_stream


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


async def _responses(result) -> AsyncIterator[Any]:
    """A server-streaming handler's responses, whether it is an async or a plain generator."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        for item in result:
            yield item
