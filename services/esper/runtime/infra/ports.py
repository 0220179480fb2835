"""Loopback ports: validation, free-port allocation and in-use checks."""

from __future__ import annotations

import socket

from esper.runtime.infra.errors import InfraConfigError, PortInUseError

LOOPBACK = "127.0.0.1"
# Valid TCP port range; 0 means "any" to the kernel and is never a configured port.
MIN_PORT, MAX_PORT = 1, 65535


def validate_port(value: object, what: str) -> int:
    """Return `value` as a port number or raise `InfraConfigError` naming `what`."""
    if isinstance(value, int) and not isinstance(value, bool):
        port = value
    elif isinstance(value, str) and value.strip().isdigit():
        port = int(value.strip())
    else:
        raise InfraConfigError(f"{what}: port must be an integer, got {value!r}")
    if not MIN_PORT <= port <= MAX_PORT:
        raise InfraConfigError(f"{what}: port {port} is out of range ({MIN_PORT}..{MAX_PORT})")
    return port


def free_port(host: str = LOOPBACK) -> int:
    """A port the kernel reports free on `host` right now (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing is bound to `host:port` (checked by binding it briefly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR lets a port in TIME_WAIT count as free, as the servers will reuse it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def ensure_port_free(port: int, what: str, host: str = LOOPBACK) -> None:
    """Raise `PortInUseError` naming `what` when `host:port` is taken."""
    if not port_is_free(port, host):
        raise PortInUseError(f"{what}: port {port} on {host} is already in use by another process")


def tcp_accepts(port: int, host: str = LOOPBACK, timeout_s: float = 0.5) -> bool:
    """True when a TCP connection to `host:port` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
