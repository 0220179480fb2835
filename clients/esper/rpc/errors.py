"""The one translation of a failed gRPC call: every client in `esper.rpc.clients` raises
`ServiceError`, never `grpc.RpcError`, so callers decide on two facts — which service, and
whether it was there at all (`unreachable`) or answered with a refusal (`code`)."""

from __future__ import annotations

import grpc

# Statuses meaning "the service is not there right now", not "the service refused".
UNREACHABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class ServiceError(Exception):
    """A call to an Esper service failed: `service` ("Urza"…), `address`, the gRPC status
    `code` and the server's `details`. `str()` is "Urza at HOST:PORT: CODE: details"."""

    def __init__(self, service: str, address: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{service} at {address}: {code.name}: {details}")
        self.service = service
        self.address = address
        self.code = code
        self.details = details

    @property
    def unreachable(self) -> bool:
        """True when no answer came (UNAVAILABLE, DEADLINE_EXCEEDED): an outage, worth a
        retry later; False when the service answered with a refusal."""
        return self.code in UNREACHABLE_CODES

    @classmethod
    def from_rpc(cls, service: str, address: str, exc: grpc.RpcError) -> ServiceError:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        details = exc.details() if callable(getattr(exc, "details", None)) else None
        return cls(service, address, code or grpc.StatusCode.UNKNOWN, details or "")
