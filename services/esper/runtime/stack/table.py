"""The endpoint table `esper up` and `esper status` print."""

from __future__ import annotations

from collections.abc import Sequence

from esper.runtime.stack.lifecycle import ComponentStatus

HEADERS = ("component", "address", "pid", "health")


def format_table(statuses: Sequence[ComponentStatus]) -> str:
    rows = [HEADERS] + [
        (s.name, s.address, str(s.pid) if s.pid is not None else "-", s.health) for s in statuses
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
