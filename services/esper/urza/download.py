"""DownloadKernel: stream a kernel's bytes in chunks, verifying the SHA-256 as they go.

The stream reads one chunk ahead, so the final chunk (`last=True`, with the digest) is
only sent once the whole object has hashed to the registered digest. On a mismatch the
kernel is marked INVALID, the change is announced, and the stream ends with DATA_LOSS:
a corrupted object is never served as valid.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator

from esper.leyline.v1 import kernel_pb2 as kp
from esper.leyline.v1 import urza_pb2
from esper.urza import validate
from esper.urza.errors import DataLoss, FailedPrecondition, Unavailable
from esper.urza.kernels import KernelRegistry
from esper.urza.metrics import KERNEL_BYTES_SERVED
from esper.urza.store import ObjectMissing

log = logging.getLogger(__name__)

# Chunk sizes from the proto (0 means the default, larger requests are capped); tiny
# chunks are raised to a floor so a hostile client cannot make a kernel a million messages.
DEFAULT_CHUNK_BYTES = 256 * 1024
MAX_CHUNK_BYTES = 4 * 1024 * 1024
MIN_CHUNK_BYTES = 4 * 1024


def chunk_size(requested: int) -> int:
    if requested == 0:
        return DEFAULT_CHUNK_BYTES
    return max(MIN_CHUNK_BYTES, min(requested, MAX_CHUNK_BYTES))


async def download(registry: KernelRegistry, kernel_id: str, requested_chunk: int
                   ) -> AsyncIterator[urza_pb2.DownloadKernelResponse]:
    validate.kernel_id(kernel_id)
    kernel = await registry.get(kernel_id)
    if kernel.state == kp.KERNEL_STATE_INVALID:
        raise FailedPrecondition(f"kernel_id: {kernel_id} is INVALID ({kernel.state_reason}); "
                                 "it is never served")
    size = chunk_size(requested_chunk)
    try:
        reader = await registry.store.open_reader(kernel.uri)
    except ObjectMissing:
        await _invalidate(registry, kernel, f"object {kernel.uri} is missing from the store")
    try:
        async for response in _chunks(registry, kernel, reader, size):
            yield response
    finally:
        reader.close()


async def _chunks(registry: KernelRegistry, kernel: kp.KernelArtifact, reader, size: int
                  ) -> AsyncIterator[urza_pb2.DownloadKernelResponse]:
    hasher, offset = hashlib.sha256(), 0
    block = await reader.read(size)
    while True:
        hasher.update(block)
        end = offset + len(block)
        if end < kernel.size_bytes:
            following = await reader.read(size)
        else:
            following = b""
            if end > kernel.size_bytes or await reader.read(1):
                await _invalidate(registry, kernel,
                                  f"stored object is larger than the registered {kernel.size_bytes} bytes")
        last = not following
        if last and (end != kernel.size_bytes or hasher.hexdigest() != kernel.sha256):
            await _invalidate(registry, kernel, f"stored bytes hash to {hasher.hexdigest()} ({end} "
                              f"bytes), registered {kernel.sha256} ({kernel.size_bytes} bytes)")
        KERNEL_BYTES_SERVED.inc(len(block))
        yield _response(kernel, offset, block, first=offset == 0, last=last)
        if last:
            return
        offset, block = end, following


def _response(kernel: kp.KernelArtifact, offset: int, data: bytes, *, first: bool, last: bool
              ) -> urza_pb2.DownloadKernelResponse:
    response = urza_pb2.DownloadKernelResponse(offset=offset, data=data, total_size=kernel.size_bytes,
                                               last=last)
    if first or last:
        response.sha256 = kernel.sha256
    if first:
        response.kernel.CopyFrom(kernel)
    return response


async def _invalidate(registry: KernelRegistry, kernel: kp.KernelArtifact, why: str) -> None:
    """Mark the kernel INVALID (best effort: the DB may be down too) and raise DataLoss."""
    try:
        await registry.invalidate(kernel.kernel_id, why)
    except Unavailable:
        log.error("cannot mark kernel invalid: database unavailable",
                  extra={"kernel_id": kernel.kernel_id, "reason": why})
    raise DataLoss(f"kernel {kernel.kernel_id}: {why}; marked INVALID")
