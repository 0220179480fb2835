"""esper.rpc.channels against real gRPC servers on loopback: TLS, mutual TLS, bearer tokens,
retries of UNAVAILABLE through the service config, message-size limits, blocking and
asyncio channels."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import trustme

from esper.rpc.channels import ChannelConfigError, ChannelSecurity, open_channel

pytestmark = pytest.mark.integration

METHOD = "/esper.test.Echo/Call"


class Echo:
    """A raw-bytes unary method that records each call's metadata and can fail UNAVAILABLE
    a number of times first."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []
        self.fail_first = 0

    async def call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls.append(dict(context.invocation_metadata() or ()))
        if len(self.calls) <= self.fail_first:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")
        return request

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "esper.test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(self.call)})


async def _serve(echo: Echo, credentials: grpc.ServerCredentials | None = None):
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((echo.handler(),))
    address = "127.0.0.1:0"
    port = (server.add_secure_port(address, credentials) if credentials
            else server.add_insecure_port(address))
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _call(channel, payload: bytes = b"hi", timeout: float = 5.0) -> bytes:
    return await channel.unary_unary(METHOD)(payload, timeout=timeout)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, object]:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "urza.esper.test")
    client_cert = ca.issue_cert("tolaria-client")
    root = tmp_path_factory.mktemp("pki")
    paths = {"ca": root / "ca.pem", "client_cert": root / "client.pem", "client_key": root / "client.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    client_cert.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
    client_cert.private_key_pem.write_to_path(str(paths["client_key"]))
    key = server_cert.private_key_pem.bytes()
    chain = b"".join(p.bytes() for p in server_cert.cert_chain_pems)
    return {"paths": paths, "key": key, "chain": chain, "ca_pem": ca.cert_pem.bytes()}


async def test_plaintext_channel_sends_the_token_and_retries_unavailable() -> None:
    echo = Echo()
    server, address = await _serve(echo)
    try:
        async with open_channel(address, security=ChannelSecurity(token="s3cret")) as channel:
            assert await _call(channel) == b"hi"
            assert echo.calls[-1]["authorization"] == "Bearer s3cret"
            echo.calls.clear()
            echo.fail_first = 2
            assert await _call(channel) == b"hi"  # two UNAVAILABLE answers retried by gRPC
            assert len(echo.calls) == 3
        echo.calls.clear()
        async with open_channel(address, security=ChannelSecurity(), retry_attempts=1) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await _call(channel)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE and len(echo.calls) == 1
            assert "authorization" not in echo.calls[0]
    finally:
        await server.stop(0)


async def test_blocking_channel_sends_the_token() -> None:
    echo = Echo()
    server, address = await _serve(echo)
    try:
        def call() -> bytes:
            with open_channel(address, security=ChannelSecurity(token="t0k"), aio=False) as channel:
                return channel.unary_unary(METHOD)(b"sync", timeout=5)

        assert await asyncio.to_thread(call) == b"sync"
        assert echo.calls[-1]["authorization"] == "Bearer t0k"
    finally:
        await server.stop(0)


async def test_message_size_limit_holds_on_the_client() -> None:
    echo = Echo()
    server, address = await _serve(echo)
    try:
        async with open_channel(address, security=ChannelSecurity(), max_message_bytes=1024) as channel:
            assert await _call(channel, b"x" * 512) == b"x" * 512
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await _call(channel, b"x" * 4096)
            assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await server.stop(0)


async def test_tls_verifies_the_server(pki) -> None:
    echo = Echo()
    creds = grpc.ssl_server_credentials([(pki["key"], pki["chain"])])
    server, address = await _serve(echo, creds)
    paths = pki["paths"]
    try:
        trusted = ChannelSecurity(tls=True, ca_file=str(paths["ca"]), token="over-tls")
        async with open_channel(address, security=trusted) as channel:
            assert await _call(channel) == b"hi"
        assert echo.calls[-1]["authorization"] == "Bearer over-tls"
        # The certificate also names urza.esper.test: checked when given as server_name.
        named = ChannelSecurity(tls=True, ca_file=str(paths["ca"]), server_name="urza.esper.test")
        async with open_channel(address, security=named) as channel:
            assert await _call(channel) == b"hi"
        # The system's roots do not know this CA, and plaintext does not speak TLS.
        for security in (ChannelSecurity(tls=True), ChannelSecurity()):
            async with open_channel(address, security=security, retry_attempts=1) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await _call(channel, timeout=3)
                assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


async def test_mutual_tls_needs_the_client_certificate(pki) -> None:
    echo = Echo()
    creds = grpc.ssl_server_credentials([(pki["key"], pki["chain"])],
                                        root_certificates=pki["ca_pem"],
                                        require_client_auth=True)
    server, address = await _serve(echo, creds)
    paths = pki["paths"]
    try:
        with_cert = ChannelSecurity(tls=True, ca_file=str(paths["ca"]),
                                    cert_file=str(paths["client_cert"]),
                                    key_file=str(paths["client_key"]))
        async with open_channel(address, security=with_cert) as channel:
            assert await _call(channel) == b"hi"
        without = ChannelSecurity(tls=True, ca_file=str(paths["ca"]))
        async with open_channel(address, security=without, retry_attempts=1) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await _call(channel, timeout=3)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


def test_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    cases = [
        (ChannelSecurity(token="x"), "10.1.2.3:50051", "in the clear"),
        (ChannelSecurity(cert_file="c.pem"), "127.0.0.1:1", "both cert_file and key_file"),
        (ChannelSecurity(ca_file="ca.pem"), "127.0.0.1:1", "need tls=True"),
        (ChannelSecurity(token="a\nb"), "127.0.0.1:1", "line break"),
        (ChannelSecurity(tls=True, ca_file=str(tmp_path / "missing.pem")), "h:1", "ca_file: cannot read"),
    ]
    for security, address, words in cases:
        with pytest.raises(ChannelConfigError, match=words):
            open_channel(address, security=security)
    with pytest.raises(ChannelConfigError, match="HOST:PORT"):
        open_channel("nocolon", security=ChannelSecurity())
    open_channel("localhost:1", security=ChannelSecurity(token="x"), aio=False).close()


def test_security_from_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    env = {"ESPER_TLS": "true", "ESPER_TLS_CA": "/ca.pem", "ESPER_TOKEN_FILE": str(token_file),
           "ESPER_TLS_SERVER_NAME": "urza"}
    assert ChannelSecurity.from_env(env) == ChannelSecurity(
        tls=True, ca_file="/ca.pem", server_name="urza", token="from-file")
    assert ChannelSecurity.from_env({}) == ChannelSecurity()
    assert ChannelSecurity.from_env({"ESPER_TOKEN": "t", "ESPER_TOKEN_FILE": "/nope"}).token == "t"


async def test_a_client_stream_fed_with_write_completes() -> None:
    """A client-streaming call written message by message (no request iterator) through
    the factory's interceptors (tracing, token) ends normally."""
    async def count(request_iterator, context) -> bytes:
        total = 0
        async for chunk in request_iterator:
            total += len(chunk)
        return str(total).encode()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "esper.test.Count", {"Call": grpc.stream_unary_rpc_method_handler(count)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        for security in (ChannelSecurity(), ChannelSecurity(token="t")):
            async with open_channel(f"127.0.0.1:{port}", security=security) as channel:
                call = channel.stream_unary("/esper.test.Count/Call")(timeout=10)
                for _ in range(3):
                    await call.write(b"abc")
                await call.done_writing()
                assert await call == b"9"
    finally:
        await server.stop(0)
