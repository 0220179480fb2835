"""Bounded decompression of the record batches a consumer fetches, and refusal of batches
that cannot be read.

aiokafka inflates a gzip record batch whole, in memory, before any size check can run:
a 200 KB batch of zeros became a 200 MB record in an ingest worker, and inflating it
outlasted the consumer's session timeout. `install()` makes this process's consumers

- inflate gzip batches with a bound (`MAX_INFLATED_BATCH_BYTES`): inflation stops at the
  bound, never beyond it, whatever the batch claims;
- turn a batch that cannot be read — inflates past the bound, fails its CRC, is not valid
  gzip, uses a codec this process lacks, holds malformed records — into one *refused
  record*: offset = the batch's last offset, no value, and a header `REFUSED_HEADER`
  saying why. The fetch position then moves past the batch, so a consumer is never stuck
  on it, and the consumer hands the refused record to its caller to dead-letter.

aiokafka offers no hook for either, so `install()` replaces two of its module-level
names (its gzip decoder, and the PartitionRecords class its fetcher builds); both are
looked up at call time, in the pure-Python and the compiled record readers alike. The
unit tests run the real aiokafka readers, so an aiokafka release that moves these names
fails them instead of silently dropping the bound."""

from __future__ import annotations

import importlib
import logging
import zlib
from collections.abc import Iterator
from typing import Any

from esper.oona.envelope import MAX_EVENT_BYTES

log = logging.getLogger(__name__)

# A batch of ours is at most the producer's MAX_BATCH_BYTES (512 KiB) before compression,
# and one event at most MAX_EVENT_BYTES; twice that leaves room for other producers'
# batching while bounding what one batch can cost in memory and time (~10 ms to inflate).
MAX_INFLATED_BATCH_BYTES = 2 * MAX_EVENT_BYTES
# What one zlib call may produce (see bounded_gzip_decode).
INFLATE_STEP_BYTES = 1024 * 1024
# The header of a refused record; its value says why the batch was refused.
REFUSED_HEADER = "esper-oona-refused"
# gzip framing for zlib (16 + the largest window).
_GZIP_WBITS = 16 + zlib.MAX_WBITS
# The modules whose `gzip_decode` aiokafka's record readers call (pure Python, compiled).
_GZIP_DECODER_MODULES = (
    "aiokafka.record.default_records",
    "aiokafka.record.legacy_records",
    "aiokafka.record._crecords.default_records",
    "aiokafka.record._crecords.legacy_records",
)
_FETCHER_MODULE = "aiokafka.consumer.fetcher"


class InflateLimitExceeded(ValueError):
    """A compressed batch inflates past the bound."""


def bounded_gzip_decode(payload: Any, limit: int = MAX_INFLATED_BATCH_BYTES) -> bytes:
    """Inflate gzip `payload` (one or more members) to at most `limit` bytes; raises
    InflateLimitExceeded as soon as more would come out, zlib.error when it is not gzip.
    Inflates in steps of INFLATE_STEP_BYTES: zlib assembles one call's output in blocks
    and copies them at the end, so one big call would hold twice its output."""
    data = bytes(payload)
    chunks: list[bytes] = []
    total = 0
    while data:
        inflater = zlib.decompressobj(_GZIP_WBITS)
        pending = data
        while pending and not inflater.eof:
            # max_length caps what this call produces: the bomb is never inflated past it.
            chunk = inflater.decompress(pending, min(INFLATE_STEP_BYTES, limit + 1 - total))
            total += len(chunk)
            if total > limit:
                raise InflateLimitExceeded(f"inflates past {limit} bytes")
            chunks.append(chunk)
            pending = inflater.unconsumed_tail
        if not inflater.eof:
            raise zlib.error("truncated gzip stream")
        data = inflater.unused_data
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class RefusedRecord:
    """What the fetcher yields in place of a batch it could not read (it reads the same
    attributes of it as of a record)."""

    __slots__ = ("offset", "timestamp", "headers")
    timestamp_type = 0
    key = None
    value = None
    checksum = None

    def __init__(self, offset: int, reason: str) -> None:
        self.offset = offset
        self.timestamp = -1
        self.headers = [(REFUSED_HEADER, reason.encode())]


class _GuardedBatch:
    """A record batch whose iteration never raises: records as they are, or, when the
    batch cannot be read, one RefusedRecord at its last offset."""

    __slots__ = ("_batch", "_refusal")

    def __init__(self, batch: Any) -> None:
        self._batch = batch
        self._refusal: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def validate_crc(self) -> bool:
        # A corrupt batch is refused (and dead-lettered) rather than refetched forever.
        if not self._batch.validate_crc():
            self._refusal = "record batch fails its CRC check"
        return True

    def __iter__(self) -> Iterator[Any]:
        return self._records()

    def _records(self) -> Iterator[Any]:
        batch = self._batch
        first, last = batch.base_offset, batch.next_offset - 1
        if self._refusal is None:
            try:
                yield from batch  # iter() inflates; each next() parses one record
                return
            except Exception as exc:  # noqa: BLE001 - any unreadable batch is refused alike
                self._refusal = f"record batch cannot be read: {type(exc).__name__}: {exc}"
        log.warning("oona: refusing record batch at offsets %d..%d: %s", first, last,
                    self._refusal)
        yield RefusedRecord(last, f"offsets {first}..{last}: {self._refusal}")


class _GuardedRecords:
    """The fetched records of one partition, each batch guarded."""

    __slots__ = ("_records",)

    def __init__(self, records: Any) -> None:
        self._records = records

    def has_next(self) -> bool:
        return self._records.has_next()

    def next_batch(self) -> _GuardedBatch | None:
        batch = self._records.next_batch()
        return None if batch is None else _GuardedBatch(batch)


_installed = False


def install() -> None:
    """Bound gzip inflation and guard fetched batches in every aiokafka consumer of this
    process (idempotent)."""
    global _installed
    if _installed:
        return
    for name in _GZIP_DECODER_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # the compiled readers are optional in aiokafka
            continue
        module.gzip_decode = bounded_gzip_decode  # type: ignore[attr-defined]
    fetcher = importlib.import_module(_FETCHER_MODULE)
    base = fetcher.PartitionRecords

    class GuardedPartitionRecords(base):  # type: ignore[misc, valid-type]
        def __init__(self, tp: Any, records: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(tp, _GuardedRecords(records), *args, **kwargs)

    fetcher.PartitionRecords = GuardedPartitionRecords
    _installed = True


def refusal_of(headers: Any, value: bytes | None) -> str | None:
    """The reason of a refused record, or None for any other record."""
    if value is not None or not headers:
        return None
    name, reason = headers[0]
    return reason.decode("utf-8", "replace") if name == REFUSED_HEADER and reason else None
