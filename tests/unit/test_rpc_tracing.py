"""esper.rpc.tracing: a hot path skips spans only where none would be recorded."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from esper.rpc import tracing


@pytest.mark.parametrize(("provider", "recorded"), [
    (trace.ProxyTracerProvider(), False),  # none installed yet
    (trace.NoOpTracerProvider(), False),
    (TracerProvider(), True),  # the SDK's: configure_tracing's or the application's
])
def test_spans_recorded_only_under_a_recording_provider(monkeypatch, provider, recorded) -> None:
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    assert tracing.spans_recorded() is recorded
