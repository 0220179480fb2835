"""Opaque page tokens for keyset pagination.

A token is base64url(JSON) holding the sort key of the last item served and a digest of
the request's filters, so a token replayed with other filters is refused rather than
silently skipping or repeating items. Tokens are not secrets: they carry only values the
caller could list anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from esper.urza.errors import InvalidArgument

# Sizes from the proto: 0 means the default; larger requests are capped, not refused.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Our tokens are ~200 bytes; anything far longer is garbage and is not parsed.
MAX_TOKEN_LENGTH = 2048
FIELD = "page_token"


def page_size(requested: int) -> int:
    if requested <= 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def filters_digest(filters: dict[str, Any]) -> str:
    canonical = json.dumps(filters, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_token(position: list[Any], filters: dict[str, Any]) -> str:
    body = json.dumps({"p": position, "f": filters_digest(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode_token(token: str, filters: dict[str, Any], arity: int) -> list[Any] | None:
    """The position a token resumes after; None for an empty token. InvalidArgument when
    the token is malformed or was issued for other filters."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidArgument(FIELD, f"longer than {MAX_TOKEN_LENGTH} characters; not a token of ours")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidArgument(FIELD, "malformed; pass the next_page_token of a previous response") from None
    position = body.get("p") if isinstance(body, dict) else None
    if (not isinstance(position, list) or len(position) != arity
            or not all(isinstance(v, str) for v in position)):
        raise InvalidArgument(FIELD, "malformed; pass the next_page_token of a previous response")
    if body.get("f") != filters_digest(filters):
        raise InvalidArgument(FIELD, "was issued for different filters; start again without a token")
    return position
