"""Domain errors every server shares; each service's servicer maps them to a gRPC status."""

from __future__ import annotations


class FieldError(Exception):
    """A request field is malformed: `field` names it in proto terms, and the message starts
    with it so a client knows what to fix."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
