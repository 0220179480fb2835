"""Domain errors of Urza: subclasses of the runtime's shared errors, so the one mapping in
`esper.runtime.errors` answers each with its gRPC status; the message names the offending
field or dependency so a client knows what to fix."""

from __future__ import annotations

from esper.runtime import errors


class UrzaError(errors.ServiceError):
    """Base of Urza's domain errors."""


class InvalidArgument(errors.InvalidArgument, UrzaError):
    """A request field is malformed; the message starts with the field's name."""


class NotFound(errors.NotFound, UrzaError):
    """The named blueprint or kernel does not exist."""


class AlreadyExists(errors.AlreadyExists, UrzaError):
    """A different record already holds this name@version (or kernel id)."""


class FailedPrecondition(errors.FailedPrecondition, UrzaError):
    """The request is well formed but the record's state forbids it."""


class ResourceExhausted(errors.ResourceExhausted, UrzaError):
    """A request exceeds one of Urza's limits (e.g. the largest kernel it stores)."""


class Unavailable(errors.Unavailable, UrzaError):
    """A dependency (PostgreSQL, the object store) cannot be reached right now."""


class DataLoss(errors.DataLoss, UrzaError):
    """Stored bytes do not match their recorded digest or size."""
