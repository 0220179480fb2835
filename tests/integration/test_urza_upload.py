"""UploadKernel against real PostgreSQL, the object store and the broker: the golden path
and its idempotence, and hostile streams (wrong digest, wrong size, oversized, empty,
unknown blueprint, a second metadata message, chunks after a refusal). Urza keeps serving,
and nothing it stored is ever anything but the bytes its key names."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from esper.leyline.v1 import kernel_pb2 as kp
from esper.leyline.v1 import urza_pb2, urza_pb2_grpc
from esper.rpc.metadata import UPLOAD_ACCEPTED
from esper.urza.store import key_for
from tests.integration.test_urza import (
    Urza,
    artifact,
    close_urza,
    expect_error,
    open_urza,
    urza_config,
)

pytestmark = pytest.mark.integration

REF = "BP-NORM-LAYER@1.0.0"
# Small enough that an oversized kernel is cheap to make.
MAX_BYTES = 64 * 1024


@pytest.fixture
async def urza(fresh_database, fresh_bucket, kafka_bootstrap) -> AsyncIterator[Urza]:
    started = await open_urza(urza_config(fresh_database, fresh_bucket, kafka_bootstrap,
                                          max_kernel_bytes=MAX_BYTES))
    # A bare channel: these tests drive the stream message by message (call.write), as a
    # hostile client would, with nothing between them and the server.
    channel = grpc.aio.insecure_channel(started.running.address)
    try:
        yield dataclasses.replace(started, stub=urza_pb2_grpc.UrzaServiceStub(channel))
    finally:
        await channel.close()
        await close_urza(started)


def request_stream(kernel: kp.KernelArtifact | None, *chunks: bytes, then: list | None = None):
    messages = [] if kernel is None else [urza_pb2.UploadKernelRequest(kernel=kernel)]
    messages += [urza_pb2.UploadKernelRequest(chunk=c) for c in chunks]
    return messages + (then or [])


async def send(stub: urza_pb2_grpc.UrzaServiceStub, messages: list) -> urza_pb2.UploadKernelResponse:
    """UploadKernel as Esper's client sends it: the first message, the rest only once Urza
    accepted it (UPLOAD_ACCEPTED in the initial metadata). A refusal then has no bytes in
    flight whose failed send the asyncio client would report as INTERNAL."""
    call = stub.UploadKernel()
    try:
        if messages:
            await call.write(messages[0])
            if len(messages) > 1 and UPLOAD_ACCEPTED in tuple(await call.initial_metadata()):
                for message in messages[1:]:
                    await call.write(message)
        await call.done_writing()
        return await call
    finally:
        call.cancel()


def upload_of(ref: str, data: bytes, urza: Urza, chunk: int = 1000, **fields) -> list:
    kernel = artifact(ref, data, urza.store)
    kernel.ClearField("uri")  # Urza sets its content address
    for name, value in fields.items():
        setattr(kernel, name, value)
    return request_stream(kernel, *(data[i:i + chunk] for i in range(0, len(data), chunk)))


def objects(urza: Urza) -> list[str]:
    return sorted(o.object_name for o in urza.store.client.list_objects(urza.config.s3_bucket,
                                                                        recursive=True))


async def download(urza: Urza, kernel_id: str) -> bytes:
    data = b""
    async for chunk in urza.stub.DownloadKernel(urza_pb2.DownloadKernelRequest(kernel_id=kernel_id)):
        data += chunk.data
    return data


async def kernels(urza: Urza) -> list[kp.KernelArtifact]:
    return list((await urza.stub.ListKernels(urza_pb2.ListKernelsRequest())).kernels)


async def test_upload_stores_verifies_and_registers_once(urza):
    data = uuid.uuid4().bytes * 200  # 3200 bytes in 4 chunks
    digest = hashlib.sha256(data).hexdigest()
    # A client that does not wait for Urza's word (grpcurl, an iterator) uploads as well.
    response = await urza.stub.UploadKernel(iter(upload_of(REF, data, urza)))
    assert response.created
    kernel = response.kernel
    assert kernel.kernel_id == f"k-{digest[:16]}"
    assert kernel.uri == urza.store.uri_for(digest)
    assert kernel.state == kp.KERNEL_STATE_VALID and kernel.size_bytes == len(data)
    assert (await urza.stub.GetKernel(urza_pb2.GetKernelRequest(kernel_id=kernel.kernel_id))).kernel == kernel
    assert await download(urza, kernel.kernel_id) == data
    # Idempotent on the digest: same artifact, not created again, one object.
    again = await send(urza.stub, upload_of(REF, data, urza, chunk=len(data)))
    assert not again.created and again.kernel == kernel
    assert objects(urza) == [key_for(digest)]
    # An explicit uri is accepted when it is the content address, refused otherwise.
    explicit = upload_of(REF, data, urza, uri=urza.store.uri_for(digest))
    assert not (await send(urza.stub, explicit)).created
    await expect_error(send(urza.stub, upload_of(REF, data, urza, uri="s3://elsewhere/x")),
                       grpc.StatusCode.INVALID_ARGUMENT, "kernel.uri")


async def test_mismatched_bytes_are_refused_naming_the_field_and_never_stored(urza):
    good = uuid.uuid4().bytes * 100
    stored = (await send(urza.stub, upload_of(REF, good, urza))).kernel
    before = objects(urza)
    other = uuid.uuid4().bytes * 100
    # Bytes of the right size that hash to something else, claiming the stored kernel's digest.
    liar = upload_of(REF, other, urza, sha256=stored.sha256, kernel_id=stored.kernel_id)
    await expect_error(send(urza.stub, liar), grpc.StatusCode.INVALID_ARGUMENT,
                       "kernel.sha256", hashlib.sha256(other).hexdigest())
    # Fewer bytes than declared, and more.
    short = upload_of(REF, good, urza)[:-1]
    await expect_error(send(urza.stub, short), grpc.StatusCode.INVALID_ARGUMENT,
                       "kernel.size_bytes", f"{len(good)} declared")
    long = upload_of(REF, good, urza) + [urza_pb2.UploadKernelRequest(chunk=b"x")]
    await expect_error(send(urza.stub, long), grpc.StatusCode.INVALID_ARGUMENT,
                       "kernel.size_bytes", "more bytes arrived")
    fresh = uuid.uuid4().bytes * 10
    await expect_error(send(urza.stub, upload_of(REF, fresh, urza, size_bytes=len(fresh) + 1)),
                       grpc.StatusCode.INVALID_ARGUMENT, "kernel.size_bytes")
    # Nothing was stored by any of them, and the stored kernel is intact.
    assert objects(urza) == before
    assert [k.kernel_id for k in await kernels(urza)] == [stored.kernel_id]
    assert await download(urza, stored.kernel_id) == good


async def test_oversized_empty_and_malformed_streams_are_refused(urza):
    big = b"\0" * (MAX_BYTES + 1)
    await expect_error(send(urza.stub, upload_of(REF, big, urza, chunk=MAX_BYTES)),
                       grpc.StatusCode.RESOURCE_EXHAUSTED, "kernel.size_bytes", "max_kernel_bytes")
    # No message at all; a chunk first; zero declared bytes; an empty chunk; metadata twice.
    await expect_error(send(urza.stub, []), grpc.StatusCode.INVALID_ARGUMENT, "kernel")
    await expect_error(send(urza.stub, request_stream(None, b"abc")),
                       grpc.StatusCode.INVALID_ARGUMENT, "kernel")
    empty = artifact(REF, b"", urza.store)
    await expect_error(send(urza.stub, request_stream(empty)),
                       grpc.StatusCode.INVALID_ARGUMENT, "kernel.size_bytes")
    data = uuid.uuid4().bytes
    await expect_error(send(urza.stub, upload_of(REF, data, urza) + request_stream(None, b"")),
                       grpc.StatusCode.INVALID_ARGUMENT, "chunk")
    twice = upload_of(REF, data, urza)
    await expect_error(send(urza.stub, twice[:1] + twice),
                       grpc.StatusCode.INVALID_ARGUMENT, "kernel")
    await expect_error(send(urza.stub, upload_of(REF, data, urza, sha256="nope")),
                       grpc.StatusCode.INVALID_ARGUMENT, "kernel.sha256")
    await expect_error(send(urza.stub, upload_of("BP-NOPE@1.0.0", data, urza)),
                       grpc.StatusCode.NOT_FOUND, "kernel.blueprint_ref")
    failed = artifact(REF, data, urza.store)
    failed.validation.passed = False
    await expect_error(send(urza.stub, request_stream(failed, data)),
                       grpc.StatusCode.FAILED_PRECONDITION, "validation.passed")
    assert objects(urza) == [] and await kernels(urza) == []


async def test_chunks_after_a_refusal_are_dropped_and_urza_keeps_serving(urza):
    """A client that keeps writing after Urza refused its stream: the writes fail on the
    client, nothing is stored, and the next uploads (and other RPCs) are served."""
    data = uuid.uuid4().bytes * 64
    kernel = artifact("BP-NOPE@1.0.0", data, urza.store)
    call = urza.stub.UploadKernel()
    await call.write(urza_pb2.UploadKernelRequest(kernel=kernel))
    assert await call.code() == grpc.StatusCode.NOT_FOUND  # refused on the metadata alone
    assert "kernel.blueprint_ref" in await call.details()
    with pytest.raises((grpc.aio.AioRpcError, asyncio.InvalidStateError)):
        await call.write(urza_pb2.UploadKernelRequest(chunk=data))
    # A client flooding chunks while the refusal is on its way: its writes or the call fail
    # (how depends on the race), and Urza goes on.
    flood = urza.stub.UploadKernel()
    await flood.write(urza_pb2.UploadKernelRequest(kernel=kernel))
    with pytest.raises((grpc.aio.AioRpcError, asyncio.InvalidStateError)):
        for _ in range(1000):
            await flood.write(urza_pb2.UploadKernelRequest(chunk=b"\1" * 1024))
        await flood.done_writing()
        await flood
    # Several concurrent hostile streams, then good ones: all answered, none stored.
    digest_lie = upload_of(REF, data, urza, sha256=hashlib.sha256(b"other").hexdigest())
    results = await asyncio.gather(*(send(urza.stub, digest_lie) for _ in range(4)),
                                   return_exceptions=True)
    assert all(isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.INVALID_ARGUMENT
               for r in results)
    assert objects(urza) == []
    good = await send(urza.stub, upload_of(REF, data, urza))
    assert good.created and await download(urza, good.kernel.kernel_id) == data


async def test_a_stalled_upload_is_abandoned_and_nothing_is_stored(urza, monkeypatch):
    from esper.urza import upload

    monkeypatch.setattr(upload, "UPLOAD_IDLE_S", 0.5)  # the server runs in this process
    data = uuid.uuid4().bytes * 64
    stalled = urza.stub.UploadKernel()
    messages = upload_of(REF, data, urza)
    await stalled.write(messages[0])
    await stalled.write(messages[1])  # then silence
    assert await asyncio.wait_for(stalled.code(), 10) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no message" in await stalled.details()
    assert objects(urza) == []
    assert (await send(urza.stub, messages)).created


async def test_urza_accepts_the_metadata_before_the_bytes_and_the_client_waits_for_it(urza, monkeypatch):
    """Urza's word (UPLOAD_ACCEPTED in the initial metadata) comes once the metadata passed,
    before any byte is read, and never with a refusal. Esper's client sends bytes only after
    it, so every refusal reaches the caller as the server's own status, never INTERNAL."""
    from esper.rpc import clients
    from esper.rpc.errors import ServiceError

    data = uuid.uuid4().bytes * 256  # 4 KiB
    accepted = urza.stub.UploadKernel()
    await accepted.write(upload_of(REF, data, urza)[0])
    assert UPLOAD_ACCEPTED in tuple(await accepted.initial_metadata())
    accepted.cancel()
    refused = urza.stub.UploadKernel()
    await refused.write(upload_of(REF, data, urza, uri="s3://elsewhere/x")[0])
    assert UPLOAD_ACCEPTED not in tuple(await refused.initial_metadata())
    assert await refused.code() == grpc.StatusCode.INVALID_ARGUMENT

    monkeypatch.setattr(clients, "KERNEL_CHUNK_BYTES", 256)  # many chunks that could race a refusal
    elsewhere = artifact(REF, data, urza.store)
    elsewhere.uri = "s3://elsewhere/x"
    too_big = b"\1" * (MAX_BYTES + 1)
    refusals = [(elsewhere, data, grpc.StatusCode.INVALID_ARGUMENT, "kernel.uri"),
                (artifact("BP-NOPE@1.0.0", data, urza.store), data, grpc.StatusCode.NOT_FOUND,
                 "kernel.blueprint_ref"),
                (artifact(REF, too_big, urza.store), too_big, grpc.StatusCode.RESOURCE_EXHAUSTED,
                 "max_kernel_bytes")]
    for _ in range(5):
        for kernel, payload, code, field in refusals:
            with pytest.raises(ServiceError) as info:
                await urza.client.upload_kernel(kernel, payload)
            assert info.value.code == code and field in info.value.details, info.value
    liar = artifact(REF, data, urza.store)
    with pytest.raises(ServiceError) as info:  # refused at the end, once the bytes hashed
        await urza.client.upload_kernel(liar, uuid.uuid4().bytes * 256)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "kernel.sha256" in info.value.details
    assert objects(urza) == []
    kernel, created = await urza.client.upload_kernel(artifact(REF, data, urza.store), data)
    assert created and await download(urza, kernel.kernel_id) == data
