"""Prometheus metrics: RPC counts and latencies by method and status (recorded by
esper.runtime.interceptor), and the /metrics HTTP endpoint. Every part registers its
metrics in prometheus_client's process-wide REGISTRY (the one registry per process: Oona's
producer and consumer, which also run in the training process, use it without depending on
the servers' runtime)."""

from __future__ import annotations

import time
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


def status_name(context: Any) -> str:
    """The status an RPC ended with, as its name ("OK" when the handler set none)."""
    code = context.code() if hasattr(context, "code") else None
    return code.name if isinstance(code, grpc.StatusCode) else "OK" if code in (None, 0) else str(code)


class RpcMetrics:
    """One method's count and time. The labelled children are looked up once (a label
    lookup hashes and locks on every call), when the method is first served."""

    def __init__(self, method: str) -> None:
        self.service, self.method = _split(method)
        self._seconds = RPC_SECONDS.labels(self.service, self.method)
        self._totals: dict[str, Any] = {}

    def record(self, start: float, code: str) -> None:
        total = self._totals.get(code)
        if total is None:  # a handful of codes per method: the dict stays small
            total = self._totals[code] = RPC_TOTAL.labels(self.service, self.method, code)
        total.inc()
        self._seconds.observe(time.perf_counter() - start)
