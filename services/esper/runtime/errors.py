"""One error -> status mapping for every servicer.

Domain code raises one of the errors below (or a service's subclass of one); `serves_errors`
wraps every RPC of a servicer class and turns them into `context.abort(code, message)`.
The message names what to fix: an `InvalidArgument` always starts with
the request field in proto terms (`"page_token: ..."`). Anything else escaping a handler is
logged with its traceback and answered INTERNAL with a message that leaks nothing of it.

A service converts foreign exceptions (a lost database connection, a dependency's refusal)
with a `translate` hook, and may observe every mapped error (metrics, logs) with `observe`.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import ClassVar

import grpc

log = logging.getLogger("esper.runtime.errors")

INTERNAL_MESSAGE = "internal error; the server logged it"


class ServiceError(Exception):
    """Base of the domain errors a servicer answers with; `code` is the gRPC status."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    @property
    def message(self) -> str:
        return str(self)


class InvalidArgument(ServiceError):
    """A request field is malformed: `field` names it in proto terms, and the message starts
    with it so a client knows what to fix."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why


class NotFound(ServiceError):
    """The named record does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    """A different record already holds this identity."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    """The request is well formed but the record's (or server's) state forbids it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    """A quota or limit is reached; retry later or ask for less."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class PermissionDenied(ServiceError):
    """The caller may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(ServiceError):
    """A dependency (PostgreSQL, the object store, another service) cannot be reached now."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(ServiceError):
    """Stored bytes do not match their recorded digest or size."""

    code = grpc.StatusCode.DATA_LOSS


class Aborted(ServiceError):
    """The operation was overtaken by a concurrent one (a newer session, a lost lease)."""

    code = grpc.StatusCode.ABORTED


class DeadlineExceeded(ServiceError):
    """The server gave up waiting (for the client, or for itself)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class StatusError(ServiceError):
    """An error whose status is decided at run time (a dependency's status passed on)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code  # type: ignore[misc]  # the instance overrides the class default


Translate = Callable[[BaseException], ServiceError | None]
Observe = Callable[[str, ServiceError], None]


def _no_translation(exc: BaseException) -> ServiceError | None:
    return None


def _default_observe(rpc: str, error: ServiceError) -> None:
    if error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.INTERNAL):
        log.warning("%s failed: %s", rpc, error, extra={"rpc": rpc, "code": error.code.name})


def _as_service_error(exc: Exception, rpc: str, translate: Translate) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    translated = translate(exc)
    if translated is not None:
        return translated
    log.error("%s failed unexpectedly", rpc, exc_info=exc, extra={"rpc": rpc, "code": "INTERNAL"})
    return StatusError(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


async def abort(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    """Answer `error`'s status and message (raises, as `context.abort` does)."""
    await context.abort(error.code, error.message)


def handle_errors(method: Callable, *, translate: Translate = _no_translation,
                  observe: Observe = _default_observe) -> Callable:
    """Wrap one handler (coroutine or async generator) so that what it raises becomes a status."""
    rpc = method.__name__

    async def fail(context: grpc.aio.ServicerContext, exc: Exception) -> None:
        error = _as_service_error(exc, rpc, translate)
        observe(rpc, error)
        await abort(context, error)

    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def streaming(self, request, context):
            try:
                async for response in method(self, request, context):
                    yield response
                return
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 — every failure becomes a status
                error = exc
            await fail(context, error)
        streaming.maps_errors = True  # type: ignore[attr-defined]
        return streaming

    @functools.wraps(method)
    async def unary(self, request, context):
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 — every failure becomes a status
            error = exc
        await fail(context, error)
    unary.maps_errors = True  # type: ignore[attr-defined]
    return unary


def serves_errors(*, translate: Translate = _no_translation,
                  observe: Observe = _default_observe) -> Callable[[type], type]:
    """Class decorator: every RPC the servicer defines (the methods its generated base class
    declares) answers domain errors with their status, and anything else with INTERNAL."""

    def decorate(cls: type) -> type:
        rpcs = _rpc_names(cls)
        for name in rpcs:
            method = cls.__dict__.get(name)
            if getattr(method, "maps_errors", False):
                continue  # already wrapped, by handle_errors itself
            if method is not None and (inspect.iscoroutinefunction(method)
                                       or inspect.isasyncgenfunction(method)):
                setattr(cls, name, handle_errors(method, translate=translate, observe=observe))
        return cls

    return decorate


def _rpc_names(cls: type) -> set[str]:
    """The RPC names of a generated `...Servicer` base class among `cls`'s bases."""
    names: set[str] = set()
    for base in cls.__mro__[1:]:
        if base.__name__.endswith("Servicer") and base.__module__.endswith("_pb2_grpc"):
            names.update(n for n, v in vars(base).items() if not n.startswith("_") and callable(v))
    return names


__all__ = [
    "Aborted", "AlreadyExists", "DataLoss", "DeadlineExceeded", "FailedPrecondition",
    "INTERNAL_MESSAGE", "InvalidArgument", "NotFound", "PermissionDenied", "ResourceExhausted",
    "ServiceError", "StatusError", "Unavailable", "abort", "handle_errors", "serves_errors",
]
