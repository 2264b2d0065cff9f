"""The claims of access tokens: exchange, refresh, reading them back, with a fake clock and an
in-memory key ring (no server, no database)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from authority.domain.errors import (
    InvalidArgument,
    PermissionDenied,
    Reason,
    Unauthenticated,
    Unavailable,
)
from authority.domain.events import Event, EventKind, Initiator, Outcome
from authority.domain.exchange import (
    AccessClaims,
    AccessTokenReader,
    AccessTokens,
    ExchangeLimits,
    FailureLimiter,
    IssuedAccessToken,
    SignedClaims,
    access_entry,
    exchange_claims,
    looks_like_jwt,
    peer_address,
    read_access_token,
    refreshed_claims,
)
from authority.domain.models import TokenRecord
from authority.domain.signing import KeyLifetimes, KeyRing, KeySealer, new_signing_key
from authority.domain.token_format import new_token
from authority.domain.validation import UNKNOWN, ValidationEntry, decide
from authority.domain.validation import Reason as Verdict
from authority.domain.validation import Verdict as Answer

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LIMITS = ExchangeLimits("token-authority", timedelta(minutes=15), timedelta(hours=24))
KEY_ID = "A" * 16


def key(
    subject: str | None = None,
    scopes: tuple[str, ...] = ("download", "reports.*"),
    expires_at: datetime | None = None,
    revoked: bool = False,
) -> ValidationEntry:
    record = TokenRecord(
        token_id=KEY_ID,
        secret_hash=b"h",
        organization="acme",
        subject=subject,
        label="",
        description="",
        scopes=scopes,
        created_at=NOW - timedelta(days=1),
        expires_at=expires_at,
        revoked_at=NOW if revoked else None,
        created_by="admin",
        properties={"team": "data"},
    )
    return ValidationEntry.from_record(record)


def ring() -> KeyRing:
    sealer = KeySealer(b"p" * 32)
    lifetimes = KeyLifetimes(timedelta(minutes=15), timedelta(hours=24))
    return KeyRing([new_signing_key(sealer, NOW - timedelta(hours=1))], sealer, lifetimes)


def test_an_organisation_keys_claims() -> None:
    claims = exchange_claims(key(), (), None, "", NOW, LIMITS)

    stamp = int(NOW.timestamp())
    assert claims.as_dict() == {
        "iss": "token-authority",
        "sub": f"key:{KEY_ID}",
        "aud": "token-authority",
        "exp": stamp + 900,
        "iat": stamp,
        "jti": claims.token_id,
        "client_id": KEY_ID,
        "scope": "download reports.*",
        "org": "acme",
        "parent": KEY_ID,
        "refresh_until": stamp + 86400,
    }
    assert claims.key_subject == ""
    assert AccessClaims.from_dict(claims.as_dict()) == claims


def test_a_users_key_names_the_user_and_the_audience_asked_for() -> None:
    claims = exchange_claims(key(subject="ada"), (), None, " storage ", NOW, LIMITS)

    assert (claims.subject, claims.key_subject, claims.audience) == ("ada", "ada", "storage")


def test_each_exchange_has_a_new_jti() -> None:
    ids = {exchange_claims(key(), (), None, "", NOW, LIMITS).token_id for _ in range(50)}
    assert len(ids) == 50


@pytest.mark.parametrize(
    ("ttl", "key_expires", "lifetime"),
    [
        (None, None, 900),
        (timedelta(seconds=60), None, 60),
        (timedelta(hours=5), None, 900),
        (None, NOW + timedelta(seconds=120), 120),
        (timedelta(seconds=60), NOW + timedelta(seconds=120), 60),
        (None, NOW + timedelta(seconds=120.7), 120),
    ],
)
def test_the_lifetime_is_the_ttl_capped_by_the_maximum_and_the_keys_expiry(
    ttl: timedelta | None, key_expires: datetime | None, lifetime: int
) -> None:
    claims = exchange_claims(key(expires_at=key_expires), (), ttl, "", NOW, LIMITS)
    assert claims.expires_at - claims.issued_at == lifetime


@pytest.mark.parametrize("seconds", [0, -5, 0.5, 0.999])
def test_a_ttl_under_a_second_is_a_bad_field_not_a_token_dead_on_arrival(seconds: float) -> None:
    with pytest.raises(InvalidArgument) as refused:
        exchange_claims(key(), (), timedelta(seconds=seconds), "", NOW, LIMITS)
    assert refused.value.field == "ttl"


def test_a_subset_of_scopes_is_granted_and_more_refused() -> None:
    claims = exchange_claims(key(), ("reports.monthly",), None, "", NOW, LIMITS)
    assert claims.scopes == ("reports.monthly",)
    with pytest.raises(PermissionDenied) as refused:
        exchange_claims(key(), ("upload",), None, "", NOW, LIMITS)
    assert refused.value.reason is Reason.SCOPE_EXCEEDS_ISSUER


def test_refresh_keeps_the_claims_and_the_first_lifetime_with_a_new_jti() -> None:
    first = exchange_claims(key(), (), timedelta(seconds=300), "", NOW, LIMITS)
    later = NOW + timedelta(hours=2)  # long expired: a live parent is what counts

    renewed = refreshed_claims(first, key(), later, LIMITS)

    assert renewed.token_id != first.token_id
    assert renewed.issued_at == int(later.timestamp())
    assert renewed.expires_at == renewed.issued_at + 300
    assert renewed.refresh_until == first.refresh_until
    unchanged = ("issuer", "subject", "audience", "scopes", "organization", "parent")
    assert all(getattr(renewed, name) == getattr(first, name) for name in unchanged)


def test_refresh_is_capped_by_the_parents_expiry() -> None:
    parent = key(expires_at=NOW + timedelta(seconds=500))
    first = exchange_claims(parent, (), None, "", NOW, LIMITS)

    renewed = refreshed_claims(first, parent, NOW + timedelta(seconds=400), LIMITS)

    assert renewed.expires_at == int(NOW.timestamp()) + 500


@pytest.mark.parametrize(
    ("parent", "moment", "reason"),
    [
        (None, NOW, Reason.TOKEN_UNKNOWN),
        (key(revoked=True), NOW, Reason.TOKEN_REVOKED),
        (
            key(expires_at=NOW + timedelta(seconds=10)),
            NOW + timedelta(seconds=10),
            Reason.TOKEN_EXPIRED,
        ),
        (key(), NOW + timedelta(hours=24), Reason.TOKEN_EXPIRED),  # the window is over
    ],
)
def test_refresh_is_refused_saying_why(
    parent: ValidationEntry | None, moment: datetime, reason: Reason
) -> None:
    first = exchange_claims(key(expires_at=NOW + timedelta(hours=48)), (), None, "", NOW, LIMITS)
    with pytest.raises(Unauthenticated) as refused:
        refreshed_claims(first, parent, moment, LIMITS)
    assert refused.value.reason is reason


def test_a_signed_token_reads_back_and_every_alteration_is_refused() -> None:
    keys = ring()
    claims = exchange_claims(key(), (), None, "", NOW, LIMITS)
    token = keys.sign(claims.as_dict())

    signed = SignedClaims(keys.current_kid or "", claims)
    assert read_access_token(keys, token, NOW, LIMITS.issuer) == signed
    # Expired tokens still read (refresh needs them); the caller checks the expiry.
    assert read_access_token(keys, token, NOW + timedelta(hours=1), LIMITS.issuer) == signed
    assert read_access_token(keys, token, NOW, "someone-else") is Verdict.UNKNOWN
    assert read_access_token(ring(), token, NOW, LIMITS.issuer) is Verdict.UNKNOWN  # other key
    unsigned = jwt.encode(claims.as_dict(), "", algorithm="none")
    assert read_access_token(keys, unsigned, NOW, LIMITS.issuer) is Verdict.MALFORMED
    partial = keys.sign({"sub": "x"})
    assert read_access_token(keys, partial, NOW, LIMITS.issuer) is Verdict.MALFORMED
    odd = keys.sign({**claims.as_dict(), "exp": True})
    assert read_access_token(keys, odd, NOW, LIMITS.issuer) is Verdict.MALFORMED
    assert read_access_token(keys, "a.b", NOW, LIMITS.issuer) is Verdict.MALFORMED


@pytest.mark.parametrize(
    ("claim", "value"),
    [("exp", 10**30), ("exp", 253402300800), ("iat", -1), ("refresh_until", 2**63)],
)
def test_a_signed_token_with_a_time_no_datetime_holds_reads_as_malformed(
    claim: str, value: int
) -> None:
    keys = ring()
    claims = exchange_claims(key(), (), None, "", NOW, LIMITS).as_dict()

    token = keys.sign({**claims, claim: value})

    assert read_access_token(keys, token, NOW, LIMITS.issuer) is Verdict.MALFORMED


@pytest.mark.parametrize(
    ("value", "shaped"),
    [
        ("aaa.bbb.ccc", True),
        ("a-_.b.c", True),
        ("aaa.bbb.", False),
        ("aaa.bbb", False),
        ("a.b.c.d", False),
        ("a+b.c.d", False),
        ("a." + "b" * 5000 + ".c", False),
    ],
)
def test_what_is_worth_a_signature_check(value: str, shaped: bool) -> None:
    assert looks_like_jwt(value) is shaped


def test_an_access_tokens_entry_dies_with_its_parent() -> None:
    claims = exchange_claims(key(), ("download",), None, "", NOW, LIMITS)
    stamp = NOW.timestamp()

    alive = access_entry(claims, key())
    assert (alive.token_id, alive.subject, alive.parent) == (claims.token_id, "", KEY_ID)
    assert alive.properties == {"team": "data"}
    assert decide(alive, "download", stamp).reason is Verdict.OK
    assert decide(alive, "reports.x", stamp).reason is Verdict.PERMISSION_DENIED
    assert decide(alive, "download", stamp + 900).reason is Verdict.EXPIRED
    assert decide(access_entry(claims, key(revoked=True)), "", stamp).reason is Verdict.REVOKED
    short = key(expires_at=NOW + timedelta(seconds=5))
    assert decide(access_entry(claims, short), "", stamp + 5).reason is Verdict.EXPIRED
    assert dataclasses.replace(alive).expires_ts == stamp + 900


def test_a_peer_is_counted_by_address_not_by_port() -> None:
    assert peer_address("ipv4:10.0.0.7:51234") == "ipv4:10.0.0.7"
    assert peer_address("ipv6:[::1]:4000") == "ipv6:[::1]"
    assert peer_address("unix:/tmp/socket") == "unix:/tmp/socket"


# -- the use case: an exchange is recorded before its token is signed --------------------------


class FakeKeys:
    """The Validate cache as the exchange sees it: one live key, found by its value; access
    tokens read with `reader` (every time); the tokens handed over as signed, kept."""

    def __init__(self, value: str, entry: ValidationEntry, reader: AccessTokenReader) -> None:
        self.value = value
        self.entry = entry
        self.reader = reader
        self.held: dict[str, SignedClaims] = {}

    async def validate(self, value: str, permission: str) -> Answer:
        return Answer(Verdict.OK, self.entry) if value == self.value else UNKNOWN

    async def key_entry(self, token_id: str) -> ValidationEntry | None:
        return self.entry if token_id == self.entry.token_id else None

    def access_claims(self, value: str, now: datetime) -> AccessClaims | Verdict:
        read = self.reader.read(value, now)
        return read if isinstance(read, Verdict) else read.claims

    def signed(self, value: str, signed: SignedClaims) -> None:
        self.held[value] = signed


class Signer:
    """The key ring, counting how often it is taken (to sign)."""

    def __init__(self) -> None:
        self.ring = ring()
        self.taken = 0

    def __call__(self) -> KeyRing:
        self.taken += 1
        return self.ring


def access_tokens(
    signer: Signer, limits: ExchangeLimits = LIMITS
) -> tuple[str, FakeKeys, AccessTokens]:
    """AccessTokens over a user's live key: the key's value, the fake cache, the use cases."""
    value = new_token(KEY_ID).value
    keys = FakeKeys(value, key(subject="ada"), AccessTokenReader(lambda: signer.ring, "t-a"))
    access = AccessTokens(keys, signer, lambda: NOW, limits, FailureLimiter.default(lambda: 0.0))
    return value, keys, access


def exchange_with(
    record: Callable[[Event], Awaitable[None]], signer: Signer
) -> tuple[str, IssuedAccessToken | Exception]:
    """Exchange a user's key (scopes narrowed, an audience) through AccessTokens: its value,
    and the issued token or the exception raised."""
    value, _, access = access_tokens(signer)

    async def scenario() -> IssuedAccessToken:
        holder = await access.present(value, "ipv4:10.0.0.7:5000", "0123456789abcdef")
        return await access.exchange(holder, ["download"], None, "storage", record)

    try:
        return value, asyncio.run(scenario())
    except Exception as error:  # the test looks at it
        return value, error


def test_an_exchange_is_recorded_before_it_is_signed_naming_the_key_and_the_jti() -> None:
    signer = Signer()
    recorded: list[Event] = []
    signed_before: list[int] = []

    async def record(event: Event) -> None:
        recorded.append(event)
        signed_before.append(signer.taken)

    value, issued = exchange_with(record, signer)

    assert isinstance(issued, IssuedAccessToken)
    assert (signed_before, signer.taken) == ([0], 1)
    jti = issued.claims.token_id
    assert recorded == [
        Event(
            EventKind.ACCESS_TOKEN_ISSUED,
            NOW,
            Initiator("ada", KEY_ID, "ipv4:10.0.0.7:5000", "0123456789abcdef"),
            "acme",
            jti,
            jti,
            Outcome.OK,
            {
                "key_id": KEY_ID,
                "scopes": "download",
                "audience": "storage",
                "expires_at": (NOW + timedelta(minutes=15)).isoformat(),
                "refresh_until": (NOW + timedelta(hours=24)).isoformat(),
            },
        )
    ]
    assert value not in repr(recorded) and issued.value not in repr(recorded)


def test_a_store_that_cannot_record_refuses_the_exchange_and_nothing_is_signed() -> None:
    signer = Signer()

    async def record(event: Event) -> None:
        raise Unavailable("the token store is unavailable (OperationalError); retry shortly")

    _, outcome = exchange_with(record, signer)

    assert isinstance(outcome, Unavailable)
    assert signer.taken == 0


async def no_record(event: Event) -> None:
    pass


def test_every_token_signed_is_handed_to_the_cache_as_a_check_would_read_it() -> None:
    signer = Signer()
    limits = dataclasses.replace(LIMITS, issuer="t-a")
    value, keys, access = access_tokens(signer, limits)

    async def scenario() -> tuple[IssuedAccessToken, IssuedAccessToken]:
        holder = await access.present(value, "ipv4:10.0.0.7:5000")
        issued = await access.exchange(holder, ["download"], None, "storage", no_record)
        return issued, await access.refresh(issued.value)

    issued, refreshed = asyncio.run(scenario())

    assert keys.held == {
        token.value: read_access_token(signer.ring, token.value, NOW, "t-a")
        for token in (issued, refreshed)
    }
    assert keys.held[refreshed.value].kid == signer.ring.current_kid


def test_the_cache_is_handed_the_claims_a_check_would_read_not_those_built() -> None:
    # A scope holding a space (no scope grammar allows one; say an old row) is two scopes
    # once signed: the cache must hold what a signature check of the token would give.
    signer = Signer()
    value, keys, access = access_tokens(signer, dataclasses.replace(LIMITS, issuer="t-a"))
    keys.entry = key(subject="ada", scopes=("download", "two words"))

    async def scenario() -> IssuedAccessToken:
        holder = await access.present(value, "ipv4:10.0.0.7:5000")
        return await access.exchange(holder, [], None, "", no_record)

    issued = asyncio.run(scenario())

    held = keys.held[issued.value]
    assert held == read_access_token(signer.ring, issued.value, NOW, "t-a")
    assert held.claims.scopes == ("download", "two", "words") != issued.claims.scopes


@pytest.mark.parametrize(
    ("presented", "reason"),
    [("a.b.c", Reason.TOKEN_MALFORMED), ("not a token", Reason.TOKEN_MALFORMED)],
)
def test_refresh_of_what_the_cache_refuses_says_why(presented: str, reason: Reason) -> None:
    _, _, access = access_tokens(Signer())

    with pytest.raises(Unauthenticated) as refused:
        asyncio.run(access.refresh(presented))

    assert refused.value.reason is reason
