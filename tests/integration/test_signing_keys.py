"""Signing keys through the real server, on SQLite and PostgreSQL: the published JWK set,
rotation (RPC, CLI, schedule), retirement, several processes agreeing on the current key, and
no private material anywhere it could leak."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from sqlalchemy import text

from authority.domain.access import Access
from authority.domain.clock import system_clock
from authority.domain.events import EventKind
from authority.domain.ports import EventQuery
from authority.domain.signing import KeyLifetimes, KeySealer, SigningKeys
from authority.store.database import create_engines
from authority.store.repository import SqlStore
from authority.v1 import admin_pb2
from authority.v1 import token_authority_pb2 as pb
from tests.harness import PEPPER_HEX, ServerHandle, bearer, bootstrap_admin, serve
from tests.integration.conftest import Fresh
from tests.integration.helpers import (
    current_kid,
    error_reason,
    eventually,
    issue,
    make_org,
    refused,
    signing_keys,
    validate,
)

GONE_AFTER = 900 + 86400  # the default access-token max ttl + refresh window, in seconds
AUTHORITY = Path(sys.executable).parent / "authority"
CLAIMS = {"sub": "job", "jti": "j1", "scope": "download"}


def rotate(server: ServerHandle, admin_secret: str) -> admin_pb2.RotateSigningKeyResponse:
    response: admin_pb2.RotateSigningKeyResponse = server.admin.RotateSigningKey(
        admin_pb2.RotateSigningKeyRequest(), metadata=bearer(admin_secret)
    )
    return response


def published(server: ServerHandle) -> list[str]:
    return [key.kid for key in signing_keys(server).keys]


def sign(server: ServerHandle) -> str:
    """A JWT signed by the server's current key (what ExchangeKey will hand out)."""
    return server.running.application.signing.ring.sign(CLAIMS)


def verify_offline(token: str, server: ServerHandle) -> dict[str, Any]:
    """As a service with only the published set would: PyJWT, EdDSA only, key by kid."""
    key_set = jwt.PyJWKSet.from_json(signing_keys(server).jwks_json)
    kid = jwt.get_unverified_header(token)["kid"]
    claims: dict[str, Any] = jwt.decode(token, key_set[kid].key, algorithms=["EdDSA"])
    return claims


def store_of(database_url: str) -> SqlStore:
    return SqlStore(*create_engines(database_url, 2))


def rotation_events(database_url: str) -> list[str]:
    """The kids of every signing_key.rotated event in the log, oldest first."""
    store = store_of(database_url)
    try:
        query = EventQuery(kind=EventKind.SIGNING_KEY_ROTATED.value)
        events = store.run(lambda tx: tx.find_events(query, None, 1000, newest_first=False))
        return [recorded.event.subject for recorded in events]
    finally:
        store.dispose()


def authority_cli(database_url: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items() if "AUTHORITY_" not in name}
    environment.update(AUTHORITY_DATABASE_URL=database_url, AUTHORITY_PEPPER_HEX=PEPPER_HEX)
    return subprocess.run(
        [str(AUTHORITY), *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- the published set -------------------------------------------------------------------------


def test_get_signing_keys_needs_no_bearer_and_answers_an_rfc_7517_jwk_set(fresh: Fresh) -> None:
    response = signing_keys(fresh.server)

    assert len(response.keys) == 1  # the first server made the installation's first key
    key = response.keys[0]
    assert (key.kty, key.crv, key.alg, key.use) == ("OKP", "Ed25519", "EdDSA", "sig")
    assert len(base64.urlsafe_b64decode(key.x + "=" * (-len(key.x) % 4))) == 32
    document = json.loads(response.jwks_json)
    assert document == {
        "keys": [
            {"kid": k.kid, "kty": k.kty, "crv": k.crv, "x": k.x, "alg": k.alg, "use": k.use}
            for k in response.keys
        ]
    }
    key_set = jwt.PyJWKSet.from_json(response.jwks_json)
    assert key_set[key.kid].algorithm_name == "EdDSA"


def test_rotation_publishes_the_new_key_first_and_keeps_the_old_one(fresh: Fresh) -> None:
    server = fresh.server
    old = current_kid(server)
    signed_before = sign(server)

    rotated = rotate(server, fresh.admin.secret)
    signed_after = sign(server)

    assert rotated.retired_kid == old and rotated.kid != old
    assert published(server) == [rotated.kid, old]
    assert jwt.get_unverified_header(signed_after)["kid"] == rotated.kid
    assert verify_offline(signed_before, server) == CLAIMS
    assert verify_offline(signed_after, server) == CLAIMS
    assert rotation_events(fresh.database_url)[-1] == rotated.kid


def test_a_retired_key_leaves_the_set_once_every_token_it_signed_has_expired(
    fresh: Fresh,
) -> None:
    server = fresh.server
    old = current_kid(server)
    signed_by_old = sign(server)
    new = rotate(server, fresh.admin.secret).kid

    server.clock.advance(GONE_AFTER - 1)
    still = published(server)
    verify_offline(signed_by_old, server)
    server.clock.advance(1)
    after = published(server)

    assert still == [new, old]
    assert after == [new]
    with pytest.raises(KeyError):
        verify_offline(signed_by_old, server)
    # The next rotation deletes what is gone (its sealed private key with it).
    newest = rotate(server, fresh.admin.secret).kid
    store = store_of(fresh.database_url)
    try:
        stored = {record.kid for record in store.run(lambda tx: tx.signing_keys())}
    finally:
        store.dispose()
    assert stored == {new, newest}


def test_a_second_server_on_the_database_follows_rotations_within_a_second(fresh: Fresh) -> None:
    with serve(fresh.database_url) as second:
        assert current_kid(second) == current_kid(fresh.server)

        through_first = rotate(fresh.server, fresh.admin.secret).kid
        seen_by_second = eventually(lambda: current_kid(second) == through_first)
        through_second = rotate(second, fresh.admin.secret).kid
        seen_by_first = eventually(lambda: current_kid(fresh.server) == through_second)

        assert seen_by_second and seen_by_first
        assert published(second) == published(fresh.server)
        # Both sign with the key both publish.
        token = sign(second)
        assert jwt.get_unverified_header(token)["kid"] == through_second
        assert verify_offline(token, fresh.server) == CLAIMS


def test_with_the_change_feed_off_a_server_still_picks_up_rotations(fresh: Fresh) -> None:
    with serve(fresh.database_url, feed_poll_seconds=0, cache_max_staleness_seconds=0.2) as quiet:
        new = rotate(fresh.server, fresh.admin.secret).kid

        assert eventually(lambda: current_kid(quiet) == new, seconds=2)


def test_a_token_of_a_key_another_process_just_made_verifies_here_once_the_key_arrives(
    fresh: Fresh,
) -> None:
    """Refused here while this server has not loaded the new key yet, and not for the whole
    negative TTL after: a refusal holds only for the key set it was judged against."""
    admin = bearer(fresh.admin.secret)
    org = make_org(fresh.server, fresh.admin.secret)
    key = issue(fresh.server, admin, org)
    with serve(
        fresh.database_url,
        feed_poll_seconds=0,  # no feed: it reloads the keys at start, then every 4 s
        cache_max_staleness_seconds=4.0,
        negative_cache_ttl_seconds=60.0,
    ) as slow:
        # Past its reload at start (it replaces the ring), so that the next is 4 s away.
        signing = slow.running.application.signing
        started_with = signing.ring
        eventually(lambda: signing.ring is not started_with, seconds=1)
        rotate(fresh.server, fresh.admin.secret)
        exchanged = fresh.server.tokens.ExchangeKey(pb.ExchangeKeyRequest(key=key.secret))

        before_the_reload = validate(slow, exchanged.access_token)
        verified = eventually(lambda: validate(slow, exchanged.access_token).valid, seconds=8)

    assert before_the_reload.reason == pb.REASON_UNKNOWN
    assert verified, "still refused after the new key reached this server"


def test_processes_starting_at_once_make_one_first_key(blank_database: str) -> None:
    """Each thread is a process starting up: its own engine and connections, released
    together by a barrier, on a database with no key yet."""
    processes = 4
    stores = [store_of(blank_database) for _ in range(processes)]
    lifetimes = KeyLifetimes(timedelta(seconds=900), timedelta(seconds=86400))
    holders = [
        SigningKeys(
            store,
            system_clock,
            KeySealer(bytes.fromhex(PEPPER_HEX)),
            lifetimes,
            Access(system_clock),
        )
        for store in stores
    ]
    try:
        for _ in range(10):
            with stores[0].writer.begin() as connection:
                connection.execute(text("DELETE FROM signing_keys"))
            barrier = threading.Barrier(processes)

            def start(holder: SigningKeys, barrier: threading.Barrier = barrier) -> str:
                barrier.wait(timeout=10)
                return holder.ensure_current()

            with ThreadPoolExecutor(processes) as pool:
                kids = list(pool.map(start, holders))
            records = stores[0].run(lambda tx: tx.signing_keys())

            assert len(records) == 1
            assert set(kids) == {records[0].kid}
            assert records[0].retired_at is None
    finally:
        for store in stores:
            store.dispose()


# -- access ------------------------------------------------------------------------------------


def test_rotation_by_anyone_but_a_global_administrator_is_refused_and_changes_nothing(
    fresh: Fresh,
) -> None:
    server = fresh.server
    before = published(server)
    issued = server.tokens.IssueToken(
        pb.IssueTokenRequest(organization="", label="no-scope", scopes=["download"]),
        metadata=bearer(fresh.admin.secret),
    )

    missing = refused(
        grpc.StatusCode.UNAUTHENTICATED,
        server.admin.RotateSigningKey,
        admin_pb2.RotateSigningKeyRequest(),
    )
    narrow = refused(
        grpc.StatusCode.PERMISSION_DENIED,
        server.admin.RotateSigningKey,
        admin_pb2.RotateSigningKeyRequest(),
        bearer(issued.secret),
    )

    assert error_reason(missing) == "CREDENTIALS_MISSING"
    assert error_reason(narrow) == "SCOPE_MISSING"
    assert published(server) == before


# -- the schedule ------------------------------------------------------------------------------


def test_scheduled_rotation_happens_once_across_servers_when_the_key_is_old_enough(
    blank_database: str,
) -> None:
    bootstrap_admin(blank_database)
    with (
        serve(blank_database, signing_key_rotation_seconds=10) as first,
        serve(blank_database, signing_key_rotation_seconds=10) as second,
    ):
        initial = current_kid(first)
        assert current_kid(second) == initial
        time.sleep(1.2)  # a check or two on each: the key is young
        assert rotation_events(blank_database) == [initial]

        first.clock.advance(11)
        second.clock.advance(11)
        rotated = eventually(lambda: current_kid(first) != initial, seconds=5)
        assert rotated
        new = current_kid(first)
        assert eventually(lambda: current_kid(second) == new)
        time.sleep(1.2)  # the other server checks again, finds a young key

        assert rotation_events(blank_database) == [initial, new]
        assert published(first) == published(second) == [new, initial]


# -- the CLI -----------------------------------------------------------------------------------


def test_keys_rotate_on_the_host_reaches_a_running_server_and_keys_list_shows_states(
    fresh: Fresh,
) -> None:
    old = current_kid(fresh.server)

    rotated = authority_cli(fresh.database_url, "keys", "rotate")
    new = rotated.stdout.split()[3]
    seen = eventually(lambda: current_kid(fresh.server) == new)
    listed = authority_cli(fresh.database_url, "keys", "list")

    assert rotated.returncode == 0, rotated.stderr
    assert f"Retired {old}" in rotated.stdout
    assert seen
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:2] == [new, "current"]
    assert lines[1].split()[:2] == [old, "retired"]


def test_keys_commands_refuse_another_pepper(fresh: Fresh) -> None:
    environment = {name: value for name, value in os.environ.items() if "AUTHORITY_" not in name}
    environment.update(AUTHORITY_DATABASE_URL=fresh.database_url, AUTHORITY_PEPPER_HEX="cd" * 32)

    completed = subprocess.run(
        [str(AUTHORITY), "keys", "rotate"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 1
    assert "pepper" in completed.stderr


# -- no private material -----------------------------------------------------------------------


def _private_forms(database_url: str) -> Iterator[bytes]:
    """Every stored private key, raw and in the encodings a leak would take."""
    store = store_of(database_url)
    sealer = KeySealer(bytes.fromhex(PEPPER_HEX))
    try:
        for record in store.run(lambda tx: tx.signing_keys()):
            raw = sealer.open(record.kid, record.sealed_private_key)
            yield raw
            yield raw.hex().encode()
            yield base64.b64encode(raw)
            yield base64.urlsafe_b64encode(raw).rstrip(b"=")
            yield record.sealed_private_key
            yield record.sealed_private_key.hex().encode()
    finally:
        store.dispose()


@pytest.mark.in_process
def test_no_private_key_in_any_answer_event_or_log_line(
    fresh: Fresh, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = fresh.server
    auth = bearer(fresh.admin.secret)
    answers: list[bytes] = []
    for _ in range(2):
        answers.append(rotate(server, fresh.admin.secret).SerializeToString())
    answers.append(signing_keys(server).SerializeToString())
    answers.append(signing_keys(server).jwks_json.encode())
    audit = server.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(action="signing_key.rotated"), metadata=auth
    )
    assert len(audit.events) == 3  # the first key, two rotations
    answers.append(audit.SerializeToString())
    answers.append(str(audit).encode())
    cli = [authority_cli(fresh.database_url, "keys", command) for command in ("rotate", "list")]
    outputs = [(completed.stdout + completed.stderr).encode() for completed in cli]
    store = store_of(fresh.database_url)
    try:
        events = store.run(lambda tx: tx.find_events(EventQuery(), None, 1000))
    finally:
        store.dispose()
    logged = [
        repr(record.__dict__).encode() + record.getMessage().encode() for record in caplog.records
    ]
    everything = [*answers, *outputs, *(repr(event).encode() for event in events), *logged]
    # The scan saw the server's own lines (one per RotateSigningKey) and the CLI's warning.
    rotations = [
        record
        for record in caplog.records
        if getattr(record, "rpc_method", "") == "authority.v1.Admin.RotateSigningKey"
    ]
    assert len(rotations) == 2
    assert b"signing key rotated on the server host" in outputs[0]

    forms = list(_private_forms(fresh.database_url))
    assert len(forms) == 6 * 4  # the first key and three rotations
    for text_ in everything:
        assert b"PRIVATE KEY" not in text_
        for form in forms:
            assert form not in text_
