"""`python -m esper.runtime.healthcheck HOST:PORT [SERVICE]`: exit 0 when the server's
standard gRPC health check answers SERVING (used by container health checks)."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from esper.rpc.channels import open_channel

TIMEOUT_S = 3.0


def check(address: str, service: str = "", timeout: float = TIMEOUT_S) -> str:
    """The health status name ("SERVING", "NOT_SERVING"…) or "UNREACHABLE"."""
    with open_channel(address, aio=False) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print("usage: python -m esper.runtime.healthcheck HOST:PORT [SERVICE]", file=sys.stderr)
        return 2
    status = check(*args)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
