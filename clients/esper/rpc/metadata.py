"""Call metadata every channel adds: the bearer token (`authorization: Bearer …`), for
blocking and asyncio channels alike; and the initial metadata with which Urza accepts an
upload's metadata before its bytes (`UPLOAD_ACCEPTED`, shared by server and client)."""

from __future__ import annotations

import collections

import grpc

AUTHORIZATION = "authorization"
# UploadKernel's initial metadata: the artifact's metadata passed, the bytes may follow.
UPLOAD_ACCEPTED = ("x-esper-upload", "accepted")


def bearer(token: str) -> tuple[str, str]:
    return (AUTHORIZATION, f"Bearer {token}")


class _Details(collections.namedtuple(
        "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                     "compression")), grpc.ClientCallDetails):
    """A blocking call's details with our metadata added."""


class TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                       grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the bearer token to every call of a blocking channel."""

    def __init__(self, token: str) -> None:
        self._header = bearer(token)

    def _details(self, details: grpc.ClientCallDetails) -> _Details:
        metadata = [*(details.metadata or ()), self._header]
        return _Details(details.method, details.timeout, metadata, details.credentials,
                        getattr(details, "wait_for_ready", None),
                        getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


class AioTokenInterceptor(grpc.aio.UnaryUnaryClientInterceptor,
                          grpc.aio.UnaryStreamClientInterceptor,
                          grpc.aio.StreamUnaryClientInterceptor,
                          grpc.aio.StreamStreamClientInterceptor):
    """Adds the bearer token to every call of an asyncio channel."""

    def __init__(self, token: str) -> None:
        self._header = bearer(token)

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(*self._header)
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


def aio_token_interceptors(token: str | None) -> list[AioTokenInterceptor]:
    return [AioTokenInterceptor(token)] if token else []
