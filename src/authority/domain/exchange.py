"""Key exchange and refresh: short-lived signed access tokens for backend jobs.

A job holds a long-lived API key (the *parent*) and exchanges it once for an access token: a
JWT (RFC 9068) signed by the current signing key, carrying the key's organisation, subject and
scopes (or a subset), living at most `max_ttl` and never past the key's own expiry. It presents
the access token to Validate like a key, and refreshes it before (or after) it expires: a new
token with the same claims and a new expiry, as long as the parent is alive and the first
exchange was less than `refresh_window` ago (`refresh_until`, carried as a claim).

An access token dies with its parent: Validate and RefreshToken look the parent up (in the
Validate cache, which the change feed keeps exact) every time, so a revoked key's access tokens
are refused at once although their signatures still verify.

A signature is checked once per token and process: the Validate cache keeps the claims of the
tokens it verified, and of every token this process signed (ExchangeKey, RefreshToken), so that
the common refresh (a job renewing the token this replica gave it) reads no database and checks
no signature. What a cached token is accepted with is what a fresh check would give: the claims
are those of the value signed, and the key that signed it must still be published (asked on
every use, so a token whose key has gone is UNKNOWN however long it was cached).

The claims (RFC 9068): iss, sub (the key's subject, or `key:<key id>` for an organisation key),
aud (asked for, else the issuer), exp, iat, jti (the access token's public id), client_id (the
key's id), scope (space-separated); and ours: org, parent (the key's id), refresh_until.

Each exchange is in the audit trail (`access_token.issued`: which key, which jti, scopes,
audience, expiry; never the key or the token), written before the token is signed; a refused
one is recorded by the api layer like a refused management call. A refresh is not recorded: it
writes nothing, so that it needs no database while the parent key is cached.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from authority.domain import policy
from authority.domain.access import caller_from_entry
from authority.domain.audit import RefusalLimiter
from authority.domain.clock import Clock
from authority.domain.errors import InvalidArgument, ResourceExhausted, Unauthenticated
from authority.domain.errors import Reason as ErrorReason
from authority.domain.events import Event, EventKind, Initiator
from authority.domain.models import check_text
from authority.domain.policy import Caller
from authority.domain.scopes import PermissionMatcher, parse_scopes
from authority.domain.signing import ACCESS_TOKEN_TYPE, KeyRing, SignatureRefused
from authority.domain.token_format import is_token_id, new_token_id, parse_token
from authority.domain.validation import Reason, ValidationEntry, Verdict

DEFAULT_ISSUER = "token-authority"
# Longer values are not access tokens of ours (they are refused unread, as MALFORMED).
MAX_ACCESS_TOKEN_LENGTH = 4096
MAX_AUDIENCE = 200
MIN_TTL = timedelta(seconds=1)
# The times a claim may carry (seconds since the epoch): up to 9999-12-31T23:59:59Z, as far as
# a datetime (and a protobuf Timestamp) goes.
MAX_CLAIMED_TIME = 253402300799
# Failed exchanges: per key id (any failure of a well-formed key), and per peer address
# (malformed or unknown keys), a burst and a sustained rate per second.
KEY_FAILURE_BURST = 10
KEY_FAILURES_PER_SECOND = 0.2
PEER_FAILURE_BURST = 20
PEER_FAILURES_PER_SECOND = 1.0
_BASE64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_REQUIRED = {
    "iss": str,
    "sub": str,
    "aud": str,
    "exp": int,
    "iat": int,
    "jti": str,
    "client_id": str,
    "scope": str,
    "org": str,
    "parent": str,
    "refresh_until": int,
}
_TIMES = ("iat", "exp", "refresh_until")
_REFUSED = {
    "malformed": Reason.MALFORMED,
    "algorithm": Reason.MALFORMED,
    "unknown_kid": Reason.UNKNOWN,
    "signature": Reason.UNKNOWN,
}


def looks_like_jwt(value: str) -> bool:
    """Three base64url parts, bounded: worth a signature check (anything else is MALFORMED)."""
    return (
        len(value) <= MAX_ACCESS_TOKEN_LENGTH
        and value.count(".") == 2
        and all(part and _BASE64URL.issuperset(part) for part in value.split("."))
    )


@dataclass(frozen=True, slots=True)
class ExchangeLimits:
    """The settings an access token is made under."""

    issuer: str
    max_ttl: timedelta
    refresh_window: timedelta


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """The claims of one access token (times in whole seconds since the epoch)."""

    issuer: str
    subject: str
    audience: str
    issued_at: int
    expires_at: int
    token_id: str
    client_id: str
    scopes: tuple[str, ...]
    organization: str
    parent: str
    refresh_until: int

    def as_dict(self) -> dict[str, Any]:
        """The JWT payload."""
        return {
            "iss": self.issuer,
            "sub": self.subject,
            "aud": self.audience,
            "exp": self.expires_at,
            "iat": self.issued_at,
            "jti": self.token_id,
            "client_id": self.client_id,
            "scope": " ".join(self.scopes),
            "org": self.organization,
            "parent": self.parent,
            "refresh_until": self.refresh_until,
        }

    @classmethod
    def from_dict(cls, claims: Mapping[str, Any]) -> AccessClaims | None:
        """The claims if every one is present with its type and consistent; else None."""
        for name, kind in _REQUIRED.items():
            value = claims.get(name)
            # bool is an int to Python, never to us.
            if not isinstance(value, kind) or isinstance(value, bool):
                return None
        parent = claims["parent"]
        if not is_token_id(parent) or claims["client_id"] != parent:
            return None
        # Only our own key signs these, never with such times; but a datetime or a timedelta
        # built from one would overflow, and a fault must not be one check away.
        if not all(0 <= claims[name] <= MAX_CLAIMED_TIME for name in _TIMES):
            return None
        if not is_token_id(claims["jti"]) or claims["exp"] <= claims["iat"]:
            return None
        return cls(
            issuer=claims["iss"],
            subject=claims["sub"],
            audience=claims["aud"],
            issued_at=claims["iat"],
            expires_at=claims["exp"],
            token_id=claims["jti"],
            client_id=claims["client_id"],
            scopes=tuple(claims["scope"].split()),
            organization=claims["org"],
            parent=parent,
            refresh_until=claims["refresh_until"],
        )

    @property
    def key_subject(self) -> str:
        """The subject as Validate shows it for the key: empty for an organisation key."""
        return "" if self.subject == f"key:{self.parent}" else self.subject


@dataclass(frozen=True, slots=True)
class SignedClaims:
    """The claims of an access token whose signature was checked (or that this process
    signed), and the key that signed it: it must still be published when the token is used."""

    kid: str
    claims: AccessClaims


def read_access_token(
    ring: KeyRing, value: str, now: datetime, issuer: str
) -> SignedClaims | Reason:
    """The claims of an access token this service signed, whatever its expiry (the caller
    checks it); else why not: MALFORMED (not a JWT, another algorithm or type, claims
    missing) or UNKNOWN (a key not published at `now`, a bad signature, another issuer).
    The audience is not checked: it is for the services that verify offline."""
    if not looks_like_jwt(value):
        return Reason.MALFORMED
    try:
        verified = ring.verify(value, now)
    except SignatureRefused as refused:
        return _REFUSED.get(refused.why, Reason.UNKNOWN)
    if verified.header.get("typ") != ACCESS_TOKEN_TYPE:
        return Reason.MALFORMED
    claims = AccessClaims.from_dict(verified.claims)
    if claims is None:
        return Reason.MALFORMED
    if claims.issuer != issuer:
        return Reason.UNKNOWN
    return SignedClaims(verified.kid, claims)


class AccessTokenReader:
    """Access tokens read against the key ring in use (replaced whole at each rotation): what
    the Validate cache verifies a token with, and asks, at each use of one it holds, whether
    its key is still published."""

    def __init__(self, ring: Callable[[], KeyRing], issuer: str) -> None:
        self._ring = ring
        self._issuer = issuer

    def read(self, value: str, now: datetime) -> SignedClaims | Reason:
        """`read_access_token` with the ring in use and this service's issuer."""
        return read_access_token(self._ring(), value, now, self._issuer)

    def publishes(self, kid: str, now_ts: float) -> bool:
        """Whether the key `kid` is published at `now_ts` (seconds since the epoch)."""
        return self._ring().publishes(kid, now_ts)

    def key_set(self) -> KeyRing:
        """The ring in use: each reload (a rotation here or elsewhere) makes a new one."""
        return self._ring()


def exchange_claims(
    key: ValidationEntry,
    scopes: Sequence[str],
    ttl: timedelta | None,
    audience: str,
    now: datetime,
    limits: ExchangeLimits,
) -> AccessClaims:
    """The claims of a first access token for a live `key`: its scopes or the subset asked
    for (a scope it lacks: PermissionDenied SCOPE_EXCEEDS_ISSUER), living `ttl` capped by the
    maximum and by the key's expiry, refreshable until `refresh_window` from now."""
    granted = key.scopes
    if scopes:
        granted = parse_scopes(scopes, None)
        policy.may_exchange(key.matcher, granted)
    if ttl is not None and ttl < MIN_TTL:
        # Claims count whole seconds: a shorter ttl would make a token dead on arrival.
        raise InvalidArgument("ttl", "must be at least one second (or unset: the maximum)")
    lifetime = limits.max_ttl if ttl is None else min(ttl, limits.max_ttl)
    audience = check_text("audience", audience.strip(), MAX_AUDIENCE) or limits.issuer
    issued_at = math.floor(now.timestamp())
    claims = AccessClaims(
        issuer=limits.issuer,
        subject=key.subject or f"key:{key.token_id}",
        audience=audience,
        issued_at=issued_at,
        expires_at=_capped(issued_at, lifetime, key),
        token_id=new_token_id(),
        client_id=key.token_id,
        scopes=tuple(granted),
        organization=key.organization,
        parent=key.token_id,
        refresh_until=issued_at + math.floor(limits.refresh_window.total_seconds()),
    )
    if claims.expires_at <= issued_at:
        raise Unauthenticated("the key has expired: ask for a new one", ErrorReason.TOKEN_EXPIRED)
    return claims


def refreshed_claims(
    claims: AccessClaims, parent: ValidationEntry | None, now: datetime, limits: ExchangeLimits
) -> AccessClaims:
    """The same claims with a new jti and expiry (the lifetime first granted, capped as at
    the exchange), while the parent key is alive and `now` is before refresh_until; else
    Unauthenticated saying which (TOKEN_UNKNOWN, TOKEN_REVOKED or TOKEN_EXPIRED)."""
    now_ts = now.timestamp()
    if parent is None:
        raise Unauthenticated(
            "the key this access token was exchanged for no longer exists",
            ErrorReason.TOKEN_UNKNOWN,
        )
    if parent.revoked:
        raise Unauthenticated(
            "the key this access token was exchanged for was revoked: use a live key",
            ErrorReason.TOKEN_REVOKED,
        )
    if now_ts >= parent.expires_ts:
        raise Unauthenticated(
            "the key this access token was exchanged for has expired: use a live key",
            ErrorReason.TOKEN_EXPIRED,
        )
    if now_ts >= claims.refresh_until:
        raise Unauthenticated(
            "the access token is past its refresh window: exchange the key again",
            ErrorReason.TOKEN_EXPIRED,
        )
    # The key's scopes never change today; should they narrow, a refresh must not keep more.
    policy.may_exchange(parent.matcher, claims.scopes)
    issued_at = math.floor(now_ts)
    lifetime = min(timedelta(seconds=claims.expires_at - claims.issued_at), limits.max_ttl)
    expires_at = _capped(issued_at, lifetime, parent)
    if expires_at <= issued_at:
        raise Unauthenticated(
            "the key this access token was exchanged for has expired: use a live key",
            ErrorReason.TOKEN_EXPIRED,
        )
    return replace(claims, issued_at=issued_at, expires_at=expires_at, token_id=new_token_id())


def _capped(issued_at: int, lifetime: timedelta, key: ValidationEntry) -> int:
    expires_at = issued_at + math.floor(lifetime.total_seconds())
    if math.isfinite(key.expires_ts):
        expires_at = min(expires_at, math.floor(key.expires_ts))
    return expires_at


def access_entry(claims: AccessClaims, parent: ValidationEntry) -> ValidationEntry:
    """What Validate answers an access token from: its own claims, dead when its parent is
    (revoked, or expired), showing the parent's properties. A new object per parent entry, so
    that its rendered answers die with the parent's."""
    same = claims.scopes == parent.scopes
    matcher = parent.matcher if same else PermissionMatcher.compile(claims.scopes)
    expires_ts = min(float(claims.expires_at), parent.expires_ts)
    return ValidationEntry(
        token_id=claims.token_id,
        secret_hash=b"",
        organization=claims.organization,
        subject=claims.key_subject,
        scopes=claims.scopes,
        matcher=matcher,
        expires_at=datetime.fromtimestamp(expires_ts, UTC),
        expires_ts=expires_ts,
        revoked=parent.revoked,
        properties=parent.properties,
        parent=claims.parent,
    )


@dataclass(frozen=True, slots=True)
class IssuedAccessToken:
    value: str
    claims: AccessClaims


def issued_event(claims: AccessClaims, initiator: Initiator, at: datetime) -> Event:
    """ACCESS_TOKEN_ISSUED: who exchanged which key (the initiator, and `key_id`) for which
    access token (subject and token_id: its jti), with what scopes, audience and expiry.
    Never the key or the token."""
    return Event(
        EventKind.ACCESS_TOKEN_ISSUED,
        at,
        initiator,
        claims.organization or None,
        claims.token_id,
        claims.token_id,
        details={
            "key_id": claims.parent,
            "scopes": " ".join(claims.scopes),
            "audience": claims.audience,
            "expires_at": datetime.fromtimestamp(claims.expires_at, UTC).isoformat(),
            "refresh_until": datetime.fromtimestamp(claims.refresh_until, UTC).isoformat(),
        },
    )


# Writes one event in a unit of work of its own (the api layer's way to the store).
Recorder = Callable[[Event], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class KeyHolder:
    """The live API key an exchange is asked with: its entry (what it may grant) and the
    caller it makes (who exchanged, in the audit trail, for the exchange or its refusal)."""

    entry: ValidationEntry
    caller: Caller


class KeyStates(Protocol):
    """The Validate cache, as the exchange uses it: a key value's verdict, a key's entry by
    id, an access token's claims (each from the cache when it holds them); and the tokens this
    process signs, to be held as verified."""

    def validate(self, value: str, permission: str) -> Awaitable[Verdict]: ...
    def key_entry(self, token_id: str) -> Awaitable[ValidationEntry | None]: ...
    def access_claims(self, value: str, now: datetime) -> AccessClaims | Reason: ...
    def signed(self, value: str, signed: SignedClaims) -> None: ...


_KEY_REFUSALS = {
    Reason.MALFORMED: ("the key is malformed: expected a tka_... key", ErrorReason.TOKEN_MALFORMED),
    Reason.UNKNOWN: ("the key is not known to this service", ErrorReason.TOKEN_UNKNOWN),
    Reason.EXPIRED: ("the key has expired: ask for a new one", ErrorReason.TOKEN_EXPIRED),
    Reason.REVOKED: ("the key was revoked: ask for a new one", ErrorReason.TOKEN_REVOKED),
}
_TOKEN_REFUSALS = {
    Reason.MALFORMED: ("the access token is malformed", ErrorReason.TOKEN_MALFORMED),
    Reason.UNKNOWN: ("the access token was not signed by this service", ErrorReason.TOKEN_UNKNOWN),
}


class FailureLimiter:
    """Failed exchanges, limited per key id and per peer address. Only failures are counted
    and only failures refused, so a good key is never slowed by anyone else's."""

    def __init__(self, per_key: RefusalLimiter, per_peer: RefusalLimiter) -> None:
        self._per_key = per_key
        self._per_peer = per_peer

    def failed(self, key_id: str | None, peer: str | None) -> None:
        """Count one failure against the key id (a well-formed key) and against the peer
        (given for a malformed or unknown key only); ResourceExhausted, saying when to retry,
        once either is over its limit."""
        if key_id is not None and self._per_key.admit(key_id) is None:
            raise ResourceExhausted(
                "too many failed exchanges for this key: wait before trying again",
                retry_after_seconds=1 / KEY_FAILURES_PER_SECOND,
            )
        if peer is not None and self._per_peer.admit(peer_address(peer)) is None:
            raise ResourceExhausted(
                "too many failed exchanges from this address: wait before trying again",
                retry_after_seconds=1 / PEER_FAILURES_PER_SECOND,
            )

    @classmethod
    def default(cls, monotonic: Callable[[], float]) -> FailureLimiter:
        return cls(
            RefusalLimiter(KEY_FAILURES_PER_SECOND, KEY_FAILURE_BURST, monotonic),
            RefusalLimiter(PEER_FAILURES_PER_SECOND, PEER_FAILURE_BURST, monotonic),
        )


def peer_address(peer: str) -> str:
    """A gRPC peer without its port (`ipv4:10.0.0.7:51234` -> `ipv4:10.0.0.7`): a client
    gets a new port per connection, not a new allowance."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


class AccessTokens:
    """ExchangeKey and RefreshToken. Runs on the event loop: no store access of its own (the
    key states come from the Validate cache, which reads the store on a miss)."""

    def __init__(
        self,
        keys: KeyStates,
        ring: Callable[[], KeyRing],
        clock: Clock,
        limits: ExchangeLimits,
        limiter: FailureLimiter,
    ) -> None:
        self._keys = keys
        self._ring = ring
        self._clock = clock
        self._limits = limits
        self._limiter = limiter

    async def present(self, key: str, peer: str, request_id: str = "") -> KeyHolder:
        """The live API key `key` (never an access token); else Unauthenticated saying why,
        the failure counted (ResourceExhausted once over the limits)."""
        parsed = parse_token(key)
        if parsed is None:
            self._limiter.failed(None, peer)
            message, reason = _KEY_REFUSALS[Reason.MALFORMED]
            raise Unauthenticated(message, reason)
        verdict = await self._keys.validate(key, "")
        if not verdict.valid or verdict.entry is None:
            # No entry: an unknown id or a wrong secret, which the peer answers for too.
            self._limiter.failed(parsed.token_id, peer if verdict.entry is None else None)
            message, reason = _KEY_REFUSALS.get(verdict.reason, _KEY_REFUSALS[Reason.UNKNOWN])
            raise Unauthenticated(message, reason)
        return KeyHolder(verdict.entry, caller_from_entry(verdict.entry, peer, request_id))

    async def exchange(
        self,
        holder: KeyHolder,
        scopes: Sequence[str],
        ttl: timedelta | None,
        audience: str,
        record: Recorder,
    ) -> IssuedAccessToken:
        """An access token for the holder's key, recorded (`record`) before it is signed: no
        access token leaves unrecorded, and a store that cannot record refuses the exchange."""
        now = self._clock()
        claims = exchange_claims(holder.entry, scopes, ttl, audience, now, self._limits)
        await record(issued_event(claims, Initiator.of(holder.caller), now))
        return self._sign(claims)

    async def refresh(self, value: str) -> IssuedAccessToken:
        """The same claims, a new jti and expiry; no store read when the parent is cached,
        no signature check when the token is (a token this process signed, or verified).

        Not recorded in the audit trail, by design: a refresh writes nothing (the exchange
        that began the chain is recorded, and every refreshed token keeps its parent, scopes,
        audience and refresh_until)."""
        now = self._clock()
        claims = self._keys.access_claims(value, now)
        if isinstance(claims, Reason):
            message, reason = _TOKEN_REFUSALS.get(claims, _TOKEN_REFUSALS[Reason.UNKNOWN])
            raise Unauthenticated(message, reason)
        parent = await self._keys.key_entry(claims.parent)
        renewed = refreshed_claims(claims, parent, now, self._limits)
        return self._sign(renewed)

    def _sign(self, claims: AccessClaims) -> IssuedAccessToken:
        """Sign `claims` with the current key, and hand the token to the cache as verified.
        The claims it holds are read back from the payload signed, as a signature check would
        read them (so a payload a check would refuse is not held)."""
        ring = self._ring()
        payload = claims.as_dict()
        value = ring.sign(payload)
        readable = AccessClaims.from_dict(payload)
        if readable is not None and ring.current_kid is not None:
            self._keys.signed(value, SignedClaims(ring.current_kid, readable))
        return IssuedAccessToken(value, claims)
