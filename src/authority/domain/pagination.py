"""Opaque page tokens (AIP-158) bound to the query they continue."""

from __future__ import annotations

import base64
import binascii
import json
from typing import TypeVar

from authority.domain.errors import InvalidArgument, Reason

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """0 means the default; above the maximum is coerced down, as AIP-158 asks."""
    if requested < 0:
        raise InvalidArgument("page_size", "must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


_MAX_POSITION = 2**63 - 1


def encode(query: list[object], position: int | str) -> str:
    """A token that resumes `query` after `position`."""
    raw = json.dumps([query, position], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


P = TypeVar("P", int, str)


def _forged() -> InvalidArgument:
    return InvalidArgument(
        "page_token", "is not a page token from this service", Reason.PAGE_TOKEN_INVALID
    )


def decode(token: str, query: list[object], kind: type[P]) -> P | None:
    """The position (of type `kind`) a page token resumes from; None for the first page."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        stored_query, position = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, RecursionError) as error:
        raise _forged() from error
    if stored_query != query:
        raise InvalidArgument(
            "page_token",
            "belongs to a different query: keep the other fields unchanged",
            Reason.PAGE_TOKEN_INVALID,
        )
    # bool is an int to Python, and never a position.
    if type(position) is not kind:
        raise _forged()
    if isinstance(position, int) and not 0 <= position <= _MAX_POSITION:
        raise _forged()
    # Text positions are names: short, and never what a database cannot store (NUL).
    if isinstance(position, str) and (len(position) > 256 or "\x00" in position):
        raise _forged()
    return position
