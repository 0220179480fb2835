"""The one page-token codec (esper.runtime.pagination): round trips of random positions,
binding to the RPC and its filters, and hostile tokens (garbage, tampering, forgery, wrong
shapes and types, another key) refused with INVALID_ARGUMENT naming page_token."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import random
import string

import grpc
import pytest

from esper.runtime import pagination
from esper.runtime.errors import InvalidArgument

UTC = dt.UTC


@pytest.fixture(autouse=True)
def _fixed_key():
    pagination.set_key("test-key")
    yield
    pagination.set_key(None)


def _random_value(rng: random.Random, kind: type):
    if kind is str:
        alphabet = string.printable + "éß漢\u2028\x00"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
    if kind is int:
        return rng.choice([0, -1, 2**63 - 1, -(2**63), rng.randrange(-10**12, 10**12)])
    micro = rng.randrange(-62_135_596_800_000_000, 253_402_300_799_000_000)
    return dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=micro)


def test_random_positions_round_trip_exactly() -> None:
    rng = random.Random(12)
    for _ in range(500):
        types = tuple(rng.choice([str, int, dt.datetime]) for _ in range(rng.randrange(1, 5)))
        position = tuple(_random_value(rng, kind) for kind in types)
        filters = {"run_id": _random_value(rng, str), "n": rng.randrange(5), "tags": ["a", "b"]}
        token = pagination.encode("ListThings", position, filters)
        assert len(token) <= pagination.MAX_TOKEN_LENGTH
        assert set(token) <= set(string.ascii_letters + string.digits + "-_")  # URL-safe, no padding
        assert pagination.decode("ListThings", token, dict(filters), types) == position


def test_empty_token_is_the_first_page() -> None:
    assert pagination.decode("ListThings", "", {}, (str,)) is None


def test_a_token_is_bound_to_its_rpc_and_filters() -> None:
    token = pagination.encode("ListRuns", ("r1",), {"state": 1})
    with pytest.raises(InvalidArgument, match="^page_token: was issued for different filters"):
        pagination.decode("ListRuns", token, {"state": 2}, (str,))
    with pytest.raises(InvalidArgument, match="^page_token: was issued for different filters"):
        pagination.decode("ListRuns", token, {}, (str,))
    with pytest.raises(InvalidArgument, match="^page_token: was issued for different filters"):
        pagination.decode("ListAlerts", token, {"state": 1}, (str,))


def test_wrong_shapes_and_types_are_refused() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    token = pagination.encode("ListJobs", (when, "j-1"), {})
    for types in [(str,), (dt.datetime, str, str), (str, str), (dt.datetime, int), (int, str)]:
        with pytest.raises(InvalidArgument, match="^page_token: malformed"):
            pagination.decode("ListJobs", token, {}, types)
    assert pagination.decode("ListJobs", token, {}, (dt.datetime, str)) == (when, "j-1")


def _signed(body: bytes, key: bytes = hashlib.sha256(b"test-key").digest()) -> str:
    mac = hmac.new(key, body, hashlib.sha256).digest()[: pagination.MAC_BYTES]
    return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")


def test_well_signed_nonsense_is_refused_as_malformed() -> None:
    digest = pagination.filters_digest("ListThings", {})
    bodies = [b"", b"null", b"[]", b"{}", b'"x"', b"\xff\xfe", b'{"v":1,"p":"abc","f":"' + digest.encode() + b'"}',
              b'{"v":2,"p":["a"],"f":"' + digest.encode() + b'"}',
              b'{"v":1,"p":[true],"f":"' + digest.encode() + b'"}',
              b'{"v":1,"p":[1.5],"f":"' + digest.encode() + b'"}',
              b'{"v":1,"p":[null],"f":"' + digest.encode() + b'"}',
              b'{"v":1,"p":[[1]],"f":"' + digest.encode() + b'"}']
    for body in bodies:
        with pytest.raises(InvalidArgument, match="^page_token: "):
            pagination.decode("ListThings", _signed(body), {}, (int,))
    huge = json.dumps({"v": 1, "p": [10**30], "f": digest}).encode()
    with pytest.raises(InvalidArgument, match="^page_token: malformed"):
        pagination.decode("ListThings", _signed(huge), {}, (dt.datetime,))


def test_garbage_tampering_and_forgery_are_refused() -> None:
    rng = random.Random(7)
    filters = {"family": 1}
    token = pagination.encode("ListBlueprints", ("BP-A", "0001", "1.0.0"), filters)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    hostile = ["garbage", "!!!", "%%%", "e30", "x" * 5000, token[:-3], token + "A", " " + token,
               token.replace("-", "+").replace("_", "/") if set("-_") & set(token) else token + "=",
               base64.urlsafe_b64encode(b'{"p":["ZZZ","9","9"],"f":"x"}').decode(),
               "eyJwIjpbMV0sImYiOiJ4In0"]
    for _ in range(300):  # every flipped bit is caught by the HMAC
        flipped = bytearray(raw)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        hostile.append(base64.urlsafe_b64encode(bytes(flipped)).decode().rstrip("="))
    for _ in range(300):
        hostile.append("".join(rng.choice(string.printable) for _ in range(rng.randrange(1, 300))))
    # A forged position: the body of a real token with another position, old MAC kept.
    body = json.loads(bytes(raw[pagination.MAC_BYTES:]))
    body["p"] = ["ZZZ", "9999", "9.9.9"]
    hostile.append(base64.urlsafe_b64encode(bytes(raw[: pagination.MAC_BYTES])
                                            + json.dumps(body).encode()).decode())
    for bad in hostile:
        with pytest.raises(InvalidArgument, match="^page_token: ") as err:
            pagination.decode("ListBlueprints", bad, filters, (str, str, str))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.field == "page_token"


def test_a_token_signed_with_another_key_is_refused() -> None:
    token = pagination.encode("ListRuns", (3, "r"), {})
    pagination.set_key("another deployment")
    with pytest.raises(InvalidArgument, match="^page_token: not issued by this server"):
        pagination.decode("ListRuns", token, {}, (int, str))


def test_the_key_comes_from_the_environment_else_per_process(monkeypatch) -> None:
    monkeypatch.setenv(pagination.KEY_ENV, "shared")
    pagination.set_key(None)
    token = pagination.encode("ListRuns", (1, "r"), {})
    pagination.set_key(None)  # a restarted replica of the same deployment
    assert pagination.decode("ListRuns", token, {}, (int, str)) == (1, "r")
    monkeypatch.delenv(pagination.KEY_ENV)
    pagination.set_key(None)
    first = pagination.encode("ListRuns", (1, "r"), {})
    pagination.set_key(None)  # a restart without a configured key: old tokens die
    with pytest.raises(InvalidArgument, match="^page_token: "):
        pagination.decode("ListRuns", first, {}, (int, str))


def test_next_token_pages_with_limit_plus_one() -> None:
    rows = [{"id": i} for i in range(6)]
    page, token = pagination.next_token("L", rows, 5, lambda r: (r["id"],), {})
    assert page == rows[:5] and pagination.decode("L", token, {}, (int,)) == (4,)
    assert pagination.next_token("L", rows[:5], 5, lambda r: (r["id"],), {}) == (rows[:5], "")


def test_positions_hold_only_what_round_trips() -> None:
    for bad in [(1.5,), (None,), (True,), (dt.datetime(2026, 1, 1),)]:
        with pytest.raises(TypeError):
            pagination.encode("L", bad, {})


def test_page_size_defaults_and_caps() -> None:
    assert pagination.page_size(0) == pagination.DEFAULT_PAGE_SIZE
    assert pagination.page_size(7) == 7
    assert pagination.page_size(2**32 - 1) == pagination.MAX_PAGE_SIZE
