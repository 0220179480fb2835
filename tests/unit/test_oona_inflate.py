"""Bounded inflation of fetched record batches, through aiokafka's own record readers
(compiled and pure Python): a batch that would inflate past the bound, or is corrupt,
becomes one refused record at its last offset and the fetch position moves past it;
good batches around it are read as before."""

from __future__ import annotations

import gzip
import struct
import zlib

import pytest
from aiokafka.consumer import fetcher
from aiokafka.record import memory_records
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import TopicPartition

from esper.oona import inflate
from esper.oona.inflate import (
    MAX_INFLATED_BATCH_BYTES,
    InflateLimitExceeded,
    bounded_gzip_decode,
    refusal_of,
)

GZIP = 1
READERS = [memory_records.MemoryRecords, memory_records._MemoryRecordsPy]


def test_bounded_gzip_decode_inflates_what_fits_one_or_more_members() -> None:
    assert bounded_gzip_decode(gzip.compress(b"abc" * 1000)) == b"abc" * 1000
    assert bounded_gzip_decode(gzip.compress(b"ab") + gzip.compress(b"cd")) == b"abcd"
    assert bounded_gzip_decode(gzip.compress(bytes(100)), limit=100) == bytes(100)


def test_bounded_gzip_decode_stops_at_the_bound_and_refuses_bad_streams() -> None:
    with pytest.raises(InflateLimitExceeded):
        bounded_gzip_decode(gzip.compress(bytes(101)), limit=100)
    with pytest.raises(InflateLimitExceeded):  # the bound holds across members too
        bounded_gzip_decode(gzip.compress(bytes(60)) * 2, limit=100)
    with pytest.raises(zlib.error):
        bounded_gzip_decode(gzip.compress(b"x" * 1000)[:-12])
    with pytest.raises(zlib.error):
        bounded_gzip_decode(b"not gzip at all")


def _batch(base_offset: int, values: list[bytes]) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=GZIP, is_transactional=0,
                                        producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                        batch_size=2**31 - 1)
    for delta, value in enumerate(values):
        builder.append(delta, timestamp=None, key=None, value=value, headers=[])
    raw = bytearray(builder.build())
    struct.pack_into(">q", raw, 0, base_offset)
    return bytes(raw)


def _fetch(reader, raw: bytes):
    inflate.install()
    records = fetcher.PartitionRecords(TopicPartition("t", 0), reader(raw), [], 0, None, None,
                                       True, 0)
    return [(r.offset, r.value, refusal_of(r.headers, r.value)) for r in records], records


@pytest.mark.parametrize("reader", READERS)
def test_a_bomb_batch_becomes_one_refused_record_and_the_next_batch_is_read(reader) -> None:
    raw = (_batch(0, [b"before"]) + _batch(1, [b"x", bytes(MAX_INFLATED_BATCH_BYTES)])
           + _batch(3, [b"after"]))
    got, records = _fetch(reader, raw)
    assert [(offset, value) for offset, value, _ in got] == [
        (0, b"before"), (2, None), (3, b"after")]
    assert "offsets 1..2" in got[1][2] and "InflateLimitExceeded" in got[1][2]
    assert records.next_fetch_offset == 4


@pytest.mark.parametrize("reader", READERS)
def test_a_corrupt_batch_is_refused_not_refetched(reader) -> None:
    bad = bytearray(_batch(1, [b"y" * 50]))
    bad[-5] ^= 0xFF  # a byte of the compressed records: the CRC no longer matches
    got, records = _fetch(reader, _batch(0, [b"ok"]) + bytes(bad))
    assert got[0][:2] == (0, b"ok")
    assert got[1][:2] == (1, None) and "CRC" in got[1][2]
    assert records.next_fetch_offset == 2


def test_only_refused_records_carry_a_refusal() -> None:
    assert refusal_of([(inflate.REFUSED_HEADER, b"why")], None) == "why"
    assert refusal_of([(inflate.REFUSED_HEADER, b"why")], b"value") is None
    assert refusal_of([], None) is None
    assert refusal_of([("content-type", b"x")], None) is None
