"""OpenTelemetry on the server side: every RPC is a SERVER span continuing the caller's
trace (the `traceparent` its client interceptor sent, esper.rpc.tracing), named by the full
method as OpenTelemetry's gRPC instrumentation names it, with its status code. The process's
tracer provider and the client side are esper.rpc.tracing.

The span is started by the one server interceptor (esper.runtime.interceptor) rather than
OpenTelemetry's own, which wraps every servicer context in a proxy that every call on the
context (each message written, the peer, the metadata) then goes through."""

from __future__ import annotations

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

_tracer = trace.get_tracer("esper.runtime")


class ServerSpans:
    """The spans of one method: what is known of it is computed once."""

    def __init__(self, method: str) -> None:
        self.name = method
        service, _, name = method.lstrip("/").partition("/")
        self.attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

    def start(self, context: grpc.aio.ServicerContext) -> trace.Span:
        """The span of the call being served, made current for the rest of the call.

        Current without a detach: gRPC runs each call in a task of its own, whose context
        ends with it. A `with` around a streaming handler's yields would detach in whatever
        context closes the generator (another task, when the client goes), which fails and
        left the stream's cleanup half done (tests/integration/hostile/test_tamiyo_bounds)."""
        carrier = {key: value for key, value in context.invocation_metadata() or ()
                   if isinstance(value, str)}
        span = _tracer.start_span(
            self.name, context=propagate.extract(carrier) if carrier else None, kind=SpanKind.SERVER,
            attributes=self.attributes, record_exception=False, set_status_on_exception=False)
        otel_context.attach(trace.set_span_in_context(span))
        return span

    @staticmethod
    def finish(span: trace.Span, code: str) -> None:
        """End the span with the status the call ended with (a name of grpc.StatusCode)."""
        status = getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN)
        span.set_attribute("rpc.grpc.status_code", status.value[0])
        if status is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code))
        span.end()
