"""UploadKernel: a kernel's bytes come in over gRPC and are stored only once verified.

The first message of the stream carries the artifact's metadata; it is checked (fields,
the declared size against `max_kernel_bytes`, the blueprint) before any byte is accepted.
The bytes that follow are counted and hashed as they arrive and spooled (in memory up to
`SPOOL_MEMORY_BYTES`, then in a temporary file), never written to the bucket: only when
their count and SHA-256 equal the declared `size_bytes` and `sha256` are they stored under
their content address, and the kernel registered. A refused upload leaves nothing behind,
and since the key is the digest of bytes Urza hashed itself, an object in the bucket is
never anything but the bytes its key names. The same kernel uploaded twice stores the same
object and registers it once (`created` false the second time).

Once the metadata passes, Urza sends initial metadata `x-esper-upload: accepted` before it
reads a byte; a refusal of the metadata ends the call without it. A client waits for that
word before it sends the bytes (`UrzaClient.upload_kernel` does): a refused upload then never
has bytes in flight, whose failed send gRPC's asyncio client would report as INTERNAL in
place of the server's status, and a large kernel is not streamed only to be refused.

A client that stops sending for `UPLOAD_IDLE_S` gets DEADLINE_EXCEEDED (nothing stored), and
at most `MAX_CONCURRENT_UPLOADS` uploads receive bytes at once (more wait their turn), so
stalled or many clients cannot hold Urza's memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

from esper.leyline.v1 import kernel_pb2 as kp
from esper.leyline.v1 import urza_pb2
from esper.runtime.errors import DeadlineExceeded
from esper.runtime.limits import check_message
from esper.urza import validate
from esper.urza.errors import InvalidArgument, ResourceExhausted
from esper.urza.kernels import MAX_KERNEL_BYTES, KernelRegistry, check_kernel
from esper.urza.metrics import KERNEL_BYTES_UPLOADED

# The largest kernel Urza stores by default (`max_kernel_bytes`): seeds are small.
DEFAULT_MAX_KERNEL_BYTES = 256 * 1024 * 1024
# An upload is held in memory up to this size, beyond it in a temporary file.
SPOOL_MEMORY_BYTES = 8 * 1024 * 1024
# Seconds Urza waits for the next message of an upload before giving up on it.
UPLOAD_IDLE_S = 30.0
# Uploads receiving bytes at once (each may hold SPOOL_MEMORY_BYTES); the others wait.
MAX_CONCURRENT_UPLOADS = 8


async def _next(messages: AsyncIterator, idle_s: float):
    """The stream's next message (None at its end); DeadlineExceeded after `idle_s` of silence."""
    try:
        return await asyncio.wait_for(anext(messages, None), idle_s)
    except TimeoutError:
        raise DeadlineExceeded(f"no message for {idle_s:g}s; upload abandoned, nothing stored") from None


async def upload(registry: KernelRegistry, requests: AsyncIterable[urza_pb2.UploadKernelRequest],
                 max_bytes: int = DEFAULT_MAX_KERNEL_BYTES, *, slots: asyncio.Semaphore | None = None,
                 idle_s: float = UPLOAD_IDLE_S,
                 accept: Callable[[], Awaitable[None]] | None = None) -> tuple[kp.KernelArtifact, bool]:
    """Receive, verify, store and register one kernel; (the stored artifact, created).
    `slots` bounds the uploads receiving at once (None: no bound); `accept` is awaited once
    the metadata passed, before any byte is read (the servicer sends UPLOAD_ACCEPTED)."""
    messages = aiter(requests)
    first = await _next(messages, idle_s)
    if first is None or first.WhichOneof("part") != "kernel":
        raise InvalidArgument("kernel", "the first message must carry the artifact's metadata")
    kernel = check_metadata(first.kernel, registry, max_bytes)
    await registry.check_blueprint(kernel)
    if accept is not None:
        await accept()
    if slots is None:
        received = await _receive_and_store(registry, kernel, messages, idle_s)
    else:
        async with slots:
            received = await _receive_and_store(registry, kernel, messages, idle_s)
    KERNEL_BYTES_UPLOADED.inc(received)
    return await registry.register(kernel, bytes_verified=True)


async def _receive_and_store(registry: KernelRegistry, kernel: kp.KernelArtifact,
                             messages: AsyncIterator[urza_pb2.UploadKernelRequest], idle_s: float) -> int:
    """Spool, count and hash the chunks; store them when they are what `kernel` declares."""
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES, prefix="urza-upload-") as spool:
        hasher, received = hashlib.sha256(), 0
        while (message := await _next(messages, idle_s)) is not None:
            if message.WhichOneof("part") != "chunk":
                raise InvalidArgument("kernel", "only the first message carries the metadata; "
                                      "the later ones carry chunks")
            data = message.chunk
            if not data:
                raise InvalidArgument("chunk", "empty; every later message carries bytes")
            received += len(data)
            if received > kernel.size_bytes:
                raise InvalidArgument("kernel.size_bytes", f"{kernel.size_bytes} declared, but more "
                                      "bytes arrived")
            hasher.update(data)
            spool.write(data)
        if received != kernel.size_bytes:
            raise InvalidArgument("kernel.size_bytes", f"{kernel.size_bytes} declared, {received} "
                                  "arrived")
        digest = hasher.hexdigest()
        if digest != kernel.sha256:
            raise InvalidArgument("kernel.sha256", f"{kernel.sha256} declared, the bytes hash to {digest}")
        spool.seek(0)
        await registry.store.put_verified(spool, digest, received)
    return received


def check_metadata(declared: kp.KernelArtifact, registry: KernelRegistry, max_bytes: int
                   ) -> kp.KernelArtifact:
    """The artifact to register: `declared` with Urza's content address as its uri, after
    the same field checks as RegisterKernel; ResourceExhausted beyond `max_bytes`."""
    # A client stream's messages are not held to the request limits by the runtime (esper.runtime.requests).
    check_message(declared, "kernel")
    if declared.size_bytes > max_bytes:
        raise ResourceExhausted(f"kernel.size_bytes: {declared.size_bytes} bytes is more than Urza "
                                f"stores (max_kernel_bytes {max_bytes})")
    if not validate.SHA256_RE.match(declared.sha256):
        raise InvalidArgument("kernel.sha256", "must be 64 lower-case hex digits")
    kernel = kp.KernelArtifact()
    kernel.CopyFrom(declared)
    if not kernel.uri:
        kernel.uri = registry.store.uri_for(kernel.sha256)
    kernel.ClearField("created_at")
    check_kernel(kernel, registry.store)
    return kernel


__all__ = ["DEFAULT_MAX_KERNEL_BYTES", "MAX_CONCURRENT_UPLOADS", "MAX_KERNEL_BYTES", "UPLOAD_IDLE_S",
           "check_metadata", "upload"]
