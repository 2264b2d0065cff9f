"""`OfflineVerifier` against a real server: it answers as Validate does from the published keys
alone; hostile tokens (tampered, `alg: none`, a shared-secret or another algorithm, a wrong
type, a key it never published) are refused; rotation costs one key fetch and a forged key id
cannot make it fetch more; and, watching an organisation, it refuses the tokens of a revoked
key within a second, also when the revocation came before its start or while its stream was
down, remembering a revoked key only as long as one of its tokens could be alive.

The verifier's clock is the server's ManualClock, so expiry needs no sleeping.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from authority.client import (
    IssuedToken,
    NotFound,
    OfflineVerifier,
    Reason,
    TokenAuthorityClient,
    Unauthenticated,
    ValidationResult,
)
from authority.v1 import admin_pb2
from tests.harness import (
    ManualClock,
    ServerHandle,
    bearer,
    serve,
    unique,
)
from tests.integration import own_server
from tests.integration.helpers import eventually
from tests.integration.own_server import Counting, wall

MAX_TTL = 900
# What the verifier promises: a revoked key's tokens refused within this.
REVOCATION_DELAY = 1.0


# The module's own database and server, and the fixtures around them (used by name).
own_database, admin_token, server = (
    own_server.own_database,
    own_server.admin_token,
    own_server.server,
)
admin, key, counted = own_server.admin, own_server.key, own_server.counted


@pytest.fixture
def verifier(server: ServerHandle, clock: ManualClock) -> Iterator[OfflineVerifier]:
    """A verifier that does not watch: signature and claims only."""
    with OfflineVerifier(server.address, clock=wall(clock)) as own:
        yield own


@pytest.fixture
def watching(
    server: ServerHandle, clock: ManualClock, org: str, key: IssuedToken, admin_token: str
) -> Iterator[OfflineVerifier]:
    """A verifier following `org`'s events with the administrator's token (started after
    `key` was issued: a history that is not empty settles sooner)."""
    with OfflineVerifier(
        server.address, watch_organizations=[org], watch_token=admin_token, clock=wall(clock)
    ) as own:
        yield own


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(payload)), signature


def assemble(header: dict[str, Any], payload: dict[str, Any], signature: str) -> str:
    encoded = [b64(json.dumps(part).encode()) for part in (header, payload)]
    return ".".join([*encoded, signature])


def refused_within(
    verifier: OfflineVerifier, token: str, seconds: float
) -> tuple[ValidationResult, float]:
    """Poll until `token` is refused or `seconds` have passed: the answer and how long it took."""
    start = time.monotonic()
    while True:
        answer = verifier.verify(token)
        elapsed = time.monotonic() - start
        if not answer.valid or elapsed >= seconds:
            return answer, elapsed
        time.sleep(0.01)


# -- what a signature and the claims say ---------------------------------------------------


def test_a_fresh_token_is_answered_offline_exactly_as_validate_answers_it(
    verifier: OfflineVerifier, admin: TokenAuthorityClient, key: IssuedToken
) -> None:
    token = admin.exchange_key(key.secret).access_token
    permissions = [
        "",
        "download",
        "reports.monthly",
        "/reports.v1.Reports/Get",
        "upload",
        "reportsx",
        "not a permission!",
        "reports.*",
    ]

    offline = [verifier.verify(token, permission) for permission in permissions]
    online = [admin.validate(token, permission) for permission in permissions]

    assert offline == online
    assert [answer.reason for answer in offline] == [
        Reason.UNSPECIFIED,
        Reason.UNSPECIFIED,
        Reason.UNSPECIFIED,
        Reason.UNSPECIFIED,
        Reason.PERMISSION_DENIED,
        Reason.PERMISSION_DENIED,
        Reason.INVALID_PERMISSION,
        Reason.INVALID_PERMISSION,
    ]


def test_a_users_token_shows_the_user_as_its_subject(
    verifier: OfflineVerifier, admin: TokenAuthorityClient, org: str
) -> None:
    user = admin.create_principal(unique("user")).name
    admin.add_member(org, user, "member")
    users_key = admin.issue_token(org, "mine", subject=user, scopes=["download"])

    answer = verifier.verify(admin.exchange_key(users_key.secret).access_token, "download")

    assert answer.valid and answer.subject == user and answer.organization == org


def test_a_tampered_token_is_unknown_and_what_is_no_token_at_all_is_malformed(
    verifier: OfflineVerifier, admin: TokenAuthorityClient, key: IssuedToken
) -> None:
    token = admin.exchange_key(key.secret, scopes=["download"]).access_token
    header, payload, signature = parts(token)
    widened = assemble(header, {**payload, "scope": "download upload"}, signature)
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]

    assert verifier.verify(widened, "upload").reason is Reason.UNKNOWN
    assert verifier.verify(flipped).reason is Reason.UNKNOWN
    for garbage in ("", "garbage", "a.b", "a..c", "a.b.c!", key.secret, token + "." + token):
        assert verifier.verify(garbage).reason is Reason.MALFORMED, garbage
    assert verifier.verify("a" * 5000 + ".b.c").reason is Reason.MALFORMED
    assert verifier.verify(token, "download").valid  # the original is untouched


def test_alg_none_a_shared_secret_and_a_mismatched_algorithm_are_refused_unverified(
    verifier: OfflineVerifier, admin: TokenAuthorityClient, key: IssuedToken
) -> None:
    token = admin.exchange_key(key.secret).access_token
    header, payload, _ = parts(token)
    kid = header["kid"]
    public_x = json.loads(admin.signing_keys())["keys"][0]["x"]
    typed = {"kid": kid, "typ": "at+jwt"}  # PyJWT adds the `alg` it signs with

    unsigned = assemble({**header, "alg": "none"}, payload, "AA")
    # The classic confusion: HMAC keyed with the public key, which anyone can fetch.
    hmac_signed = jwt.encode(payload, public_x.encode(), algorithm="HS256", headers=typed)
    # Another allowed algorithm, but not the one the key named `kid` is for.
    es256 = jwt.encode(
        payload, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers=typed
    )
    # Signed by a key the service never published, under its kid; then with the right type
    # missing.
    impostor = Ed25519PrivateKey.generate()
    forged = jwt.encode(payload, impostor, algorithm="EdDSA", headers=typed)
    untyped = jwt.encode(payload, impostor, algorithm="EdDSA", headers={"kid": kid, "typ": "JWT"})

    assert verifier.verify(unsigned).reason is Reason.MALFORMED
    assert verifier.verify(hmac_signed).reason is Reason.MALFORMED
    assert verifier.verify(es256).reason is Reason.MALFORMED
    assert verifier.verify(forged).reason is Reason.UNKNOWN
    assert verifier.verify(untyped).reason is Reason.MALFORMED


def test_a_token_for_another_audience_or_from_another_issuer_is_unknown(
    server: ServerHandle, clock: ManualClock, admin: TokenAuthorityClient, key: IssuedToken
) -> None:
    for_storage = admin.exchange_key(key.secret, audience="storage").access_token
    for_anyone = admin.exchange_key(key.secret).access_token

    with OfflineVerifier(server.address, audience="storage", clock=wall(clock)) as storage:
        assert storage.verify(for_storage).valid
        assert storage.verify(for_anyone).reason is Reason.UNKNOWN
    with OfflineVerifier(server.address, issuer="elsewhere", clock=wall(clock)) as other:
        assert other.verify(for_storage).reason is Reason.UNKNOWN


def test_a_token_is_expired_from_its_expiry_on_with_the_leeway_given(
    server: ServerHandle, clock: ManualClock, admin: TokenAuthorityClient, key: IssuedToken
) -> None:
    issued = admin.exchange_key(key.secret, ttl=timedelta(minutes=5))
    with OfflineVerifier(server.address, clock=wall(clock), leeway=30) as lenient:
        clock.advance(5 * 60 - 1)
        assert lenient.verify(issued.access_token).valid
        clock.advance(1 + 29)
        assert lenient.verify(issued.access_token).valid
        clock.advance(1)
        expired = lenient.verify(issued.access_token, "download")

    assert (expired.reason, expired.token_id) == (Reason.EXPIRED, issued.token_id)
    assert expired.expires_at == issued.expires_at
    assert admin.validate(issued.access_token).reason is Reason.EXPIRED


# -- the published keys ------------------------------------------------------------------------


def test_after_a_rotation_one_fetch_verifies_tokens_of_the_old_and_the_new_key(
    server: ServerHandle,
    clock: ManualClock,
    admin: TokenAuthorityClient,
    admin_token: str,
    key: IssuedToken,
    counted: tuple[grpc.Channel, Counting],
) -> None:
    channel, counting = counted
    with OfflineVerifier(channel=channel, clock=wall(clock)) as verifier:
        signed_by_old = admin.exchange_key(key.secret).access_token
        assert verifier.verify(signed_by_old).valid
        assert counting.calls["GetSigningKeys"] == 1

        rotated = server.admin.RotateSigningKey(
            admin_pb2.RotateSigningKeyRequest(), metadata=bearer(admin_token)
        )
        signed_by_new = admin.exchange_key(key.secret).access_token
        assert jwt.get_unverified_header(signed_by_new)["kid"] == rotated.kid
        assert verifier.verify(signed_by_old).valid  # a key it holds: no fetch
        assert counting.calls["GetSigningKeys"] == 1

        assert verifier.verify(signed_by_new, "download").valid
        assert verifier.verify(signed_by_old, "download").valid
        assert counting.calls["GetSigningKeys"] == 2
        assert verifier.key_fetches == 2


def test_forged_key_ids_cost_at_most_one_fetch_per_interval(
    server: ServerHandle,
    clock: ManualClock,
    admin: TokenAuthorityClient,
    key: IssuedToken,
    counted: tuple[grpc.Channel, Counting],
) -> None:
    channel, counting = counted
    header, payload, signature = parts(admin.exchange_key(key.secret).access_token)

    def forged(number: int) -> str:
        return assemble({**header, "kid": f"no-such-key-{number}"}, payload, signature)

    with OfflineVerifier(channel=channel, clock=wall(clock), refetch_interval=5) as verifier:
        clock.advance(5)
        first = [verifier.verify(forged(number)).reason for number in range(50)]
        assert counting.calls["GetSigningKeys"] == 2  # the start, then one for the first
        clock.advance(5)
        assert verifier.verify(forged(50)).reason is Reason.UNKNOWN
        assert counting.calls["GetSigningKeys"] == 3

    assert set(first) == {Reason.UNKNOWN}


# -- revocation through the event stream -------------------------------------------------------


def test_a_revoked_keys_tokens_are_refused_within_a_second(
    watching: OfflineVerifier, admin: TokenAuthorityClient, key: IssuedToken, org: str
) -> None:
    token = admin.exchange_key(key.secret).access_token
    other_key = admin.issue_token(org, "other", scopes=["download"])
    other = admin.exchange_key(other_key.secret).access_token
    assert watching.verify(token, "download").valid and watching.watching

    admin.revoke_token(key.token.token_id)
    answer, delay = refused_within(watching, token, seconds=5 * REVOCATION_DELAY)

    assert answer.reason is Reason.REVOKED and answer.token_id
    assert delay < REVOCATION_DELAY
    assert watching.verify(other, "download").valid
    assert watching.tracked_parents == 1


def test_a_key_revoked_before_the_start_is_refused_as_soon_as_start_returns(
    server: ServerHandle,
    clock: ManualClock,
    admin: TokenAuthorityClient,
    admin_token: str,
    key: IssuedToken,
    org: str,
) -> None:
    token = admin.exchange_key(key.secret).access_token
    admin.revoke_token(key.token.token_id)

    with OfflineVerifier(
        server.address, watch_organizations=[org], watch_token=admin_token, clock=wall(clock)
    ) as verifier:
        assert verifier.verify(token).reason is Reason.REVOKED


def test_a_watching_verifier_refuses_tokens_of_organisations_it_does_not_watch(
    watching: OfflineVerifier, admin: TokenAuthorityClient
) -> None:
    elsewhere = admin.create_organization(unique("elsewhere")).name
    foreign_key = admin.issue_token(elsewhere, "foreign")
    foreign = admin.exchange_key(foreign_key.secret).access_token

    assert admin.validate(foreign).valid
    assert watching.verify(foreign).reason is Reason.UNKNOWN


def test_a_revoked_key_is_forgotten_once_every_token_it_could_have_parented_has_expired(
    watching: OfflineVerifier,
    admin: TokenAuthorityClient,
    key: IssuedToken,
    org: str,
    clock: ManualClock,
) -> None:
    first = admin.exchange_key(key.secret).access_token
    admin.revoke_token(key.token.token_id)
    assert refused_within(watching, first, 5)[0].reason is Reason.REVOKED
    second_key = admin.issue_token(org, "second")

    clock.advance(MAX_TTL)
    second = admin.exchange_key(second_key.secret).access_token
    admin.revoke_token(second_key.token.token_id)  # the next event makes room
    assert refused_within(watching, second, 5)[0].reason is Reason.REVOKED

    assert watching.tracked_parents == 1
    assert watching.verify(first).reason is Reason.EXPIRED


def test_the_watch_resumes_after_the_server_restarts_and_sees_what_happened_meanwhile(
    own_database: str,
    admin: TokenAuthorityClient,
    admin_token: str,
    key: IssuedToken,
    org: str,
) -> None:
    with serve(own_database) as first:
        port, clock = first.port, first.clock
        verifier = OfflineVerifier(
            first.address, watch_organizations=[org], watch_token=admin_token, clock=wall(clock)
        )
        verifier.start()
        token = admin.exchange_key(key.secret).access_token
        assert verifier.verify(token).valid

    try:
        assert eventually(lambda: not verifier.watching, 5)
        # Revoked through another server of the same database while the stream is down.
        admin.revoke_token(key.token.token_id)
        assert verifier.verify(token).valid

        with serve(own_database, listen=f"127.0.0.1:{port}"):
            answer, _ = refused_within(verifier, token, seconds=10)
            assert answer.reason is Reason.REVOKED
            assert verifier.watching
    finally:
        verifier.close()


def test_a_watch_the_service_refuses_fails_the_start(
    server: ServerHandle, clock: ManualClock, admin: TokenAuthorityClient, org: str
) -> None:
    watcher = admin.issue_token(org, "watcher")
    admin.revoke_token(watcher.token.token_id)

    with pytest.raises(Unauthenticated) as revoked:
        OfflineVerifier(
            server.address, watch_organizations=[org], watch_token=watcher.secret
        ).start()
    live = admin.issue_token(org, "watcher", scopes=["authority.v1.*"]).secret
    with pytest.raises(NotFound):
        OfflineVerifier(
            server.address, watch_organizations=[unique("nowhere")], watch_token=live
        ).start()
    unstarted = OfflineVerifier(server.address, watch_organizations=[org], watch_token=live)
    with pytest.raises(RuntimeError, match="start"):
        unstarted.verify("a.b.c")
    unstarted.close()

    assert revoked.value.reason == "TOKEN_REVOKED"
    assert watcher.secret not in str(revoked.value)


def test_without_pyjwt_the_verifier_says_which_extra_to_install(
    server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "jwt", None)

    with pytest.raises(ImportError, match=r"authority-client\[verify\]"):
        OfflineVerifier(server.address)
