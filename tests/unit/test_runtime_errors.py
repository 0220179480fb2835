"""The one error -> status mapping (esper.runtime.errors): every domain error answers its
code with its message (naming the field), foreign exceptions go through the service's
translation, and anything else is logged and answered INTERNAL without its details."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from esper.runtime import errors


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self) -> None:
        self.status: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code, message):
        self.status = (code, message)
        raise _Aborted


class _Servicer:
    # Looks like a generated base class to serves_errors.
    pass


_Servicer.__name__ = "ThingServiceServicer"
_Servicer.__module__ = "esper.leyline.v1.thing_pb2_grpc"
_Servicer.Get = lambda self, request, context: None  # type: ignore[attr-defined]
_Servicer.Watch = lambda self, request, context: None  # type: ignore[attr-defined]


class Refused(Exception):
    pass


seen: list[tuple[str, grpc.StatusCode]] = []


@errors.serves_errors(
    translate=lambda exc: errors.Unavailable(f"db: {exc}") if isinstance(exc, Refused) else None,
    observe=lambda rpc, error: seen.append((rpc, error.code)))
class Thing(_Servicer):
    async def Get(self, request, context):
        raise request

    async def Watch(self, request, context):
        yield 1
        raise request

    async def helper(self, request, context):  # not an RPC: left alone
        raise request


def _call(method, exc):
    context = _Context()

    async def run():
        result = method(Thing(), exc, context)
        if hasattr(result, "__anext__"):
            async for _ in result:
                pass
        else:
            await result

    with pytest.raises(_Aborted):
        asyncio.run(run())
    return context.status


@pytest.mark.parametrize("error,code", [
    (errors.InvalidArgument("page_token", "malformed"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound("run_id: no run 'x'"), grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists("name: taken"), grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition("state: retired"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted("quota"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.PermissionDenied("no"), grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unavailable("postgres: down"), grpc.StatusCode.UNAVAILABLE),
    (errors.DataLoss("digest"), grpc.StatusCode.DATA_LOSS),
    (errors.Aborted("superseded"), grpc.StatusCode.ABORTED),
    (errors.StatusError(grpc.StatusCode.OUT_OF_RANGE, "Urza: far"), grpc.StatusCode.OUT_OF_RANGE),
])
def test_domain_errors_answer_their_status_and_message(error, code) -> None:
    for method in (Thing.Get, Thing.Watch):
        assert _call(method, error) == (code, str(error))
    assert str(errors.InvalidArgument("page_token", "malformed")) == "page_token: malformed"


def test_a_service_subclass_keeps_its_base_status() -> None:
    class JobNotFound(errors.NotFound):
        pass

    assert _call(Thing.Get, JobNotFound("job_id: no job j-1")) == (grpc.StatusCode.NOT_FOUND, "job_id: no job j-1")


def test_foreign_exceptions_are_translated_and_observed() -> None:
    seen.clear()
    assert _call(Thing.Get, Refused("gone")) == (grpc.StatusCode.UNAVAILABLE, "db: gone")
    assert seen == [("Get", grpc.StatusCode.UNAVAILABLE)]


def test_anything_else_is_logged_and_answered_internal_without_details(caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="esper.runtime.errors"):
        status = _call(Thing.Watch, KeyError("secret internals /etc/passwd"))
    assert status == (grpc.StatusCode.INTERNAL, errors.INTERNAL_MESSAGE)
    assert "secret" not in status[1]
    assert "Watch failed unexpectedly" in caplog.text and "secret internals" in caplog.text


def test_only_rpcs_are_wrapped() -> None:
    assert getattr(Thing.Get, "maps_errors", False) and getattr(Thing.Watch, "maps_errors", False)
    assert not getattr(Thing.helper, "maps_errors", False)
