"""The one server interceptor every Esper server runs. Around each handler, in this order:

1. a SERVER span continuing the caller's trace (esper.runtime.tracing);
2. the RPC's count by status and its time (esper.runtime.metrics);
3. who is calling and whether they may (esper.runtime.auth);
4. requests that decode and are within the limits (esper.runtime.requests).

One wrapper rather than one interceptor per concern: each interceptor rebuilt the handler
on every call and put another async-generator hop in front of every message of a stream
(and OpenTelemetry's a proxy in front of every call on the context). What depends only on
the method (its wrapped handler, metric children, span attributes, request type) is built
the first time the method is served and kept.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

import grpc

from esper.runtime.auth import AuthPolicy, admit
from esper.runtime.metrics import RpcMetrics, status_name
from esper.runtime.requests import RequestChecks, request_type_name, safe_deserializer
from esper.runtime.tracing import ServerSpans


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, policy: AuthPolicy, checks: RequestChecks | None = None) -> None:
        self.policy = policy
        self.checks = checks or RequestChecks()
        # Registered methods only (an unknown name gets no handler and is not kept).
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        wrapped = self._handlers.get(details.method)
        if wrapped is None:
            handler = await continuation(details)
            if handler is None:
                return None
            wrapped = self._handlers[details.method] = _Method(details.method, self).wrap(handler)
        return wrapped


class _Method:
    """Everything one method's calls share."""

    def __init__(self, method: str, interceptor: ServerInterceptor) -> None:
        self.method = method
        self.policy, self.checks = interceptor.policy, interceptor.checks
        self.metrics = RpcMetrics(method)
        self.spans = ServerSpans(method)

    def wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        # Undecodable bytes become `Undecodable`, refused below, instead of gRPC's UNKNOWN.
        parse = safe_deserializer(handler.request_deserializer,
                                  request_type_name(handler.request_deserializer, self.method))
        streaming = handler.request_streaming
        if handler.unary_unary or handler.stream_unary:
            make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
            behavior = self._unary(handler.unary_unary or handler.stream_unary, streaming)
        else:
            make = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
            behavior = self._stream(handler.unary_stream or handler.stream_stream, streaming)
        return make(behavior, parse, handler.response_serializer)

    async def _admit(self, request: Any, context, streaming: bool) -> Any:
        """The request (or request stream) the handler gets; aborts a refused call."""
        refused = admit(self.policy, self.method, context)
        if refused is not None:
            await context.abort(refused.code, str(refused))
        if streaming:  # each message checked as it is read; its limits are the servicer's
            return self.checks.checked(request, self.method, context)
        refusal = self.checks.refusal(request, self.method, context, limits=True)
        if refusal is not None:
            await context.abort(refusal.code, refusal.message)
        return request

    def _unary(self, inner: Callable, streaming: bool):
        async def unary(request, context):
            start, span = time.perf_counter(), self.spans.start(context)
            try:
                result = inner(await self._admit(request, context, streaming), context)
                return await result if inspect.isawaitable(result) else result
            finally:
                self._finish(span, start, context)
        return unary

    def _stream(self, inner: Callable, streaming: bool):
        async def stream(request, context):
            start, span = time.perf_counter(), self.spans.start(context)
            try:
                responses = inner(await self._admit(request, context, streaming), context)
                # The one place a handler's responses are relayed, whether it is an async
                # or a plain generator.
                if hasattr(responses, "__aiter__"):
                    async for response in responses:
                        yield response
                else:
                    for response in responses:
                        yield response
            finally:
                self._finish(span, start, context)
        return stream

    def _finish(self, span, start: float, context) -> None:
        code = status_name(context)
        self.metrics.record(start, code)
        self.spans.finish(span, code)
