"""OpenTelemetry on the server side: the interceptor that continues a caller's trace. The
process's tracer provider and the client side are esper.rpc.tracing."""

from __future__ import annotations

import grpc
from opentelemetry.instrumentation.grpc import aio_server_interceptor


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    return [aio_server_interceptor()]
