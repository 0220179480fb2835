"""The local stack without Docker: PostgreSQL, the broker, the object store and the four
Esper servers on loopback under one state directory (`esper up`, `esper down`,
`esper status`)."""

from esper.runtime.stack.lifecycle import (
    HEALTHY,
    STOPPED,
    UNHEALTHY,
    ComponentStatus,
    UpResult,
    down,
    status,
    up,
)
from esper.runtime.stack.table import format_table

__all__ = [
    "HEALTHY",
    "STOPPED",
    "UNHEALTHY",
    "ComponentStatus",
    "UpResult",
    "down",
    "format_table",
    "status",
    "up",
]
