"""The Validate decision. One function serves cache hits and store reads alike."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import NamedTuple

from authority.domain.errors import InvalidArgument
from authority.domain.errors import Reason as ErrorReason
from authority.domain.models import TokenRecord
from authority.domain.scopes import PermissionMatcher, is_permission, normalize
from authority.domain.token_format import ParsedToken, SecretHasher


class Reason(enum.IntEnum):
    """Why a token was refused; the numbers are those of the proto enum."""

    OK = 0
    MALFORMED = 1
    UNKNOWN = 2
    EXPIRED = 3
    REVOKED = 4
    PERMISSION_DENIED = 5
    INVALID_PERMISSION = 6


@dataclass(frozen=True, slots=True)
class ValidationEntry:
    """What a check needs to know about a token: what the cache holds. Never the secret."""

    token_id: str
    secret_hash: bytes
    organization: str
    subject: str
    scopes: tuple[str, ...]
    matcher: PermissionMatcher
    expires_at: datetime | None
    expires_ts: float
    revoked: bool
    # Shown in Validate answers; shared with the record (an entry is never mutated).
    properties: Mapping[str, str] = field(default_factory=dict, compare=False)
    # Answers already rendered (serialized) by the api layer, by reason. They live and die
    # with the entry, so an invalidated token can never be answered from a stale one.
    rendered: dict[Reason, bytes] = field(default_factory=dict, compare=False, repr=False)
    # For a signed access token: the token id of the key it was exchanged for ("" for a key).
    parent: str = ""

    @classmethod
    def from_record(
        cls, record: TokenRecord, matcher: PermissionMatcher | None = None
    ) -> ValidationEntry:
        """Compile a stored record into the form the hot path reads."""
        return cls(
            token_id=record.token_id,
            secret_hash=record.secret_hash,
            organization=record.organization or "",
            subject=record.subject or "",
            scopes=record.scopes,
            matcher=matcher or PermissionMatcher.compile(record.scopes),
            expires_at=record.expires_at,
            expires_ts=record.expires_at.timestamp() if record.expires_at else math.inf,
            revoked=record.revoked_at is not None,
            properties=record.properties,
        )


class EntryCompiler:
    """Builds cache entries that share what many tokens have in common.

    Most tokens carry one of a few scope sets and belong to a few organisations; sharing one
    matcher, scopes tuple and organisation string among them keeps 100,000 cached entries
    small. Bounded: past `max_shapes` distinct values it simply stops sharing new ones.
    """

    def __init__(self, max_shapes: int = 10_000) -> None:
        self._max_shapes = max_shapes
        self._matchers: dict[tuple[str, ...], tuple[tuple[str, ...], PermissionMatcher]] = {}
        self._strings: dict[str, str] = {}

    def _share(self, value: str | None) -> str | None:
        if value is None:
            return None
        shared = self._strings.get(value)
        if shared is None:
            if len(self._strings) >= self._max_shapes:
                return value
            shared = self._strings[value] = value
        return shared

    def __call__(self, record: TokenRecord) -> ValidationEntry:
        shape = self._matchers.get(record.scopes)
        if shape is None:
            shape = (record.scopes, PermissionMatcher.compile(record.scopes))
            if len(self._matchers) < self._max_shapes:
                self._matchers[record.scopes] = shape
        scopes, matcher = shape
        shared = replace(
            record,
            scopes=scopes,
            organization=self._share(record.organization),
            subject=self._share(record.subject),
        )
        return ValidationEntry.from_record(shared, matcher)


class Verdict(NamedTuple):
    """The answer: `reason` is OK when valid. `entry` is set whenever the token was found."""

    reason: Reason
    entry: ValidationEntry | None

    @property
    def valid(self) -> bool:
        return self.reason is Reason.OK


MALFORMED = Verdict(Reason.MALFORMED, None)
UNKNOWN = Verdict(Reason.UNKNOWN, None)


def check(
    entry: ValidationEntry | None,
    token: ParsedToken,
    permission: str,
    now_ts: float,
    hasher: SecretHasher,
) -> Verdict:
    """Decide on a well-formed token given what is stored for its id (None: nothing).

    A wrong secret for a known id is UNKNOWN, like an unknown id, so that the answer does
    not tell a guesser that an id exists. Expiry is inclusive: at `expires_at` it is expired.
    """
    if entry is None or not hasher.matches(token, entry.secret_hash):
        return UNKNOWN
    return decide(entry, permission, now_ts)


def decide(entry: ValidationEntry, permission: str, now_ts: float) -> Verdict:
    """The decision on an authenticated token (a `tka_` value whose hash matched, or a signed
    access token whose signature was verified): revoked, expiry, then the permission."""
    if entry.revoked:
        return Verdict(Reason.REVOKED, entry)
    if now_ts >= entry.expires_ts:
        return Verdict(Reason.EXPIRED, entry)
    # Fast path: a stored exact scope is a valid permission by construction.
    if permission and permission not in entry.matcher.exact:
        normalized = normalize(permission)
        if not is_permission(normalized):
            return Verdict(Reason.INVALID_PERMISSION, entry)
        if not entry.matcher.allows(normalized):
            return Verdict(Reason.PERMISSION_DENIED, entry)
    return Verdict(Reason.OK, entry)


def check_batch_size(count: int, limit: int) -> None:
    """A ValidateBatch holds at most `limit` requests: split a larger one."""
    if count > limit:
        raise InvalidArgument(
            "requests",
            f"at most {limit} per call (got {count}); split it",
            ErrorReason.BATCH_TOO_LARGE,
        )


# A request_id is echoed back in the answer: bounded, like every input that comes back out.
MAX_REQUEST_ID = 256


def check_request_id(request_id: str) -> None:
    """A request_id is a caller's correlation key, at most MAX_REQUEST_ID characters."""
    if len(request_id) > MAX_REQUEST_ID:
        raise InvalidArgument(
            "request_id", f"at most {MAX_REQUEST_ID} characters (got {len(request_id)})"
        )


# Ping echoes its padding (the benchmark's baseline carries a Validate's worth of bytes).
MAX_PING_PAYLOAD = 4096


def check_ping_payload(payload: str) -> None:
    """Ping's padding is echoed back: bounded like every input that comes back out."""
    if len(payload) > MAX_PING_PAYLOAD:
        raise InvalidArgument(
            "payload", f"at most {MAX_PING_PAYLOAD} characters (got {len(payload)})"
        )
