"""The client layer: how any Esper process — the CLI, a server calling another, the training
process — opens a gRPC channel to an Esper service (`channels.open_channel`), and the
tracing that carries a call's trace context. Light dependencies only (grpcio; OpenTelemetry
when installed), so the training-side library can use it."""
