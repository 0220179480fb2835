"""OpenTelemetry for clients: a tracer provider per process and the gRPC client interceptors
that carry the current trace context. Both are no-ops where OpenTelemetry's SDK or its gRPC
instrumentation is not installed (the light client install), so tracing is never a reason
for a call to fail."""

from __future__ import annotations

from collections.abc import Sequence

_configured = False


def configure_tracing(service: str, exporter: str, otlp_endpoint: str) -> None:
    """Install the global tracer provider once. "none" still creates real spans (so trace
    context propagates through gRPC and Kafka) but exports them nowhere."""
    global _configured
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        return  # no SDK: spans stay non-recording, nothing to export
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


def client_interceptors() -> Sequence[object]:
    """Interceptors for grpc.aio channels so calls carry the current trace context, for
    calls with a single request only: OpenTelemetry's interceptors for client-streaming
    calls wait on a request iterator, so a call fed with `call.write()` (no iterator) hung
    until its deadline. Client-streaming calls (Tamiyo's Session, Urza's UploadKernel)
    therefore carry no trace context; their events carry their own through Kafka."""
    try:
        import grpc
        from opentelemetry.instrumentation.grpc import aio_client_interceptors
    except ImportError:
        return []
    streaming = (grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor)
    return [i for i in aio_client_interceptors() if not isinstance(i, streaming)]


class _NoSpan:
    """A span context manager that records nothing (OpenTelemetry not installed)."""

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _NoTracer:
    def start_as_current_span(self, name: str, **kwargs: object) -> _NoSpan:
        return _NoSpan()


def spans_recorded() -> bool:
    """Whether spans are recorded in this process (a tracer provider other than
    OpenTelemetry's proxy or no-op one is installed, by configure_tracing or by the
    application). Without one a span records nothing and carries no trace context, so a
    hot path may skip opening it: a no-op span still costs ~20 us."""
    try:
        from opentelemetry import trace
    except ImportError:
        return False
    return not isinstance(trace.get_tracer_provider(),
                          (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def get_tracer(name: str):
    """OpenTelemetry's tracer for `name`, or one that records nothing where the
    OpenTelemetry API is not installed."""
    try:
        from opentelemetry import trace
    except ImportError:
        return _NoTracer()
    return trace.get_tracer(name)
