"""The standard gRPC health check (`grpc.health.v1.Health/Check`) of an Esper server, as one
blocking call: probes run from synchronous code (the local stack, container health checks),
sometimes on a thread whose event loop is running, so this uses a blocking channel from
`open_channel`. Needs grpcio-health-checking (`esper[server]`)."""

from __future__ import annotations

import grpc

from esper.rpc.channels import ChannelSecurity, open_channel

TIMEOUT_S = 3.0
UNREACHABLE = "UNREACHABLE"


def check_health(address: str, service: str = "", *, timeout_s: float = TIMEOUT_S,
                 security: ChannelSecurity | None = None) -> str:
    """The status name ("SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"…) of `service` ("" is
    the whole server), or "UNREACHABLE" when no answer came."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with open_channel(address, security=security, aio=False) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return UNREACHABLE
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
