"""The token value: `tka_<id>_<secret><checksum>`.

- `tka_` makes a leaked token recognisable to secret scanners (see README for the regex).
- `<id>`: 16 base62 characters, the public token id used to find the stored record.
- `<secret>`: 43 base62 characters carrying 256 bits from `secrets`.
- `<checksum>`: 6 base62 characters of CRC32 over everything before it, so that a mistyped or
  truncated token is refused before any cache or store lookup. It is not a security control:
  the secret is.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from typing import NamedTuple

PREFIX = "tka_"
ID_LENGTH = 16
SECRET_LENGTH = 43
CHECKSUM_LENGTH = 6
TOKEN_LENGTH = len(PREFIX) + ID_LENGTH + 1 + SECRET_LENGTH + CHECKSUM_LENGTH
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# For secret scanners and for the README; the parser below uses the same shape.
SCANNER_REGEX = r"\btka_[0-9A-Za-z]{16}_[0-9A-Za-z]{49}\b"

_ID_START = len(PREFIX)
_ID_END = _ID_START + ID_LENGTH
_SECRET_START = _ID_END + 1
_BODY_LENGTH = TOKEN_LENGTH - CHECKSUM_LENGTH
_TOKEN_ID_RE = re.compile(rf"[0-9A-Za-z]{{{ID_LENGTH}}}")
_SECRET_BYTES = 32


class ParsedToken(NamedTuple):
    """A token value that passed the format and checksum checks (not yet authenticated).

    A NamedTuple rather than a frozen dataclass: one is built per Validate, and it is cheaper.
    """

    token_id: str
    value: str


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        digits.append(ALPHABET[rest])
    return "".join(reversed(digits))


# Every two-digit base62 string, by value: the checksum is three lookups, not six divisions.
_PAIRS = tuple(first + second for first in ALPHABET for second in ALPHABET)


def _checksum(body: str) -> str:
    number = zlib.crc32(body.encode("ascii"))
    high, rest = divmod(number, 3844 * 3844)
    middle, low = divmod(rest, 3844)
    return _PAIRS[high] + _PAIRS[middle] + _PAIRS[low]


# Random bytes to base62 without bias, by rejection: a byte's low six bits pick a character,
# and the bytes whose six bits are 62 or 63 are dropped (8 of 256), so each character stands
# for exactly 4 byte values. One `token_bytes` call and one `translate` per id, not a
# `secrets.choice` per character (a sixth of the cost).
_ID_CHARACTERS = bytes(ord(ALPHABET[byte & 63]) if byte & 63 < 62 else 0 for byte in range(256))
_ID_REJECTED = bytes(byte for byte in range(256) if byte & 63 >= 62)
# Bytes drawn per try: 16 of 24 survive but for a chance of about 4 in 100 million.
_ID_DRAW = ID_LENGTH + 8


def base62_from_bytes(drawn: bytes) -> str:
    """The base62 characters that the bytes `drawn` stand for, the rejected bytes dropped."""
    return drawn.translate(_ID_CHARACTERS, _ID_REJECTED).decode("ascii")


def new_token_id() -> str:
    """A fresh random public id (about 95 bits, so collisions are not a concern)."""
    while True:
        characters = base62_from_bytes(secrets.token_bytes(_ID_DRAW))
        if len(characters) >= ID_LENGTH:
            return characters[:ID_LENGTH]


def new_token(token_id: str | None = None) -> ParsedToken:
    """Mint a token value with a 256-bit secret."""
    token_id = token_id or new_token_id()
    secret = _base62(int.from_bytes(secrets.token_bytes(_SECRET_BYTES), "big"), SECRET_LENGTH)
    body = f"{PREFIX}{token_id}_{secret}"
    return ParsedToken(token_id=token_id, value=body + _checksum(body))


def parse_token(value: str) -> ParsedToken | None:
    """The token if its shape and checksum are right, else None. No I/O: garbage stops here."""
    # On ASCII text isalnum() is exactly [0-9A-Za-z], and cheaper than a regular expression.
    if (
        len(value) != TOKEN_LENGTH
        or not value.startswith(PREFIX)
        or not value.isascii()
        or value[_ID_END] != "_"
        or _checksum(value[:_BODY_LENGTH]) != value[_BODY_LENGTH:]
    ):
        return None
    token_id = value[_ID_START:_ID_END]
    if not token_id.isalnum() or not value[_SECRET_START:].isalnum():
        return None
    return ParsedToken(token_id, value)


def display_hint(token_id: str) -> str:
    """The first characters of a token's value: what others can recognise it by."""
    return f"{PREFIX}{token_id}_"


def is_token_id(value: str) -> bool:
    """Whether `value` has the shape of a public token id."""
    return _TOKEN_ID_RE.fullmatch(value) is not None


_BLOCK = 64  # SHA-256 block size
_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))


class SecretHasher:
    """Keyed hash of token values: HMAC-SHA256 with a server-side pepper.

    Tokens carry 256 random bits, so a fast keyed hash is enough (argon2 is for passwords);
    the pepper means a stolen database alone cannot confirm a guessed token.
    """

    def __init__(self, pepper: bytes) -> None:
        if len(pepper) < 32:
            raise ValueError("the pepper must hold at least 32 bytes")
        # HMAC (RFC 2104) with both padded-key states hashed once: per call, two cheap state
        # copies instead of keying HMAC anew (the hot path's largest cost after gRPC itself).
        # Equal to hmac.digest(pepper, value, "sha256"); the unit tests hold it to that.
        key = hashlib.sha256(pepper).digest() if len(pepper) > _BLOCK else pepper
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def _mac(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def hash(self, token: ParsedToken) -> bytes:
        """The keyed hash stored in place of the token value (HMAC-SHA256)."""
        return self._mac(token.value.encode("ascii"))

    def fingerprint(self) -> str:
        """Identifies the pepper without revealing it (HMAC of a fixed label, hex): recorded
        in the database so that a replica started with another pepper refuses to serve."""
        return self._mac(b"authority.v1 pepper fingerprint").hex()

    def matches(self, token: ParsedToken, secret_hash: bytes) -> bool:
        """Constant-time comparison of the presented token with the stored hash."""
        return hmac.compare_digest(self.hash(token), secret_hash)
