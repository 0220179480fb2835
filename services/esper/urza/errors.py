"""Domain errors of Urza. Each maps to one gRPC status in the servicer; the message
names the offending field or dependency so a client knows what to fix."""

from __future__ import annotations

from esper.runtime.errors import FieldError


class UrzaError(Exception):
    """Base of Urza's domain errors."""


class InvalidArgument(FieldError, UrzaError):
    """A request field is malformed; the message starts with the field's name."""


class NotFound(UrzaError):
    """The named blueprint or kernel does not exist."""


class AlreadyExists(UrzaError):
    """A different record already holds this name@version (or kernel id)."""


class FailedPrecondition(UrzaError):
    """The request is well formed but the record's state forbids it."""


class Unavailable(UrzaError):
    """A dependency (PostgreSQL, the object store) cannot be reached right now."""


class DataLoss(UrzaError):
    """Stored bytes do not match their recorded digest or size."""
