"""`python -m esper.runtime.healthcheck HOST:PORT [SERVICE]`: exit 0 when the server's
standard gRPC health check answers SERVING (used by container health checks)."""

from __future__ import annotations

import sys

from esper.rpc.health import TIMEOUT_S, check_health


def check(address: str, service: str = "", timeout: float = TIMEOUT_S) -> str:
    """The health status name ("SERVING", "NOT_SERVING"…) or "UNREACHABLE"."""
    return check_health(address, service, timeout_s=timeout)


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
