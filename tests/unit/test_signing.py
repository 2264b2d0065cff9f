"""Signing keys without a server: sealing, the key states over time, the JWK set, and a proven
signer (what ExchangeKey and RefreshToken will sign with, verified as an offline verifier
would: with PyJWT and the published JWK set)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from authority.domain.signing import (
    ALGORITHM,
    KeyLifetimes,
    KeyRing,
    KeySealer,
    KeyState,
    SignatureRefused,
    SigningKeyRecord,
    VerifiedJws,
    current_of,
    jwks_json,
    new_kid,
    new_signing_key,
    published_until,
    rotation_due,
    state_of,
)

PEPPER = bytes.fromhex("ab" * 32)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
LIFETIMES = KeyLifetimes(timedelta(seconds=900), timedelta(seconds=86400))
GONE_AFTER = timedelta(seconds=900 + 86400)
CLAIMS = {"sub": "alice", "jti": "abc", "exp": 2_000_000_000, "scope": "download"}


def retired(record: SigningKeyRecord, at: datetime) -> SigningKeyRecord:
    return SigningKeyRecord(
        record.kid, record.public_key, record.sealed_private_key, record.created_at, at
    )


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def rotated_ring(
    sealer: KeySealer,
) -> tuple[KeyRing, SigningKeyRecord, SigningKeyRecord]:
    """Two keys: `old` created at T0 and retired at T0+1h, when `new` became current."""
    old = new_signing_key(sealer, T0)
    new = new_signing_key(sealer, T0 + timedelta(hours=1))
    old = retired(old, T0 + timedelta(hours=1))
    return KeyRing([old, new], sealer, LIFETIMES), old, new


def offline_verify(token: str, jwks: str) -> dict[str, Any]:
    """What a service with only the published set does (PyJWT, EdDSA only, key by kid)."""
    key_set = jwt.PyJWKSet.from_json(jwks)
    kid = jwt.get_unverified_header(token)["kid"]
    claims: dict[str, Any] = jwt.decode(token, key_set[kid].key, algorithms=[ALGORITHM])
    return claims


# -- sealing -----------------------------------------------------------------------------------


def raw_private(record: SigningKeyRecord, sealer: KeySealer) -> bytes:
    return sealer.open(record.kid, record.sealed_private_key)


def test_a_sealed_private_key_opens_to_the_key_that_matches_its_public_key() -> None:
    sealer = KeySealer(PEPPER)
    record = new_signing_key(sealer, T0)

    private = Ed25519PrivateKey.from_private_bytes(raw_private(record, sealer))
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )

    assert public == record.public_key
    assert raw_private(record, sealer) not in record.sealed_private_key


def test_a_sealed_key_does_not_open_under_another_pepper_kid_or_altered() -> None:
    sealer = KeySealer(PEPPER)
    record = new_signing_key(sealer, T0)
    altered = bytearray(record.sealed_private_key)
    altered[-1] ^= 1

    with pytest.raises(InvalidTag):
        KeySealer(bytes.fromhex("cd" * 32)).open(record.kid, record.sealed_private_key)
    with pytest.raises(InvalidTag):
        sealer.open(new_kid(), record.sealed_private_key)
    with pytest.raises(InvalidTag):
        sealer.open(record.kid, bytes(altered))


def test_two_seals_of_one_key_differ_by_their_nonce() -> None:
    sealer = KeySealer(PEPPER)

    assert sealer.seal("kid", b"k" * 32) != sealer.seal("kid", b"k" * 32)


def test_kids_are_random_and_url_safe() -> None:
    kids = {new_kid() for _ in range(1000)}

    assert len(kids) == 1000
    assert all(len(kid) == 22 and b64url_decode(kid) for kid in kids)


def test_no_repr_shows_private_material() -> None:
    sealer = KeySealer(PEPPER)
    ring, old, new = rotated_ring(sealer)
    shown = repr(old) + repr(new) + repr(sealer) + repr(ring) + repr(ring.views(T0))

    for record in (old, new):
        assert record.sealed_private_key.hex() not in shown
        assert repr(record.sealed_private_key)[2:20] not in shown
        assert raw_private(record, sealer).hex() not in shown


# -- states over time --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retired_after", "now_after", "state"),
    [
        (None, timedelta(days=3650), KeyState.CURRENT),
        (timedelta(0), timedelta(0), KeyState.RETIRED),
        (timedelta(0), GONE_AFTER - timedelta(seconds=1), KeyState.RETIRED),
        (timedelta(0), GONE_AFTER, KeyState.GONE),
        (timedelta(hours=5), timedelta(hours=5) + GONE_AFTER, KeyState.GONE),
        (timedelta(hours=5), GONE_AFTER, KeyState.RETIRED),
    ],
)
def test_a_retired_key_is_published_until_every_token_it_signed_is_dead(
    retired_after: timedelta | None, now_after: timedelta, state: KeyState
) -> None:
    record = new_signing_key(KeySealer(PEPPER), T0)
    if retired_after is not None:
        record = retired(record, T0 + retired_after)

    assert state_of(record, T0 + now_after, LIFETIMES) is state
    if retired_after is not None:
        assert published_until(record, LIFETIMES) == T0 + retired_after + GONE_AFTER


def test_the_current_key_is_the_newest_unretired_one() -> None:
    sealer = KeySealer(PEPPER)
    _, old, new = rotated_ring(sealer)

    assert current_of([old, new]) == new
    assert current_of([old]) is None
    assert current_of([]) is None


@pytest.mark.parametrize(
    ("age", "due"),
    [(timedelta(0), False), (timedelta(seconds=3599), False), (timedelta(hours=1), True)],
)
def test_scheduled_rotation_is_due_once_the_current_key_is_old_enough(
    age: timedelta, due: bool
) -> None:
    record = new_signing_key(KeySealer(PEPPER), T0)

    assert rotation_due(record, T0 + age, timedelta(hours=1)) is due
    assert rotation_due(None, T0, timedelta(hours=1)) is True


# -- publication -------------------------------------------------------------------------------


def test_the_published_set_is_the_current_key_first_then_retired_ones_until_gone() -> None:
    ring, old, new = rotated_ring(KeySealer(PEPPER))
    retired_at = T0 + timedelta(hours=1)

    assert [key.kid for key in ring.published(retired_at)] == [new.kid, old.kid]
    assert [key.kid for key in ring.published(retired_at + GONE_AFTER)] == [new.kid]
    assert [view.state for view in ring.views(retired_at + GONE_AFTER)] == [
        KeyState.CURRENT,
        KeyState.GONE,
    ]


def test_the_current_key_is_published_first_even_when_the_clock_stood_still() -> None:
    sealer = KeySealer(PEPPER)
    first = new_signing_key(sealer, T0)
    second = new_signing_key(sealer, T0)
    third = new_signing_key(sealer, T0)
    records = [retired(first, T0), retired(second, T0), third]

    for order in (records, records[::-1]):
        assert KeyRing(order, sealer, LIFETIMES).published(T0)[0].kid == third.kid


def test_the_jwk_set_is_rfc_8037_okp_ed25519_and_pyjwt_reads_it() -> None:
    ring, _, new = rotated_ring(KeySealer(PEPPER))
    document = jwks_json(ring.published(T0 + timedelta(hours=1)))

    keys = json.loads(document)["keys"]
    key_set = jwt.PyJWKSet.from_json(document)

    assert keys[0] == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url_encode(new.public_key),
        "kid": new.kid,
        "alg": "EdDSA",
        "use": "sig",
    }
    assert [key.key_id for key in key_set.keys] == [key["kid"] for key in keys]
    assert all(key.algorithm_name == "EdDSA" for key in key_set.keys)


# -- the signer ----------------------------------------------------------------------------------


def test_a_jwt_signed_by_the_current_key_verifies_with_the_published_set() -> None:
    ring, _, new = rotated_ring(KeySealer(PEPPER))
    now = T0 + timedelta(hours=1)

    token = ring.sign(CLAIMS)

    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "kid": new.kid, "typ": "at+jwt"}
    assert offline_verify(token, jwks_json(ring.published(now))) == CLAIMS
    assert ring.verify(token, now) == VerifiedJws(new.kid, header, CLAIMS)


def test_a_token_signed_before_rotation_verifies_until_its_key_is_gone() -> None:
    sealer = KeySealer(PEPPER)
    old = new_signing_key(sealer, T0)
    token = KeyRing([old], sealer, LIFETIMES).sign(CLAIMS)
    new = new_signing_key(sealer, T0 + timedelta(hours=1))
    ring = KeyRing([retired(old, T0 + timedelta(hours=1)), new], sealer, LIFETIMES)
    still = T0 + timedelta(hours=1) + GONE_AFTER - timedelta(seconds=1)

    assert ring.verify(token, still).claims == CLAIMS
    assert offline_verify(token, jwks_json(ring.published(still))) == CLAIMS
    assert ring.publishes(old.kid, still.timestamp())
    with pytest.raises(SignatureRefused) as refused:
        ring.verify(token, still + timedelta(seconds=1))
    assert refused.value.why == "unknown_kid"
    assert not ring.publishes(old.kid, (still + timedelta(seconds=1)).timestamp())


def test_a_key_is_published_exactly_while_it_is_in_the_published_set() -> None:
    ring, old, new = rotated_ring(KeySealer(PEPPER))
    gone = T0 + timedelta(hours=1) + GONE_AFTER
    moments = [T0, gone - timedelta(seconds=1), gone, gone + timedelta(days=365)]

    for moment in moments:
        published = {key.kid for key in ring.published(moment)}
        for kid in (old.kid, new.kid, new_kid()):
            assert ring.publishes(kid, moment.timestamp()) is (kid in published), (moment, kid)


def _forge(header: dict[str, Any], payload: dict[str, Any], signature: str = "") -> str:
    def part(value: dict[str, Any]) -> str:
        return b64url_encode(json.dumps(value, separators=(",", ":")).encode())

    return f"{part(header)}.{part(payload)}.{signature}"


def _tampered_payload(token: str) -> str:
    header, _, signature = token.split(".")
    payload = json.loads(b64url_decode(token.split(".")[1]))
    payload["scope"] = "upload download"
    body = b64url_encode(json.dumps(payload, separators=(",", ":")).encode())
    return f"{header}.{body}.{signature}"


def _tampered_header(token: str) -> str:
    header = json.loads(b64url_decode(token.split(".")[0]))
    header["typ"] = "JWT"
    _, payload, signature = token.split(".")
    return f"{b64url_encode(json.dumps(header).encode())}.{payload}.{signature}"


def _signed_non_object(ring: KeyRing) -> str:
    # A payload that is not a JSON object, truly signed by the current key (PyJWT's own JWS
    # layer signs bytes as they are).
    header = {"kid": ring.current_kid, "typ": "at+jwt"}
    private = ring._private  # the test forges what only the key can sign
    assert private is not None
    return jwt.api_jws.PyJWS().encode(b"[1, 2]", private, ALGORITHM, header)


def _hmac_with_public_key(ring: KeyRing, now: datetime, kid: str) -> str:
    # The classic confusion: HS256 keyed with the (public) verification key.
    x = ring.published(now)[0].x
    header = {"alg": "HS256", "kid": kid, "typ": "at+jwt"}
    return jwt.encode(CLAIMS, b64url_decode(x) * 2, algorithm="HS256", headers=header)


@pytest.mark.parametrize(
    ("forge", "why"),
    [
        (lambda ring, kid, token: _forge({"alg": "none", "kid": kid}, CLAIMS), "algorithm"),
        (lambda ring, kid, token: _forge({"alg": "None", "kid": kid}, CLAIMS), "algorithm"),
        (lambda ring, kid, token: _forge({"alg": "EdDSA"}, CLAIMS, "AAAA"), "unknown_kid"),
        (lambda ring, kid, token: _forge({"alg": "EdDSA", "kid": 7}, CLAIMS, "AA"), "malformed"),
        (
            lambda ring, kid, token: _forge({"alg": "EdDSA", "kid": new_kid()}, CLAIMS, "AA"),
            "unknown_kid",
        ),
        (lambda ring, kid, token: _tampered_payload(token), "signature"),
        (lambda ring, kid, token: _tampered_header(token), "signature"),
        (lambda ring, kid, token: token[:-4] + ("AAAA" if token[-4:] != "AAAA" else "BBBB"), None),
        (lambda ring, kid, token: token.replace(".", "", 1), "malformed"),
        (lambda ring, kid, token: "not a jwt", "malformed"),
        (lambda ring, kid, token: "", "malformed"),
        (
            lambda ring, kid, token: _hmac_with_public_key(ring, T0 + timedelta(hours=1), kid),
            "algorithm",
        ),
        (lambda ring, kid, token: "!" + token, "malformed"),
        (lambda ring, kid, token: "é" + token, "malformed"),
        (lambda ring, kid, token: "A" + token, "malformed"),
        (lambda ring, kid, token: b64url_encode(b"[1]") + token[token.index(".") :], "malformed"),
        (lambda ring, kid, token: b64url_encode(b"[" * 3000) + ".e30.AA", "malformed"),
        (lambda ring, kid, token: b64url_encode(b"\xff\xfe{") + ".e30.AA", "malformed"),
        (lambda ring, kid, token: token + ".", "malformed"),
        (lambda ring, kid, token: token.rsplit(".", 1)[0] + ".A", "malformed"),
        (lambda ring, kid, token: token.rsplit(".", 1)[0] + ".", "signature"),
        (
            lambda ring, kid, token: (
                _forge({"alg": "EdDSA", "kid": kid}, CLAIMS) + b64url_encode(b"\0" * 64)
            ),
            "signature",
        ),
        (lambda ring, kid, token: _signed_non_object(ring), "malformed"),
        (lambda ring, kid, token: token + "x", "malformed"),
        (lambda ring, kid, token: token.replace(".", "x.", 1), "malformed"),
    ],
    ids=[
        "alg-none",
        "alg-None",
        "no-kid",
        "kid-not-a-string",
        "unknown-kid",
        "tampered-payload",
        "tampered-header",
        "tampered-signature",
        "two-parts",
        "garbage",
        "empty",
        "hs256-with-the-public-key",
        "header-not-base64",
        "header-not-ascii",
        "header-base64-misaligned",
        "header-not-an-object",
        "header-nested-too-deeply",
        "header-not-utf8",
        "four-parts",
        "signature-one-character",
        "signature-empty",
        "signature-zeroes",
        "payload-not-an-object",
        "signature-not-canonical",
        "header-not-canonical",
    ],
)
def test_a_forged_or_tampered_token_is_refused(forge: Any, why: str | None) -> None:
    ring, _, new = rotated_ring(KeySealer(PEPPER))
    now = T0 + timedelta(hours=1)
    forged = forge(ring, new.kid, ring.sign(CLAIMS))
    document = jwks_json(ring.published(now))

    with pytest.raises(SignatureRefused) as refused:
        ring.verify(forged, now)
    if why is not None:
        assert refused.value.why == why
    with pytest.raises((jwt.InvalidTokenError, KeyError)):
        offline_verify(forged, document)


def test_a_token_signed_by_a_key_of_another_installation_is_refused() -> None:
    ring, _, _ = rotated_ring(KeySealer(PEPPER))
    stranger = KeyRing([new_signing_key(KeySealer(PEPPER), T0)], KeySealer(PEPPER), LIFETIMES)

    with pytest.raises(SignatureRefused) as refused:
        ring.verify(stranger.sign(CLAIMS), T0 + timedelta(hours=1))

    assert refused.value.why == "unknown_kid"


def test_a_token_claiming_the_current_kid_but_signed_by_another_key_is_refused() -> None:
    ring, _, new = rotated_ring(KeySealer(PEPPER))
    impostor = Ed25519PrivateKey.generate()
    token = jwt.encode(CLAIMS, impostor, algorithm="EdDSA", headers={"kid": new.kid})

    with pytest.raises(SignatureRefused) as refused:
        ring.verify(token, T0 + timedelta(hours=1))

    assert refused.value.why == "signature"


def test_with_no_current_key_nothing_is_signed() -> None:
    with pytest.raises(LookupError):
        KeyRing([], KeySealer(PEPPER), LIFETIMES).sign(CLAIMS)
