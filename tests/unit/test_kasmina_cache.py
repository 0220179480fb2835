"""KernelCache: byte-bounded LRU, digest checks, background prefetch, counters."""

from __future__ import annotations

import threading
import time

import pytest

from esper.kasmina.cache import KernelCache, KernelDigestMismatch, KernelFetchError, sha256_hex


def blob(n: int, fill: bytes = b"k") -> bytes:
    return fill * n


def test_lru_eviction_is_bounded_by_bytes():
    cache = KernelCache(max_bytes=100)
    a, b, c = blob(40, b"a"), blob(40, b"b"), blob(40, b"c")
    cache.put("a", a, sha256_hex(a))
    cache.put("b", b, sha256_hex(b))
    assert cache.get("a", sha256_hex(a)) == a  # a is now most recent
    cache.put("c", c, sha256_hex(c))
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.stats.evictions == 1 and cache.stats.bytes == 80 <= cache.max_bytes
    big = blob(101)
    cache.put("big", big, sha256_hex(big))
    assert "big" not in cache and cache.stats.rejected_too_large == 1


def test_digest_mismatch_refused_and_counted():
    cache = KernelCache(lambda kid: b"evil", max_bytes=100)
    with pytest.raises(KernelDigestMismatch, match="sha256"):
        cache.put("x", b"data", sha256_hex(b"other"))
    with pytest.raises(KernelDigestMismatch):
        cache.get("y", sha256_hex(b"good"))
    cache.put("z", b"data", sha256_hex(b"data"))
    with pytest.raises(KernelDigestMismatch):
        cache.get("z", sha256_hex(b"else"))
    assert cache.stats.digest_mismatches == 3 and "x" not in cache


def test_prefetch_runs_in_background_and_get_ready_never_blocks():
    release = threading.Event()
    data = blob(10)

    def fetch(kernel_id: str) -> bytes:
        release.wait(5)
        return data

    cache = KernelCache(fetch, max_bytes=100)
    cache.prefetch("k", sha256_hex(data))
    t0 = time.perf_counter()
    assert cache.get_ready("k") is None
    assert cache.is_pending("k") and time.perf_counter() - t0 < 1.0
    release.set()
    for _ in range(500):
        got = cache.get_ready("k")
        if got is not None:
            break
        time.sleep(0.01)
    assert got == data
    assert cache.get_ready("k") == data
    assert cache.stats.misses == 1 and cache.stats.hits >= 1


def test_failed_prefetch_reports_error_once():
    cache = KernelCache(lambda kid: (_ for _ in ()).throw(OSError("down")), max_bytes=100)
    cache.prefetch("k", sha256_hex(b"x"))
    for _ in range(500):
        if not cache.is_pending("k") or cache._pending["k"][0].done():
            break
        time.sleep(0.01)
    with pytest.raises(KernelFetchError, match="down"):
        cache.get_ready("k")
    assert cache.get_ready("k") is None


def test_prefetch_digest_mismatch():
    cache = KernelCache(lambda kid: b"tampered", max_bytes=100)
    cache.prefetch("k", sha256_hex(b"original"))
    for _ in range(500):
        if cache._pending["k"][0].done():
            break
        time.sleep(0.01)
    with pytest.raises(KernelDigestMismatch):
        cache.get_ready("k")
    assert "k" not in cache
