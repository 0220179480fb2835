"""The kernel object store: content-addressed kernel bytes in an S3-compatible bucket,
through the `minio` client (blocking, so every call runs in a thread executor).

Keys are derived from the bytes: ``sha256/ab/abcdef…`` (the first two hex digits fan the
keys out), URIs are ``s3://BUCKET/sha256/ab/abcdef…``. Reads verify the SHA-256 digest.
Urza alone uses it: UploadKernel writes with `put_verified` once the uploaded bytes hashed
to their digest, RegisterKernel verifies with `digest`, DownloadKernel streams with
`open_reader`.

Failures: an unreachable or failing store raises `ObjectStoreUnavailable` (quickly: short
timeouts, no retries), a missing object `ObjectMissing`, bytes that do not match their
digest `DigestMismatch`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from esper.urza.errors import DataLoss, Unavailable

T = TypeVar("T")

URI_SCHEME = "s3://"
KEY_PREFIX = "sha256"
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# A fixed region stops minio from asking for the bucket location, which localbucket lacks.
DEFAULT_REGION = "us-east-1"
# An outage must answer in about a second, not after minio's default retries and waits.
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 10.0
# Hashing reads in blocks of this size: big enough to be fast, small enough to stay flat.
HASH_BLOCK_BYTES = 1024 * 1024
# Threads doing blocking S3 calls; a few concurrent downloads keep up on 2 cores.
IO_THREADS = 4
MISSING_CODES = ("NoSuchKey", "NoSuchBucket", "NoSuchObject")


class ObjectStoreUnavailable(Unavailable):
    """The object store cannot be reached or answered with a server error."""


class ObjectMissing(LookupError):
    """No object under the key."""


class DigestMismatch(DataLoss):
    """The object's bytes do not hash to the expected SHA-256 (or have the wrong size)."""


@dataclass(frozen=True)
class StoredObject:
    """Where some bytes were stored and what they are."""

    uri: str
    sha256: str
    size: int


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key_for(sha256: str) -> str:
    """The content-addressed key of bytes with digest `sha256`."""
    if not SHA256_HEX.match(sha256):
        raise ValueError(f"sha256: {sha256[:80]!r} is not 64 lower-case hex digits")
    return f"{KEY_PREFIX}/{sha256[:2]}/{sha256}"


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``; ValueError when malformed."""
    if not uri.startswith(URI_SCHEME):
        raise ValueError(f"{uri[:120]!r} does not start with {URI_SCHEME}")
    bucket, _, key = uri[len(URI_SCHEME):].partition("/")
    if not bucket or not key:
        raise ValueError(f"{uri[:120]!r} is not s3://BUCKET/KEY")
    return bucket, key


def _endpoint_parts(endpoint_url: str) -> tuple[str, bool]:
    parts = urlsplit(endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"s3_endpoint: {endpoint_url!r} must be http(s)://HOST:PORT")
    return parts.netloc, parts.scheme == "https"


class KernelStore:
    """One bucket of content-addressed kernel bytes."""

    def __init__(
        self,
        endpoint_url: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        region: str = DEFAULT_REGION,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        host, secure = _endpoint_parts(endpoint_url)
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            retries=urllib3.Retry(total=0),
            maxsize=IO_THREADS * 2,
        )
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.client = Minio(host, access_key=access_key, secret_key=secret_key,
                            secure=secure, region=region, http_client=http)
        self._executor = concurrent.futures.ThreadPoolExecutor(IO_THREADS, thread_name_prefix="kernel-store")

    # -- naming ------------------------------------------------------------------------------
    def uri_for(self, sha256: str) -> str:
        return f"{URI_SCHEME}{self.bucket}/{key_for(sha256)}"

    def key_of(self, uri: str) -> str:
        """The key of `uri`, which must name this store's bucket."""
        bucket, key = parse_uri(uri)
        if bucket != self.bucket:
            raise ValueError(f"{uri[:120]!r} is not in bucket {self.bucket!r}")
        return key

    # -- operations --------------------------------------------------------------------------
    async def ensure_bucket(self) -> None:
        def ensure() -> None:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        await self._run(ensure)

    async def put(self, data: bytes) -> StoredObject:
        """Store `data` under its content-addressed key (idempotent)."""
        digest = sha256_hex(data)
        key = key_for(digest)
        await self._run(lambda: self.client.put_object(self.bucket, key, io.BytesIO(data), len(data)))
        return StoredObject(self.uri_for(digest), digest, len(data))

    async def put_verified(self, stream: BinaryIO, sha256: str, size: int) -> StoredObject:
        """Store `size` bytes read from `stream` (at its start) under the key of `sha256`,
        which the caller has checked they hash to (UploadKernel hashes them on the way in).
        Idempotent: the same bytes under the same key."""
        key = key_for(sha256)
        await self._run(lambda: self.client.put_object(self.bucket, key, stream, size))
        return StoredObject(self.uri_for(sha256), sha256, size)

    async def size(self, uri: str) -> int:
        """Size of the object at `uri`; ObjectMissing when there is none."""
        key = self.key_of(uri)
        stat = await self._run(lambda: self.client.stat_object(self.bucket, key))
        return int(stat.size or 0)

    async def digest(self, uri: str) -> tuple[str, int]:
        """SHA-256 hex digest and size of the object's bytes, read in blocks."""
        key = self.key_of(uri)

        def hash_object() -> tuple[str, int]:
            response = self.client.get_object(self.bucket, key)
            try:
                hasher, size = hashlib.sha256(), 0
                for block in response.stream(HASH_BLOCK_BYTES):
                    hasher.update(block)
                    size += len(block)
                return hasher.hexdigest(), size
            finally:
                response.close()
                response.release_conn()

        return await self._run(hash_object)

    async def read_verified(self, uri: str, sha256: str, size: int | None = None) -> bytes:
        """The object's bytes, checked against `sha256` (and `size` when given)."""
        key = self.key_of(uri)

        def read() -> bytes:
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        data = await self._run(read)
        actual = sha256_hex(data)
        if actual != sha256 or (size is not None and len(data) != size):
            raise DigestMismatch(f"{uri}: expected sha256 {sha256} ({size} bytes), "
                                 f"got {actual} ({len(data)} bytes)")
        return data

    async def open_reader(self, uri: str) -> ObjectReader:
        """A block reader over the object's bytes; close it when done."""
        key = self.key_of(uri)
        response = await self._run(lambda: self.client.get_object(self.bucket, key))
        return ObjectReader(self, response)

    async def remove(self, uri: str) -> None:
        key = self.key_of(uri)
        await self._run(lambda: self.client.remove_object(self.bucket, key))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(_translated, call, self.endpoint_url))


class ObjectReader:
    """Reads an object's bytes in blocks off the event loop."""

    def __init__(self, store: KernelStore, response: Any) -> None:
        self._store = store
        self._response = response

    async def read(self, size: int) -> bytes:
        """Up to `size` bytes; fewer only at the end of the object; b"" at the end."""
        def read_full() -> bytes:
            parts, left = [], size
            while left > 0:
                part = self._response.read(left)
                if not part:
                    break
                parts.append(part)
                left -= len(part)
            return b"".join(parts)
        return await self._store._run(read_full)

    def close(self) -> None:
        self._response.close()
        self._response.release_conn()


def _translated(call: Callable[[], T], endpoint: str) -> T:
    """Run a blocking minio call, mapping its failures onto the store's errors."""
    try:
        return call()
    except S3Error as exc:
        if exc.code in MISSING_CODES:
            raise ObjectMissing(f"{exc.bucket_name}/{exc.object_name}: {exc.code}") from None
        raise ObjectStoreUnavailable(f"object store at {endpoint}: {exc.code}: {exc.message}") from None
    except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise ObjectStoreUnavailable(
            f"object store at {endpoint} unavailable: {type(exc).__name__}: {exc}") from None
