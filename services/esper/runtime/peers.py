"""Who a per-client limit counts against (concurrent Session streams, log lines about bad
requests): the caller's identity when the auth interceptor (esper.runtime.auth) proved one,
else the peer's host — not host:port, since a client that reconnects gets a new port but
is the same client.
"""

from __future__ import annotations

import grpc

from esper.runtime.auth import ANONYMOUS, caller


def peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5555' -> 'ipv4:127.0.0.1'; 'ipv6:[::1]:5555' -> 'ipv6:[::1]';
    anything else (unix sockets, unknown) as it is."""
    scheme, sep, rest = peer.partition(":")
    if not sep or scheme not in ("ipv4", "ipv6"):
        return peer
    host, colon, port = rest.rpartition(":")
    return f"{scheme}:{host}" if colon and port.isdigit() else peer


def client_key(context: grpc.aio.ServicerContext) -> str:
    identity = caller()
    if identity != ANONYMOUS:
        return f"identity:{identity}"
    return f"peer:{peer_host(context.peer() or 'unknown')}"
