"""Key exchange, refresh and Validate of signed access tokens, through the real server on SQLite
and PostgreSQL: the claims, the caps, the refresh window, death with the parent key, the rate
limit on failed exchanges, every tampering case, and rotation."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from authority.domain.signing import KeyRing, VerifiedJws
from authority.domain.token_format import new_token
from authority.v1 import admin_pb2
from authority.v1 import token_authority_pb2 as pb
from tests.conftest import BACKENDS
from tests.harness import ManualClock, ServerHandle, bearer, bootstrap_admin, new_database, serve
from tests.integration.conftest import Fresh
from tests.integration.helpers import (
    Credential,
    cache_stats,
    error_reason,
    issue,
    make_org,
    make_org_key,
    make_user_with_token,
    refused,
    signing_keys,
    validate,
)

MAX_TTL = 900
WINDOW = 86400
GONE_AFTER = MAX_TTL + WINDOW
# Keys that expire live two days; the tests move the clock to near their end.
KEY_TTL = 2 * 86400
ISSUER = "https://auth.example"


def exchange(server: ServerHandle, key: str, **fields: Any) -> pb.ExchangeKeyResponse:
    response: pb.ExchangeKeyResponse = server.tokens.ExchangeKey(
        pb.ExchangeKeyRequest(key=key, **fields)
    )
    return response


def refresh(server: ServerHandle, access_token: str) -> pb.RefreshTokenResponse:
    response: pb.RefreshTokenResponse = server.tokens.RefreshToken(
        pb.RefreshTokenRequest(access_token=access_token)
    )
    return response


def claims_of(token: str) -> dict[str, Any]:
    """The payload, unverified (the tests look at what was signed)."""
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def revoke(server: ServerHandle, admin_token: str, token_id: str) -> None:
    server.tokens.RevokeToken(
        pb.RevokeTokenRequest(token_id=token_id), metadata=bearer(admin_token)
    )


def key_of(server: ServerHandle, admin_token: str, org: str, **fields: Any) -> Credential:
    fields.setdefault("scopes", ["download", "upload", "reports.*"])
    issued = issue(server, bearer(admin_token), org, **fields)
    return Credential(issued.secret, issued.token.token_id, issued.token)


@pytest.fixture(scope="module", params=BACKENDS)
def jobs_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A database of this module's own: its clock jumps days and its servers come and go, and
    the other modules' servers must see none of it (not even a late event in their cache)."""
    with new_database(request.param, tmp_path_factory.mktemp(f"jobs-{request.param}")) as url:
        yield url


@pytest.fixture(scope="module")
def jobs_admin(jobs_database: str) -> str:
    return bootstrap_admin(jobs_database)


@pytest.fixture(scope="module")
def server(jobs_database: str, jobs_admin: str) -> Iterator[ServerHandle]:
    """This module's server (the conftest's `clock` and `org` fixtures use it); no expiry
    sweep, so that its cache counts only what the tests do."""
    with serve(jobs_database, expiry_sweep_seconds=0) as own:
        yield own


@pytest.fixture(scope="module")
def in_process_server(jobs_database: str, server: ServerHandle) -> Iterator[ServerHandle]:
    """`server`, or on the thin server a grpcio one in this process beside it: the tests that
    spy on the signature checks patch a class of this process."""
    if server.loop is not None:
        yield server
        return
    with serve(jobs_database, expiry_sweep_seconds=0, server="grpcio") as own:
        yield own


@pytest.fixture
def admin_token(jobs_admin: str) -> str:
    return jobs_admin


@pytest.fixture
def key(server: ServerHandle, admin_token: str, org: str) -> Credential:
    """An organisation key of `org` with download, upload and reports.*."""
    return key_of(server, admin_token, org)


# -- exchange and Validate ---------------------------------------------------------------------


def test_an_exchanged_key_gives_an_rfc_9068_access_token_that_validates_like_the_key(
    server: ServerHandle, key: Credential, org: str
) -> None:
    issued = exchange(server, key.secret)

    claims = claims_of(issued.access_token)
    header = jwt.get_unverified_header(issued.access_token)
    assert (header["alg"], header["typ"]) == ("EdDSA", "at+jwt")
    assert claims["iss"] == claims["aud"] == "token-authority"
    assert claims["sub"] == f"key:{key.token_id}"
    assert claims["client_id"] == claims["parent"] == key.token_id
    assert claims["org"] == org
    assert claims["scope"].split() == ["download", "reports.*", "upload"]
    assert claims["jti"] == issued.token_id and len(issued.token_id) == 16
    assert claims["exp"] - claims["iat"] == MAX_TTL
    assert issued.expires_at.seconds == claims["exp"]
    assert issued.refresh_until.seconds == claims["iat"] + WINDOW

    answer = validate(server, issued.access_token, "reports.monthly")
    assert answer.valid
    assert (answer.token_id, answer.organization, answer.subject) == (issued.token_id, org, "")
    assert list(answer.scopes) == ["download", "reports.*", "upload"]
    assert answer.expires_at.seconds == claims["exp"]
    denied = validate(server, issued.access_token, "billing.read")
    assert denied.reason == pb.REASON_PERMISSION_DENIED and denied.token_id == issued.token_id
    assert validate(server, issued.access_token, "not a permission").reason == (
        pb.REASON_INVALID_PERMISSION
    )


def test_a_users_key_gives_an_access_token_for_that_user(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    user = make_user_with_token(server, admin_token, org, scopes=["download"])

    issued = exchange(server, user.credential.secret, audience="storage")

    assert claims_of(issued.access_token)["sub"] == user.name
    assert claims_of(issued.access_token)["aud"] == "storage"
    assert validate(server, issued.access_token).subject == user.name


def test_access_tokens_validate_in_batches_and_streams(
    server: ServerHandle, key: Credential
) -> None:
    token = exchange(server, key.secret).access_token
    requests = [
        pb.ValidateRequest(token=token, permission="download", request_id="a"),
        pb.ValidateRequest(token=key.secret, permission="download", request_id="b"),
        pb.ValidateRequest(token=token, permission="billing.read", request_id="c"),
        pb.ValidateRequest(token=token + "x", permission="download", request_id="d"),
    ]

    batch = server.tokens.ValidateBatch(pb.ValidateBatchRequest(requests=requests)).results
    streamed = {
        answer.request_id: answer for answer in server.tokens.ValidateStream(iter(requests))
    }

    expected = [pb.REASON_UNSPECIFIED, pb.REASON_UNSPECIFIED, pb.REASON_PERMISSION_DENIED]
    assert [answer.reason for answer in batch[:3]] == expected
    assert [streamed[name].reason for name in "abc"] == expected
    assert batch[3].reason == streamed["d"].reason == pb.REASON_MALFORMED  # not base64url


def test_a_verified_access_token_is_answered_from_the_cache_afterwards(
    server: ServerHandle, key: Credential, admin_token: str
) -> None:
    token = exchange(server, key.secret).access_token
    assert validate(server, token).valid
    before = cache_stats(server, admin_token)
    for _ in range(5):
        assert validate(server, token, "download").valid
    after = cache_stats(server, admin_token)

    assert after.store_reads == before.store_reads


def test_an_access_token_is_not_a_management_bearer(server: ServerHandle, key: Credential) -> None:
    token = exchange(server, key.secret).access_token

    error = refused(
        grpc.StatusCode.UNAUTHENTICATED,
        server.tokens.GetToken,
        pb.GetTokenRequest(token_id=key.token_id),
        bearer(token),
    )
    assert error_reason(error) == "TOKEN_MALFORMED"


# -- scopes and lifetime -----------------------------------------------------------------------


def test_scopes_may_be_narrowed_never_widened(server: ServerHandle, key: Credential) -> None:
    narrowed = exchange(server, key.secret, scopes=["download", "reports.monthly"])
    assert claims_of(narrowed.access_token)["scope"] == "download reports.monthly"
    assert validate(server, narrowed.access_token, "download").valid
    assert validate(server, narrowed.access_token, "upload").reason == pb.REASON_PERMISSION_DENIED

    for wider in (["billing.read"], ["*"], ["reports.*", "download", "admin.*"]):
        error = refused(
            grpc.StatusCode.PERMISSION_DENIED,
            server.tokens.ExchangeKey,
            pb.ExchangeKeyRequest(key=key.secret, scopes=wider),
        )
        assert error_reason(error) == "SCOPE_EXCEEDS_ISSUER"
    error = refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        server.tokens.ExchangeKey,
        pb.ExchangeKeyRequest(key=key.secret, scopes=["not a scope!"]),
    )
    assert error_reason(error) == "FIELD_INVALID"


def test_the_lifetime_is_capped_by_the_setting_and_by_the_keys_expiry(
    server: ServerHandle, admin_token: str, org: str, clock: ManualClock
) -> None:
    key = key_of(server, admin_token, org)
    short = exchange(server, key.secret, ttl=Duration(seconds=60))
    long = exchange(server, key.secret, ttl=Duration(seconds=10 * MAX_TTL))
    claims = [claims_of(issued.access_token) for issued in (short, long)]
    assert [c["exp"] - c["iat"] for c in claims] == [60, MAX_TTL]

    expiring = key_of(server, admin_token, org, ttl=Duration(seconds=KEY_TTL))
    clock.advance(KEY_TTL - 120)
    capped = claims_of(exchange(server, expiring.secret).access_token)
    assert capped["exp"] == expiring.token.expires_at.seconds

    for bad in (Duration(seconds=0), Duration(seconds=-5), Duration(nanos=500_000_000)):
        error = refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            server.tokens.ExchangeKey,
            pb.ExchangeKeyRequest(key=key.secret, ttl=bad),
        )
        assert error_reason(error) == "FIELD_INVALID"


def test_a_dead_or_bad_key_is_unauthenticated_with_the_reason(
    server: ServerHandle, admin_token: str, org: str, clock: ManualClock
) -> None:
    revoked = key_of(server, admin_token, org)
    revoke(server, admin_token, revoked.token_id)
    expired = key_of(server, admin_token, org, ttl=Duration(seconds=KEY_TTL))
    clock.advance(KEY_TTL + 1)
    wrong_secret = key_of(server, admin_token, org).secret[:-12] + "A" * 12

    for value, reason in (
        (revoked.secret, "TOKEN_REVOKED"),
        (expired.secret, "TOKEN_EXPIRED"),
        ("tka_nonsense", "TOKEN_MALFORMED"),
        (wrong_secret, "TOKEN_MALFORMED"),  # the checksum no longer matches
    ):
        error = refused(
            grpc.StatusCode.UNAUTHENTICATED,
            server.tokens.ExchangeKey,
            pb.ExchangeKeyRequest(key=value),
        )
        assert error_reason(error) == reason, value


def test_an_access_token_cannot_be_exchanged_for_another(
    server: ServerHandle, key: Credential
) -> None:
    token = exchange(server, key.secret).access_token

    error = refused(
        grpc.StatusCode.UNAUTHENTICATED, server.tokens.ExchangeKey, pb.ExchangeKeyRequest(key=token)
    )
    assert error_reason(error) == "TOKEN_MALFORMED"


# -- refresh -----------------------------------------------------------------------------------


def test_refresh_after_expiry_keeps_the_claims_with_a_new_jti_and_expiry(
    server: ServerHandle, key: Credential, clock: ManualClock
) -> None:
    first = exchange(server, key.secret, scopes=["download"], ttl=Duration(seconds=300))
    clock.advance(301)
    assert validate(server, first.access_token).reason == pb.REASON_EXPIRED

    second = refresh(server, first.access_token)

    old, new = claims_of(first.access_token), claims_of(second.access_token)
    assert new["jti"] == second.token_id != old["jti"]
    assert new["iat"] == old["iat"] + 301 and new["exp"] == new["iat"] + 300
    same = ("iss", "sub", "aud", "client_id", "scope", "org", "parent", "refresh_until")
    assert {name: new[name] for name in same} == {name: old[name] for name in same}
    assert second.refresh_until == first.refresh_until
    assert validate(server, second.access_token, "download").valid
    assert validate(server, first.access_token).reason == pb.REASON_EXPIRED


def test_refresh_is_refused_past_the_refresh_window(
    server: ServerHandle, key: Credential, clock: ManualClock
) -> None:
    first = exchange(server, key.secret)
    clock.advance(WINDOW - 10)
    later = refresh(server, first.access_token)  # a refreshed token keeps the first window
    clock.advance(10)

    for token in (first.access_token, later.access_token):
        error = refused(
            grpc.StatusCode.UNAUTHENTICATED,
            server.tokens.RefreshToken,
            pb.RefreshTokenRequest(access_token=token),
        )
        assert error_reason(error) == "TOKEN_EXPIRED"
        assert "refresh window" in str(error.details())


def refresh_refused(server: ServerHandle, token: str, reason: str) -> None:
    """RefreshToken of `token` is UNAUTHENTICATED for `reason`."""
    error = refused(
        grpc.StatusCode.UNAUTHENTICATED,
        server.tokens.RefreshToken,
        pb.RefreshTokenRequest(access_token=token),
    )
    assert error_reason(error) == reason


def test_a_revoked_parent_kills_its_access_tokens_at_once_for_validate_and_refresh(
    server: ServerHandle, key: Credential, admin_token: str
) -> None:
    token = exchange(server, key.secret).access_token
    assert validate(server, token, "download").valid  # cached, with its parent

    revoke(server, admin_token, key.token_id)

    assert validate(server, token, "download").reason == pb.REASON_REVOKED
    refresh_refused(server, token, "TOKEN_REVOKED")


def test_an_expired_parent_ends_refresh_and_validate(
    server: ServerHandle, admin_token: str, org: str, clock: ManualClock
) -> None:
    parent = key_of(server, admin_token, org, ttl=Duration(seconds=KEY_TTL))
    clock.advance(KEY_TTL - 100)
    token = exchange(server, parent.secret).access_token
    clock.advance(100)

    assert validate(server, token).reason == pb.REASON_EXPIRED
    refresh_refused(server, token, "TOKEN_EXPIRED")


def test_refresh_reads_no_store_when_the_parent_is_cached(
    server: ServerHandle, key: Credential, admin_token: str
) -> None:
    token = exchange(server, key.secret).access_token
    before = cache_stats(server, admin_token)
    for _ in range(3):
        token = refresh(server, token).access_token
    after = cache_stats(server, admin_token)

    assert after.store_reads == before.store_reads


@pytest.fixture
def signature_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token whose signature a server of this process checks from now on (a spy on
    KeyRing.verify: the check still runs)."""
    checked: list[str] = []
    verify = KeyRing.verify

    def spy(ring: KeyRing, token: str, now: datetime) -> VerifiedJws:
        checked.append(token)
        return verify(ring, token, now)

    monkeypatch.setattr(KeyRing, "verify", spy)
    return checked


def test_a_job_refreshing_what_this_server_signed_pays_no_signature_check(
    in_process_server: ServerHandle, key: Credential, signature_checks: list[str]
) -> None:
    server = in_process_server
    token = exchange(server, key.secret).access_token
    for _ in range(3):
        assert validate(server, token, "download").valid
        token = refresh(server, token).access_token

    assert validate(server, token, "download").valid
    assert signature_checks == []


def test_a_token_signed_by_another_server_is_checked_once_then_refreshed_from_the_cache(
    jobs_database: str,
    in_process_server: ServerHandle,
    key: Credential,
    signature_checks: list[str],
) -> None:
    server = in_process_server
    with serve(jobs_database, expiry_sweep_seconds=0, server="grpcio") as other:
        token = exchange(other, key.secret).access_token
    assert signature_checks == []

    renewed = [refresh(server, token).access_token for _ in range(2)]

    assert validate(server, token, "download").valid
    assert all(validate(server, value, "download").valid for value in renewed)
    assert signature_checks == [token]


# -- tampering ---------------------------------------------------------------------------------


def tampered(server: ServerHandle, token: str) -> dict[str, str]:
    """Each way a token can be forged or altered, by name."""
    header, payload, signature = token.split(".")
    claims = claims_of(token)
    header_fields = json.loads(unb64(header))
    stranger = Ed25519PrivateKey.generate()
    ring = server.running.application.signing.ring
    other_payload = b64(json.dumps({**claims, "scope": "*"}).encode())
    flipped = ("A" if signature[5] != "A" else "B").join((signature[:5], signature[6:]))
    none_header = b64(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
    hs_header = b64(json.dumps({**header_fields, "alg": "HS256"}).encode())
    return {
        "alg none": f"{none_header}.{payload}.",
        "alg none with the signature": f"{none_header}.{payload}.{signature}",
        "alg HS256": f"{hs_header}.{payload}.{signature}",
        "unknown kid": jwt.encode(
            claims,
            stranger,
            algorithm="EdDSA",
            headers={"kid": "not-a-published-kid", "typ": "at+jwt"},
        ),
        "wrong issuer": ring.sign({**claims, "iss": "someone-else"}),
        "missing claims": ring.sign({"sub": claims["sub"], "exp": claims["exp"]}),
        "tampered header": f"{b64(json.dumps({**header_fields, 'x': 1}).encode())}"
        f".{payload}.{signature}",
        "tampered payload": f"{header}.{other_payload}.{signature}",
        "tampered signature": f"{header}.{payload}.{flipped}",
        "not base64url": f"{header}.{payload}.{signature}!",
        "too long": f"{header}.{payload}.{signature}{'A' * 4096}",
    }


MALFORMED_CASES = {"alg none", "alg none with the signature", "alg HS256", "missing claims"}
MALFORMED_CASES |= {"not base64url", "too long"}


def test_each_tampering_is_refused_with_its_reason_never_an_error_status(
    server: ServerHandle, key: Credential
) -> None:
    token = exchange(server, key.secret).access_token

    for name, forged in tampered(server, token).items():
        expected = pb.REASON_MALFORMED if name in MALFORMED_CASES else pb.REASON_UNKNOWN
        for _ in range(2):  # the second answer comes from the refusal cache: the same
            answer = validate(server, forged, "download")
            assert (answer.valid, answer.reason, answer.token_id) == (False, expected, ""), name
        error = refused(
            grpc.StatusCode.UNAUTHENTICATED,
            server.tokens.RefreshToken,
            pb.RefreshTokenRequest(access_token=forged),
        )
        reason = "TOKEN_MALFORMED" if name in MALFORMED_CASES else "TOKEN_UNKNOWN"
        assert error_reason(error) == reason, name
    assert validate(server, token, "download").valid  # the original is untouched


# -- rotation ----------------------------------------------------------------------------------


def rotate(server: ServerHandle, admin_secret: str) -> None:
    server.admin.RotateSigningKey(
        admin_pb2.RotateSigningKeyRequest(), metadata=bearer(admin_secret)
    )


def test_tokens_of_a_retired_key_work_while_it_is_published_and_not_once_it_is_gone(
    fresh: Fresh,
) -> None:
    server = fresh.server
    org = make_org(server, fresh.admin.secret)
    key = make_org_key(server, fresh.admin.secret, org, ["download"])
    old = exchange(server, key.secret).access_token
    unseen = exchange(server, key.secret).access_token  # first presented after the key is gone
    old_kid = jwt.get_unverified_header(old)["kid"]

    rotate(server, fresh.admin.secret)
    new = exchange(server, key.secret).access_token

    assert jwt.get_unverified_header(new)["kid"] != old_kid
    assert old_kid in [published.kid for published in signing_keys(server).keys]
    assert validate(server, old, "download").valid
    assert validate(server, new, "download").valid
    refreshed = refresh(server, old)
    assert jwt.get_unverified_header(refreshed.access_token)["kid"] != old_kid

    assert refresh(server, refreshed.access_token).access_token  # the new key's, after rotation

    server.clock.advance(GONE_AFTER)
    assert old_kid not in [published.kid for published in signing_keys(server).keys]
    # Held by the cache as verified (this server signed both, and `old` was validated and
    # refreshed), yet a key that has left the published set vouches for nothing.
    for token in (unseen, old):
        assert validate(server, token).reason == pb.REASON_UNKNOWN
        refresh_refused(server, token, "TOKEN_UNKNOWN")


# -- the limit on failed exchanges --------------------------------------------------------------


@pytest.fixture
def own_server(jobs_database: str) -> Iterator[ServerHandle]:
    """A server of its own (its limiter starts empty), on this module's database."""
    with serve(jobs_database, expiry_sweep_seconds=0) as server:
        yield server


def retry_delay(error: grpc.RpcError) -> float:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay: float = info.retry_delay.ToTimedelta().total_seconds()
            return delay
    raise AssertionError("RESOURCE_EXHAUSTED without a RetryInfo detail")


def exhausted(server: ServerHandle, key: str) -> grpc.RpcError:
    for _ in range(100):
        try:
            server.tokens.ExchangeKey(pb.ExchangeKeyRequest(key=key))
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return error
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    raise AssertionError("failed exchanges were never limited")


def test_someone_elses_failures_on_a_key_id_are_limited_and_the_good_key_is_not_slowed(
    own_server: ServerHandle, admin_token: str
) -> None:
    server = own_server
    org = make_org(server, admin_token)
    key = key_of(server, admin_token, org)
    guess = new_token(key.token_id).value  # the key's id, well formed, another secret

    error = exhausted(server, guess)

    assert error_reason(error) == "LIMIT_REACHED"
    assert 0 < retry_delay(error) <= 60
    for _ in range(3):
        assert exchange(server, key.secret).access_token


def test_a_dead_keys_failures_are_limited_per_key(
    own_server: ServerHandle, admin_token: str
) -> None:
    server = own_server
    org = make_org(server, admin_token)
    revoked = key_of(server, admin_token, org)
    revoke(server, admin_token, revoked.token_id)
    other = key_of(server, admin_token, org)

    assert error_reason(exhausted(server, revoked.secret)) == "LIMIT_REACHED"
    assert exchange(server, other.secret).access_token


def test_malformed_and_unknown_keys_are_limited_per_peer_without_slowing_good_keys(
    own_server: ServerHandle, admin_token: str
) -> None:
    server = own_server
    org = make_org(server, admin_token)
    key = key_of(server, admin_token, org)

    error = exhausted(server, "tka_garbage")

    assert error_reason(error) == "LIMIT_REACHED" and retry_delay(error) > 0
    assert exchange(server, key.secret).access_token


def test_the_issuer_is_a_setting_and_a_token_of_another_issuer_is_unknown(
    jobs_database: str, server: ServerHandle, admin_token: str
) -> None:
    org = make_org(server, admin_token)
    key = key_of(server, admin_token, org)
    with serve(jobs_database, issuer=ISSUER, expiry_sweep_seconds=0) as other:
        token = exchange(other, key.secret).access_token

        assert claims_of(token)["iss"] == claims_of(token)["aud"] == ISSUER
        assert validate(other, token).valid
        assert validate(server, token).reason == pb.REASON_UNKNOWN
