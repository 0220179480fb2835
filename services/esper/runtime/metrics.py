"""Prometheus metrics: RPC counts and latencies by method and status, and the /metrics HTTP
endpoint. Every part registers its metrics in prometheus_client's process-wide REGISTRY (the
one registry per process: Oona's producer and consumer, which also run in the training
process, use it without depending on the servers' runtime)."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import REGISTRY, Counter, Histogram, start_http_server

RPC_TOTAL = Counter(
    "esper_rpc_total", "RPCs handled, by method and status code",
    ["service", "method", "code"], registry=REGISTRY,
)
RPC_SECONDS = Histogram(
    "esper_rpc_seconds", "RPC handling time (unary: whole call; streams: until the stream ends)",
    ["service", "method"], registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30),
)


def start_metrics_server(host: str, port: int) -> int:
    """Serve /metrics; returns the bound port (port 0 picks a free one)."""
    httpd, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return httpd.server_address[1]


def _split(method: str) -> tuple[str, str]:
    # "/esper.leyline.v1.UrzaService/GetBlueprint" -> ("UrzaService", "GetBlueprint")
    _, service, name = method.split("/", 2) if method.count("/") == 2 else ("", "", method)
    return service.rsplit(".", 1)[-1], name


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC by final status code and times it."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, method = _split(handler_call_details.method)
        return _wrap_handler(handler, service, method)


def _record(service: str, method: str, start: float, context: Any) -> None:
    code = context.code() if hasattr(context, "code") else None
    name = code.name if isinstance(code, grpc.StatusCode) else "OK" if code in (None, 0) else str(code)
    RPC_TOTAL.labels(service, method, name).inc()
    RPC_SECONDS.labels(service, method).observe(time.perf_counter() - start)


async def _aiter(stream: Any):
    """Iterate a handler's result whether it is an async or a plain generator."""
    if hasattr(stream, "__aiter__"):
        async for item in stream:
            yield item
    else:
        for item in stream:
            yield item


def _wrap_handler(handler: grpc.RpcMethodHandler, service: str, method: str) -> grpc.RpcMethodHandler:
    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary_unary(request, context):
            start = time.perf_counter()
            try:
                result = inner(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                _record(service, method, start, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    # Server-streaming and bidirectional handlers differ only in their first argument (a
    # request or the request iterator): one timed generator serves both.
    for inner, make in ((handler.unary_stream, grpc.unary_stream_rpc_method_handler),
                        (handler.stream_stream, grpc.stream_stream_rpc_method_handler)):
        if inner:
            return make(_timed_stream(inner, service, method),
                        handler.request_deserializer, handler.response_serializer)
    return handler


def _timed_stream(inner: Callable[..., Any], service: str, method: str):
    async def stream(request_or_iterator, context):
        start = time.perf_counter()
        try:
            async for item in _aiter(inner(request_or_iterator, context)):
                yield item
        finally:
            _record(service, method, start, context)

    return stream
