"""KernelCache: kernel artifact bytes, LRU-bounded by total bytes, SHA-256 verified,
never unpickled (it holds bytes; decoding is the blueprint artifact loader's job).

`prefetch(kernel_id, sha256)` starts a background fetch (a user-provided
`fetch(kernel_id) -> bytes`, e.g. an Urza download) so a germination decision never
blocks a training step on the network: `get_ready(kernel_id)` returns None until the
bytes are in, verified.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

# Default cache bound: a few hundred small seed kernels; callers size it to their memory.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# Concurrent background downloads: kernels are small, two keep the pipe busy.
DEFAULT_FETCH_WORKERS = 2


class KernelDigestMismatch(ValueError):
    """The bytes fetched for a kernel do not have the expected SHA-256."""


class KernelFetchError(RuntimeError):
    """The fetch function failed for a kernel."""


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0
    rejected_too_large: int = 0
    digest_mismatches: int = 0


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class KernelCache:
    def __init__(self, fetch: Callable[[str], bytes] | None = None, *,
                 max_bytes: int = DEFAULT_MAX_BYTES, workers: int = DEFAULT_FETCH_WORKERS):
        if max_bytes <= 0:
            raise ValueError("max_bytes must be > 0")
        self._fetch = fetch
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._pending: dict[str, tuple[Future, str]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kernel-fetch")
        self.stats = CacheStats()

    # ---- storing ---------------------------------------------------------------------
    def put(self, kernel_id: str, data: bytes, expected_sha256: str) -> None:
        """Verify and store bytes; evicts least-recently-used entries to fit."""
        self._verify(kernel_id, data, expected_sha256)
        with self._lock:
            self._store(kernel_id, bytes(data), expected_sha256.lower())

    def _verify(self, kernel_id: str, data: bytes, expected: str) -> None:
        actual = sha256_hex(data)
        if actual != expected.lower():
            with self._lock:
                self.stats.digest_mismatches += 1
            raise KernelDigestMismatch(
                f"kernel {kernel_id}: sha256 {actual} != expected {expected.lower()}")

    def _store(self, kernel_id: str, data: bytes, digest: str) -> None:
        if len(data) > self.max_bytes:
            self.stats.rejected_too_large += 1
            return
        old = self._entries.pop(kernel_id, None)
        if old is not None:
            self.stats.bytes -= len(old[0])
        while self._entries and self.stats.bytes + len(data) > self.max_bytes:
            _, (evicted, _) = self._entries.popitem(last=False)
            self.stats.bytes -= len(evicted)
            self.stats.evictions += 1
        self._entries[kernel_id] = (data, digest)
        self.stats.bytes += len(data)
        self.stats.entries = len(self._entries)

    # ---- reading -----------------------------------------------------------------------
    def _lookup(self, kernel_id: str, expected_sha256: str | None) -> bytes | None:
        entry = self._entries.get(kernel_id)
        if entry is None:
            return None
        if expected_sha256 is not None and entry[1] != expected_sha256.lower():
            self.stats.digest_mismatches += 1
            raise KernelDigestMismatch(
                f"kernel {kernel_id}: cached sha256 {entry[1]} != expected "
                f"{expected_sha256.lower()}")
        self._entries.move_to_end(kernel_id)
        self.stats.hits += 1
        return entry[0]

    def get(self, kernel_id: str, expected_sha256: str) -> bytes:
        """Blocking read: cached bytes, or fetch now (for tools, never the training step)."""
        with self._lock:
            found = self._lookup(kernel_id, expected_sha256)
            if found is not None:
                return found
            self.stats.misses += 1
        data = self._call_fetch(kernel_id)
        self.put(kernel_id, data, expected_sha256)
        return data

    def prefetch(self, kernel_id: str, expected_sha256: str) -> None:
        """Start fetching in the background unless cached or already in flight."""
        with self._lock:
            if kernel_id in self._entries or kernel_id in self._pending:
                return
            self.stats.misses += 1
            future = self._pool.submit(self._call_fetch, kernel_id)
            self._pending[kernel_id] = (future, expected_sha256)

    def get_ready(self, kernel_id: str, expected_sha256: str | None = None) -> bytes | None:
        """Verified bytes if cached or a finished prefetch delivered them, else None.
        A failed prefetch raises its error (KernelFetchError / KernelDigestMismatch) once."""
        with self._lock:
            found = self._lookup(kernel_id, expected_sha256)
            if found is not None:
                return found
            pending = self._pending.get(kernel_id)
            if pending is None or not pending[0].done():
                return None
            del self._pending[kernel_id]
        future, digest = pending
        data = future.result()  # raises KernelFetchError from the worker
        self.put(kernel_id, data, expected_sha256 or digest)
        with self._lock:
            return self._entries.get(kernel_id, (data, ""))[0]

    def is_pending(self, kernel_id: str) -> bool:
        with self._lock:
            return kernel_id in self._pending

    def __contains__(self, kernel_id: str) -> bool:
        with self._lock:
            return kernel_id in self._entries

    def _call_fetch(self, kernel_id: str) -> bytes:
        if self._fetch is None:
            raise KernelFetchError(f"kernel {kernel_id}: not cached and no fetch function")
        try:
            data = self._fetch(kernel_id)
        except Exception as exc:
            raise KernelFetchError(f"kernel {kernel_id}: fetch failed: {exc}") from exc
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise KernelFetchError(f"kernel {kernel_id}: fetch returned {type(data).__name__}")
        return bytes(data)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
