"""Tezzeret's domain errors: subclasses of the runtime's shared errors where a client sees
them, so the one mapping in `esper.runtime.errors` answers each with its gRPC status."""

from __future__ import annotations

from esper.runtime import errors
from esper.runtime.postgres import CONNECTION_ERRORS


class TezzeretError(errors.ServiceError):
    """Base of Tezzeret's domain errors."""


class InvalidSubmission(errors.InvalidArgument, TezzeretError):
    """A SubmitCompile field is malformed; `field` names it in proto terms."""


class DependencyUnavailable(errors.Unavailable, TezzeretError):
    """PostgreSQL, Urza or the broker cannot be reached right now."""


class ValidationFailed(TezzeretError):
    """A built kernel failed a validation check; `check` is the check's stable name."""

    def __init__(self, check: str, detail: str, report=None) -> None:
        super().__init__(f"validation check {check} failed: {detail}")
        self.check = check
        self.detail = detail
        self.report = report


class JobAbandoned(TezzeretError):
    """The worker no longer holds its job (cancelled, or taken over after its lease)."""


# What a lost or refused database connection looks like from asyncpg.
DB_CONNECTION_ERRORS: tuple[type[BaseException], ...] = CONNECTION_ERRORS
