"""OpenTelemetry tracing: a tracer provider per process, gRPC interceptors both ways."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

_configured = False


def configure_tracing(service: str, exporter: str, otlp_endpoint: str) -> None:
    """Install the global tracer provider once. "none" still creates real spans (so trace
    context propagates through gRPC and Kafka) but exports them nowhere."""
    global _configured
    if _configured or isinstance(trace.get_tracer_provider(), TracerProvider):
        return  # ours already, or the application installed its own SDK provider: keep it
    provider = TracerProvider(resource=Resource.create({"service.name": f"esper-{service}"}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    trace.set_tracer_provider(provider)
    _configured = True


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    return [aio_server_interceptor()]


def client_interceptors() -> Sequence[grpc.aio.ClientInterceptor]:
    """Interceptors for grpc.aio channels so calls carry the current trace context."""
    return aio_client_interceptors()


def insecure_channel(address: str, **kwargs) -> grpc.aio.Channel:
    """A traced loopback/cluster channel to another Esper service."""
    return grpc.aio.insecure_channel(address, interceptors=client_interceptors(), **kwargs)
