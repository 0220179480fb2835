"""One page-token codec for every List RPC: opaque, bound to the request's filters, keyset.

A token holds the sort key of the last row served (the keyset position the next page
resumes after), the RPC it was issued by and a digest of that request's filters, signed with
an HMAC: `base64url(mac[:16] + json)`. The next page is `WHERE (sort_key, id) < (position)
ORDER BY sort_key DESC, id DESC LIMIT n + 1` (or `>` for ascending lists), so rows inserted
between two pages are neither skipped nor repeated, whatever their number.

Refused with INVALID_ARGUMENT naming `page_token`: a token that is not base64url JSON of
ours, whose HMAC does not verify (tampered with, forged, or signed with another key),
issued by another RPC or for other filters, or whose position has the wrong shape or types.

The key: `ESPER_PAGE_TOKEN_KEY` (any string; every replica of a service must share it) when
set, which keeps tokens valid across restarts; otherwise a random key per process, so
tokens die with the process that issued them (a client then starts its listing again).
Tokens are not secrets: they carry only values the caller could list anyway; the HMAC only
stops clients from forging positions.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Sequence
from typing import Any

from esper.runtime.errors import InvalidArgument

FIELD = "page_token"
KEY_ENV = "ESPER_PAGE_TOKEN_KEY"
# Sizes from the protos: 0 means the default; larger requests are capped, not refused.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Our tokens are ~100-300 characters; anything far longer is garbage and is not parsed.
MAX_TOKEN_LENGTH = 2048
MAC_BYTES = 16
VERSION = 1

# The types a position may hold. Datetimes travel as integer microseconds since the epoch
# (PostgreSQL's precision), so a timestamp comes back exactly.
Position = tuple[Any, ...]
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")
_MALFORMED = "malformed; pass the next_page_token of a previous response"

_key: bytes | None = None


def _signing_key() -> bytes:
    global _key
    if _key is None:
        configured = os.environ.get(KEY_ENV, "")
        _key = hashlib.sha256(configured.encode()).digest() if configured else secrets.token_bytes(32)
    return _key


def set_key(key: bytes | str | None) -> None:
    """Use this key from now on (None: read `ESPER_PAGE_TOKEN_KEY` again, or draw one)."""
    global _key
    _key = None if key is None else hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


def page_size(requested: int) -> int:
    """The page size a request asks for: 0 means the default, beyond the maximum is capped."""
    if requested <= 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def filters_digest(scope: str, filters: dict[str, Any]) -> str:
    canonical = json.dumps([scope, filters], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _to_json(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise TypeError("page positions hold aware datetimes only")
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"a page position holds str, int or datetime, not {type(value).__name__}")
    return value


def _letter(value: Any) -> str:
    return "d" if isinstance(value, dt.datetime) else "i" if isinstance(value, int) else "s"


_LETTER = {str: "s", int: "i", dt.datetime: "d"}


def _from_json(value: Any, kind: type) -> Any:
    if kind is dt.datetime:
        if type(value) is not int:
            raise ValueError
        return _EPOCH + dt.timedelta(microseconds=value)  # OverflowError when absurd
    if type(value) is not kind:
        raise ValueError
    return value


def encode(scope: str, position: Sequence[Any], filters: dict[str, Any]) -> str:
    """The token resuming `scope`'s listing (an RPC name) after `position` (the last row's
    sort key, tie-breaker last) for a request with these `filters`."""
    body = json.dumps({"v": VERSION, "p": [_to_json(v) for v in position],
                       "t": "".join(_letter(v) for v in position),
                       "f": filters_digest(scope, filters)}, separators=(",", ":")).encode()
    mac = hmac.new(_signing_key(), body, hashlib.sha256).digest()[:MAC_BYTES]
    return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")


def decode(scope: str, token: str, filters: dict[str, Any], types: Sequence[type]) -> Position | None:
    """The position a token resumes after, one value per entry of `types` (str, int or
    datetime); None for an empty token. InvalidArgument naming page_token otherwise."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidArgument(FIELD, f"longer than {MAX_TOKEN_LENGTH} characters; not a token of ours")
    if not _ALPHABET.fullmatch(token):
        raise InvalidArgument(FIELD, _MALFORMED)
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(FIELD, _MALFORMED) from None
    mac, body = raw[:MAC_BYTES], raw[MAC_BYTES:]
    expected = hmac.new(_signing_key(), body, hashlib.sha256).digest()[:MAC_BYTES]
    if len(mac) != MAC_BYTES or not hmac.compare_digest(mac, expected):
        raise InvalidArgument(FIELD, "not issued by this server, altered, or expired with a restart; "
                                     "start again without a token")
    try:
        doc = json.loads(body)
        if not isinstance(doc, dict) or doc.get("v") != VERSION:
            raise ValueError
        values = doc.get("p")
        if (not isinstance(values, list) or len(values) != len(types)
                or doc.get("t") != "".join(_LETTER[kind] for kind in types)):
            raise ValueError
        position = tuple(_from_json(v, kind) for v, kind in zip(values, types, strict=True))
    except (ValueError, TypeError, OverflowError, UnicodeDecodeError):
        raise InvalidArgument(FIELD, _MALFORMED) from None
    if doc.get("f") != filters_digest(scope, filters):
        raise InvalidArgument(FIELD, "was issued for different filters; start again without a token")
    return position


def next_token(scope: str, rows: Sequence[Any], limit: int, key, filters: dict[str, Any]) -> tuple[list, str]:
    """The page (the first `limit` of `rows`, fetched with LIMIT limit + 1) and the token of
    the next one ("" at the end); `key(row)` is a row's keyset position."""
    page = list(rows[:limit])
    if len(rows) <= limit:
        return page, ""
    return page, encode(scope, key(page[-1]), filters)


__all__ = ["DEFAULT_PAGE_SIZE", "FIELD", "KEY_ENV", "MAX_PAGE_SIZE", "decode", "encode",
           "filters_digest", "next_token", "page_size", "set_key"]
