"""WatchEvents through the real server (issue 8): history then live, resumption, access, expiry.

Streams are read with a deadline: `take` waits for a number of events (the deadline only stops a
test that would otherwise hang), `drain` reads until the stream has been quiet for a moment,
which is how a test shows that nothing more (a duplicate, a hidden token's event) is coming.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from authority.domain.token_format import SecretHasher, parse_token
from authority.v1 import token_authority_pb2 as pb
from tests.conftest import Deployment
from tests.harness import PEPPER_HEX, ServerHandle, bearer, bootstrap_admin, serve
from tests.integration.helpers import (
    MANAGE_SCOPES,
    Metadata,
    bad_request_fields,
    error_message,
    error_reason,
    issue,
    make_org,
    make_org_key,
    make_user_with_token,
)

ISSUED = pb.TOKEN_EVENT_KIND_ISSUED
REVOKED = pb.TOKEN_EVENT_KIND_REVOKED
EXPIRED = pb.TOKEN_EVENT_KIND_EXPIRED
EXPIRING = pb.TOKEN_EVENT_KIND_EXPIRING
# Only stops a test that would hang: every wait below is for something that comes at once.
DEADLINE = 30.0
# How long a stream must stay quiet for `drain` to take it that nothing more is coming.
QUIET = 1.5


class Stream(Protocol):
    """A server stream as the client holds it: its events, and a way to hang up."""

    def __iter__(self) -> Iterator[pb.TokenEvent]: ...
    def __next__(self) -> pb.TokenEvent: ...
    def cancel(self) -> bool: ...


def watch(
    server: ServerHandle,
    metadata: Metadata,
    organization: str,
    after: int = 0,
    deadline: float = DEADLINE,
) -> Stream:
    stream: Stream = server.tokens.WatchEvents(
        pb.WatchEventsRequest(organization=organization, after_sequence=after),
        metadata=metadata,
        timeout=deadline,
    )
    return stream


def take(stream: Stream, count: int) -> list[pb.TokenEvent]:
    """The next `count` events of the stream (the stream stays open)."""
    return [next(stream) for _ in range(count)]


def take_until(stream: Stream, done: Callable[[list[pb.TokenEvent]], bool]) -> list[pb.TokenEvent]:
    """Events until `done` says the ones read so far are enough."""
    events: list[pb.TokenEvent] = []
    while not done(events):
        events.append(next(stream))
    return events


def drain(
    server: ServerHandle, metadata: Metadata, organization: str, after: int = 0
) -> list[pb.TokenEvent]:
    """Every event the stream sends until it has been quiet for QUIET seconds."""
    events: list[pb.TokenEvent] = []
    stream = watch(server, metadata, organization, after, deadline=QUIET)
    try:
        events.extend(stream)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    return events


def refusal(stream: Stream) -> grpc.RpcError:
    """The error that ends a stream (before or after some events)."""
    with pytest.raises(grpc.RpcError) as caught:
        for _ in stream:
            pass
    assert caught.value.details(), "a refusal must carry a message a person can act on"
    return caught.value


def kinds_and_ids(events: list[pb.TokenEvent]) -> list[tuple[int, str]]:
    return [(event.kind, event.token_id) for event in events]


def assert_in_order_once(events: list[pb.TokenEvent]) -> None:
    sequences = [event.sequence for event in events]
    assert sequences == sorted(set(sequences)), f"out of order or repeated: {sequences}"


# -- history, then live --------------------------------------------------------------------------


def test_history_then_live_events_in_commit_order(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    admin = bearer(admin_token)
    first, second = issue(server, admin, org), issue(server, admin, org)
    server.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=first.token.token_id), metadata=admin)
    stream = watch(server, admin, org)

    history = take(stream, 3)
    third = issue(server, admin, org)
    live = take(stream, 1)

    assert kinds_and_ids(history + live) == [
        (ISSUED, first.token.token_id),
        (ISSUED, second.token.token_id),
        (REVOKED, first.token.token_id),
        (ISSUED, third.token.token_id),
    ]
    assert_in_order_once(history + live)
    event = live[0]
    assert event.organization == org and event.actor == "admin" and event.subject == ""
    assert event.occurred_at.ToDatetime() and not event.HasField("expires_at")
    resumed = drain(server, admin, org, after=history[1].sequence)
    assert kinds_and_ids(resumed) == kinds_and_ids(history[2:] + live)


def test_asked_for_a_caught_up_mark_the_stream_sends_one_after_the_history_and_none_otherwise(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    admin = bearer(admin_token)
    first, second = issue(server, admin, org), issue(server, admin, org)
    request = pb.WatchEventsRequest(organization=org, mark_caught_up=True)
    stream: Stream = server.tokens.WatchEvents(request, metadata=admin, timeout=DEADLINE)

    history = take(stream, 3)
    third = issue(server, admin, org)
    live = take(stream, 1)

    assert kinds_and_ids(history + live) == [
        (ISSUED, first.token.token_id),
        (ISSUED, second.token.token_id),
        (pb.TOKEN_EVENT_KIND_CAUGHT_UP, ""),
        (ISSUED, third.token.token_id),
    ]
    # The mark carries the position to resume from: the last event sent before it.
    assert history[2].sequence == history[1].sequence
    resumed = server.tokens.WatchEvents(
        pb.WatchEventsRequest(
            organization=org, after_sequence=live[0].sequence, mark_caught_up=True
        ),
        metadata=admin,
        timeout=DEADLINE,
    )
    mark = next(resumed)
    assert (mark.kind, mark.sequence) == (pb.TOKEN_EVENT_KIND_CAUGHT_UP, live[0].sequence)
    resumed.cancel()
    # Unasked, no mark: a consumer that knows only token events never sees one.
    assert pb.TOKEN_EVENT_KIND_CAUGHT_UP not in [event.kind for event in drain(server, admin, org)]
    stream.cancel()


def test_events_committed_through_another_server_reach_the_stream(
    deployment: Deployment, cached: ServerHandle, org: str
) -> None:
    admin = bearer(deployment.admin_token)
    stream = watch(cached, admin, org)
    issued = issue(deployment.server, admin, org)
    deployment.server.tokens.RevokeToken(
        pb.RevokeTokenRequest(token_id=issued.token.token_id), metadata=admin
    )

    assert kinds_and_ids(take(stream, 2)) == [
        (ISSUED, issued.token.token_id),
        (REVOKED, issued.token.token_id),
    ]


def test_events_name_the_tokens_principal_and_expiry_and_never_a_secret_or_hash(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    admin = bearer(admin_token)
    user = make_user_with_token(server, admin_token, org, role="admin")
    personal = issue(server, user.metadata, org, subject=user.name, ttl=Duration(seconds=7200))
    key = issue(server, admin, org)
    server.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=key.token.token_id), metadata=admin)
    hasher = SecretHasher(bytes.fromhex(PEPPER_HEX))
    secrets = [user.credential.secret, personal.secret, key.secret]

    events = drain(server, admin, org)

    by_token = {(event.kind, event.token_id): event for event in events}
    mine = by_token[(ISSUED, personal.token.token_id)]
    assert mine.subject == user.name and mine.actor == user.name
    assert mine.expires_at == personal.token.expires_at
    assert by_token[(REVOKED, key.token.token_id)].actor == "admin"
    for event in events:
        text, raw = str(event), event.SerializeToString()
        for secret in secrets:
            parsed = parse_token(secret)
            assert parsed is not None
            digest = hasher.hash(parsed)
            assert secret not in text and secret.encode() not in raw
            assert digest not in raw and digest.hex() not in text


# -- resumption ----------------------------------------------------------------------------------


def test_a_consumer_resuming_many_times_under_write_load_sees_every_event_once_in_order(
    deployment: Deployment, cached: ServerHandle, org: str
) -> None:
    """A writer issues and revokes while a consumer reads a few events, hangs up and resumes
    from the last sequence it saw, alternately on two servers of the one database."""
    server, admin = deployment.server, bearer(deployment.admin_token)
    written: list[tuple[int, str]] = []
    writing_done = threading.Event()
    failures: list[BaseException] = []

    def write() -> None:
        try:
            issued: list[str] = []
            for round_number in range(60):
                token_id = issue(server, admin, org).token.token_id
                written.append((ISSUED, token_id))
                issued.append(token_id)
                if round_number % 2:
                    victim = issued.pop(0)
                    server.tokens.RevokeToken(
                        pb.RevokeTokenRequest(token_id=victim), metadata=admin
                    )
                    written.append((REVOKED, victim))
        except BaseException as error:  # surfaced by the main thread
            failures.append(error)
        finally:
            writing_done.set()

    writer = threading.Thread(target=write, name="watch-writer")
    writer.start()
    seen: list[pb.TokenEvent] = []
    last = 0
    resumes = 0
    started = time.monotonic()
    while not (writing_done.is_set() and len(seen) >= len(written)):
        assert time.monotonic() - started < 60, f"stuck after {len(seen)} of {len(written)}"
        # Short-lived streams: a deadline is one more way of being disconnected.
        stream = watch((server, cached)[resumes % 2], admin, org, after=last, deadline=3.0)
        want = 1 + resumes % 5  # disconnect after 1..5 events, mid-history or live
        try:
            for _ in range(want):
                event = next(stream)
                seen.append(event)
                last = event.sequence
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
        finally:
            stream.cancel()
        resumes += 1
    writer.join()

    assert not failures, failures
    assert resumes >= 15
    assert_in_order_once(seen)
    assert kinds_and_ids(seen) == written
    assert drain(server, admin, org, after=last) == []


# -- access: as ListTokens -----------------------------------------------------------------------


def test_watchers_see_what_they_may_list_and_nothing_of_another_organisation(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    admin = bearer(admin_token)
    alice = make_user_with_token(server, admin_token, org, role="member", prefix="alice")
    bob = make_user_with_token(server, admin_token, org, role="member", prefix="bob")
    own = issue(server, alice.metadata, org, subject=alice.name)
    key = make_org_key(server, admin_token, org, MANAGE_SCOPES)
    everything = [
        alice.credential.token_id,
        bob.credential.token_id,
        own.token.token_id,
        key.token_id,
    ]
    other_org = make_org(server, admin_token)
    stranger = make_user_with_token(server, admin_token, other_org, role="owner")
    download_only = issue(server, admin, org, scopes=["download"])

    def watched(metadata: Metadata) -> list[str]:
        return [event.token_id for event in drain(server, metadata, org)]

    assert watched(alice.metadata) == [alice.credential.token_id, own.token.token_id]
    assert watched(bob.metadata) == [bob.credential.token_id]
    assert watched(key.metadata)[:4] == everything
    assert watched(admin)[:4] == everything
    hidden = refusal(watch(server, stranger.metadata, org))
    assert hidden.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(hidden) == "ORGANIZATION_NOT_FOUND"
    missing = refusal(watch(server, admin, f"{org}-nope"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    unscoped = refusal(watch(server, bearer(download_only.secret), org))
    assert unscoped.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(unscoped) == "SCOPE_MISSING"
    anonymous = refusal(watch(server, (), org))
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED


def test_resuming_from_before_what_the_retention_kept_is_refused_not_silently_skipped(
    blank_database: str,
) -> None:
    admin_token = bootstrap_admin(blank_database)
    admin = bearer(admin_token)
    with serve(
        blank_database, audit_retention_days=30, audit_retention_interval_seconds=0.05
    ) as server:
        org = make_org(server, admin_token)
        first = issue(server, admin, org)
        seen = take(watch(server, admin, org), 1)[0].sequence  # a consumer saw this, and left
        issue(server, admin, org)
        server.clock.advance(timedelta(days=31).total_seconds())  # the retention prunes
        fresh = issue(server, admin, org)  # newer than the cutoff: kept
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                take(watch(server, admin, org, after=seen), 1)
            except grpc.RpcError as error:
                gone = error
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the retention never pruned the events after the position")
        from_now = take(watch(server, admin, org, after=0), 1)

    assert gone.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(gone) == "POSITION_EXPIRED"
    assert first.token.token_id not in error_message(gone)
    assert [event.token_id for event in from_now] == [fresh.token.token_id]


@pytest.mark.parametrize(
    ("organization", "after", "field"),
    [("", 0, "organization"), ("Not An Org!", 0, "organization"), (None, -1, "after_sequence")],
)
def test_a_malformed_watch_names_its_field(
    server: ServerHandle,
    admin_token: str,
    org: str,
    organization: str | None,
    after: int,
    field: str,
) -> None:
    error = refusal(
        watch(server, bearer(admin_token), org if organization is None else organization, after)
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == [field]


def test_a_stream_ends_with_unauthenticated_at_the_next_event_once_its_bearer_is_revoked(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    admin = bearer(admin_token)
    watcher = make_user_with_token(server, admin_token, org, role="admin")
    stream = watch(server, watcher.metadata, org)
    take(stream, 1)  # the watcher's own token, issued
    issue(server, admin, org)
    take(stream, 1)

    revoked_at = time.monotonic()
    server.tokens.RevokeToken(
        pb.RevokeTokenRequest(token_id=watcher.credential.token_id), metadata=admin
    )
    error = refusal(stream)

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(error) == "TOKEN_REVOKED"
    assert time.monotonic() - revoked_at < 2.0  # woken by the event, not by the periodic check


# -- expiry: announced when the time comes -------------------------------------------------------


@pytest.fixture
def sweeping(deployment: Deployment) -> Iterator[ServerHandle]:
    """A server of its own (own clock) on the deployment's database, sweeping every 20 ms."""
    with serve(deployment.database_url, expiry_sweep_seconds=0.02) as server:
        yield server


def test_expiring_then_expired_are_announced_once_when_the_time_comes(
    deployment: Deployment, sweeping: ServerHandle, org: str
) -> None:
    admin = bearer(deployment.admin_token)
    ttl = timedelta(hours=2)
    soon = issue(sweeping, admin, org, ttl=Duration(seconds=int(ttl.total_seconds())))
    later = issue(sweeping, admin, org, ttl=Duration(seconds=3 * 86400))
    stream = watch(sweeping, admin, org)

    # Within the warning window (a day) from the start: warned at the next sweep.
    warned = take(stream, 3)
    sweeping.clock.advance((ttl + timedelta(seconds=1)).total_seconds())
    expired = take(stream, 1)

    # The warning may come between the two issues: a sweep may run at any moment.
    assert sorted(kinds_and_ids(warned)) == sorted(
        [
            (ISSUED, soon.token.token_id),
            (ISSUED, later.token.token_id),
            (EXPIRING, soon.token.token_id),
        ]
    )
    assert warned[0].token_id == soon.token.token_id
    assert kinds_and_ids(expired) == [(EXPIRED, soon.token.token_id)]
    assert expired[0].actor == "" and expired[0].occurred_at == soon.token.expires_at
    assert expired[0].expires_at == soon.token.expires_at
    time.sleep(0.3)  # many more sweeps
    assert kinds_and_ids(drain(sweeping, admin, org, after=expired[0].sequence)) == []


def test_a_token_revoked_before_it_expires_is_not_announced_as_expired(
    deployment: Deployment, sweeping: ServerHandle, org: str
) -> None:
    admin = bearer(deployment.admin_token)
    issued = issue(sweeping, admin, org, ttl=Duration(seconds=3 * 86400))
    sweeping.tokens.RevokeToken(
        pb.RevokeTokenRequest(token_id=issued.token.token_id), metadata=admin
    )
    sweeping.clock.advance(4 * 86400)
    time.sleep(0.3)  # many sweeps

    assert kinds_and_ids(drain(sweeping, admin, org)) == [
        (ISSUED, issued.token.token_id),
        (REVOKED, issued.token.token_id),
    ]


def test_two_servers_racing_the_sweep_announce_each_expiry_exactly_once(
    blank_database: str,
) -> None:
    """Two replicas sweep one database every 10 ms (PostgreSQL: FOR UPDATE SKIP LOCKED)."""
    secret = bootstrap_admin(blank_database)
    admin = bearer(secret)
    count = 40
    with (
        serve(blank_database, expiry_sweep_seconds=0.01) as one,
        serve(blank_database, expiry_sweep_seconds=0.01) as two,
    ):
        organization = make_org(one, secret)
        issued = [
            issue((one, two)[n % 2], admin, organization, ttl=Duration(seconds=3600)).token.token_id
            for n in range(count)
        ]
        stream = watch(one, admin, organization)

        def all_of(kind: int) -> Callable[[list[pb.TokenEvent]], bool]:
            return lambda events: sum(event.kind == kind for event in events) == count

        before = take_until(stream, all_of(EXPIRING))
        for server in (one, two):
            server.clock.advance(7200)
        after = take_until(stream, all_of(EXPIRED))
        time.sleep(0.5)  # fifty more sweeps of each
        rest = drain(two, admin, organization, after=after[-1].sequence)

    events = before + after + rest
    assert_in_order_once(events)
    assert sorted(kinds_and_ids(events)) == sorted(
        [(kind, token_id) for token_id in issued for kind in (ISSUED, EXPIRING, EXPIRED)]
    )


# -- the README's grpcurl lines ------------------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"
GRPCURL = Path(sys.executable).parent / "grpcurl"
# grpcurl exits with 64 + the status code: here DEADLINE_EXCEEDED, as -max-time ends the stream.
STREAM_CUT_SHORT = 64 + grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


def json_stream(text: str) -> list[dict[str, Any]]:
    """The JSON objects grpcurl printed one after another."""
    decoder, objects, position = json.JSONDecoder(), [], 0
    while text[position:].strip():
        position += len(text[position:]) - len(text[position:].lstrip())
        value, position = decoder.raw_decode(text, position)
        objects.append(value)
    return objects


def test_the_readme_grpcurl_lines_stream_the_events(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    lines = [
        line
        for line in README.read_text().splitlines()
        if line.startswith("grpcurl") and "TokenAuthority/WatchEvents" in line
    ]
    first = issue(server, bearer(admin_token), org).token.token_id
    issue(server, bearer(admin_token), org)
    environment = {
        **os.environ,
        "PATH": f"{GRPCURL.parent}:{os.environ['PATH']}",
        "ADDR": server.address,
        "AUTH": f"authorization: Bearer {admin_token}",
        "ORG": org,
    }
    answers = []
    for line in lines:
        # Resume from before the organisation existed (42 may be later in a young database).
        command = line.replace("grpcurl ", "grpcurl -max-time 3 ", 1)
        command = command.replace('"after_sequence": 42', '"after_sequence": 0')
        completed = subprocess.run(
            ["bash", "-c", command], env=environment, capture_output=True, text=True, timeout=30
        )
        assert completed.returncode == STREAM_CUT_SHORT, completed.stderr
        answers.append(json_stream(completed.stdout))

    assert len(lines) == 2
    for events in answers:
        assert [event["kind"] for event in events] == ["TOKEN_EVENT_KIND_ISSUED"] * 2
        assert events[0]["token_id"] == first and events[0]["organization"] == org
