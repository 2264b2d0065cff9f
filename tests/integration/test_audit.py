"""The audit trail through the real server: Admin/ListAuditEvents (access, filters, pages), the
events of every management change and of refused calls (rate-limited), request ids that match
the server's log lines, no token value anywhere, `authority audit export` and retention."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from authority.domain.audit import REFUSAL_BURST
from authority.domain.token_format import SCANNER_REGEX
from authority.v1 import admin_pb2
from authority.v1 import token_authority_pb2 as pb
from tests.conftest import Deployment
from tests.harness import ManualClock, ServerHandle, bearer, bootstrap_admin, serve, unique
from tests.integration.helpers import (
    Credential,
    Metadata,
    User,
    error_reason,
    invalid_argument,
    issue,
    make_org,
    make_org_key,
    make_user_with_token,
    refused,
)

Code = grpc.StatusCode
TOKEN_RE = re.compile(SCANNER_REGEX)
AUTHORITY = Path(sys.executable).parent / "authority"
LIST = "authority.v1.Admin.ListAuditEvents"
NEW_YEAR = datetime(2030, 1, 1, tzinfo=UTC)
ISSUER = "token-authority"  # the default: an access token's audience when none is asked for


def audit_page(
    server: ServerHandle, metadata: Metadata, **fields: Any
) -> admin_pb2.ListAuditEventsResponse:
    response: admin_pb2.ListAuditEventsResponse = server.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(**fields), metadata=metadata
    )
    return response


def audit_events(
    server: ServerHandle, metadata: Metadata, after: int = 0, **fields: Any
) -> list[admin_pb2.AuditEvent]:
    """Every matching event newer than sequence `after`, newest first, following the pages."""
    events: list[admin_pb2.AuditEvent] = []
    page_token = ""
    while True:
        page = audit_page(server, metadata, page_size=200, page_token=page_token, **fields)
        for event in page.events:
            if event.sequence <= after:
                return events
            events.append(event)
        page_token = page.next_page_token
        if not page_token:
            return events


def newest_sequence(server: ServerHandle, admin_token: str) -> int:
    page = audit_page(server, bearer(admin_token), page_size=1)
    return page.events[0].sequence if page.events else 0


def at(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@dataclass(frozen=True)
class Team:
    """One organisation with every kind of reader, and the owner of another."""

    org: str
    owner: User
    manager: User
    member: User
    key: Credential
    outsider: User


@pytest.fixture
def team(server: ServerHandle, admin_token: str) -> Team:
    org = make_org(server, admin_token)
    other = make_org(server, admin_token)
    return Team(
        org=org,
        owner=make_user_with_token(server, admin_token, org, "owner"),
        manager=make_user_with_token(server, admin_token, org, "admin"),
        member=make_user_with_token(server, admin_token, org, "member"),
        key=make_org_key(server, admin_token, org, ["authority.v1.*", "all"]),
        outsider=make_user_with_token(server, admin_token, other, "owner"),
    )


# -- access -----------------------------------------------------------------------------------

READERS = ["global", "owner", "admin", "key"]


def _metadata(team: Team, admin_token: str, who: str) -> Metadata:
    return {
        "global": bearer(admin_token),
        "owner": team.owner.metadata,
        "admin": team.manager.metadata,
        "key": team.key.metadata,
        "member": team.member.metadata,
        "outsider": team.outsider.metadata,
    }[who]


@pytest.mark.parametrize("who", READERS)
def test_owners_admins_keys_and_global_administrators_read_the_organisations_trail(
    server: ServerHandle, admin_token: str, team: Team, who: str
) -> None:
    events = audit_events(server, _metadata(team, admin_token, who), organization=team.org)

    assert {event.organization for event in events} == {team.org}
    created = [event for event in events if event.action == "organization.created"]
    assert [event.object for event in created] == [team.org]


@pytest.mark.parametrize(
    ("who", "code", "reason"),
    [
        ("member", Code.PERMISSION_DENIED, "ROLE_TOO_LOW"),
        ("outsider", Code.NOT_FOUND, "ORGANIZATION_NOT_FOUND"),
    ],
)
def test_members_and_other_organisations_owners_are_refused(
    server: ServerHandle, admin_token: str, team: Team, who: str, code: Code, reason: str
) -> None:
    error = refused(
        code,
        server.admin.ListAuditEvents,
        admin_pb2.ListAuditEventsRequest(organization=team.org),
        _metadata(team, admin_token, who),
    )
    assert error_reason(error) == reason


@pytest.mark.parametrize("who", ["owner", "admin", "key", "member"])
def test_only_a_global_administrator_may_leave_the_organisation_out(
    server: ServerHandle, admin_token: str, team: Team, who: str
) -> None:
    invalid_argument(
        "organization",
        server.admin.ListAuditEvents,
        admin_pb2.ListAuditEventsRequest(),
        _metadata(team, admin_token, who),
    )


def test_a_global_administrator_without_an_organisation_reads_every_event(
    server: ServerHandle, admin_token: str, team: Team
) -> None:
    start = newest_sequence(server, admin_token) - 200
    events = audit_events(server, bearer(admin_token), after=max(start, 0))

    organizations = {event.organization for event in events}
    assert {team.org, team.outsider.organization, ""} <= organizations
    assert team.member.name in {e.object for e in events if e.action == "principal.created"}


# -- filters and pages ------------------------------------------------------------------------


def test_each_filter_narrows_the_trail(
    server: ServerHandle, admin_token: str, team: Team, clock: ManualClock
) -> None:
    start = clock()  # the team was made then (the server's clock moves only when told)
    clock.advance(60)
    issued = issue(server, team.owner.metadata, team.org, subject=team.member.name)
    token_id = issued.token.token_id
    clock.advance(3600)
    by_key = issue(server, team.key.metadata, team.org)
    clock.advance(3600)
    server.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=token_id), metadata=team.key.metadata)
    admin = bearer(admin_token)

    def actions(**fields: Any) -> list[tuple[str, str]]:
        events = audit_events(server, admin, organization=team.org, **fields)
        return [(event.action, event.object) for event in events]

    assert actions(actor=team.owner.name) == [("token.issued", token_id)]
    assert actions(actor=f"key:{team.key.token_id}") == [
        ("token.revoked", token_id),
        ("token.issued", by_key.token.token_id),
    ]
    assert actions(action="token.revoked") == [("token.revoked", token_id)]
    assert actions(object=token_id) == [("token.revoked", token_id), ("token.issued", token_id)]
    assert actions(
        since=at(start + timedelta(minutes=30)), until=at(start + timedelta(minutes=90))
    ) == [("token.issued", by_key.token.token_id)]
    assert actions(since=at(start + timedelta(minutes=90))) == [("token.revoked", token_id)]
    assert ("organization.created", team.org) in actions(until=at(start + timedelta(seconds=1)))
    assert ("token.issued", token_id) not in actions(until=at(start + timedelta(seconds=1)))
    other = audit_events(server, admin, organization=team.outsider.organization)
    assert token_id not in {event.object for event in other}


def test_pages_walk_the_trail_newest_first_and_a_token_is_bound_to_its_query(
    server: ServerHandle, admin_token: str, team: Team
) -> None:
    for _ in range(4):
        issue(server, team.owner.metadata, team.org)
    admin = bearer(admin_token)
    whole = audit_page(server, admin, organization=team.org, page_size=1000).events
    pages, page_token = [], ""
    while True:
        page = audit_page(server, admin, organization=team.org, page_size=3, page_token=page_token)
        pages.append(list(page.events))
        page_token = page.next_page_token
        if not page_token:
            break

    assert [event.sequence for page in pages for event in page] == [e.sequence for e in whole]
    assert all(len(page) == 3 for page in pages[:-1]) and 1 <= len(pages[-1]) <= 3
    assert [e.sequence for e in whole] == sorted((e.sequence for e in whole), reverse=True)
    first = audit_page(server, admin, organization=team.org, page_size=2)
    changes: list[dict[str, Any]] = [
        {"action": "token.issued"},
        {"actor": team.owner.name},
        {"object": "x"},
        {"since": at(NEW_YEAR)},
    ]
    for changed in changes:
        error = invalid_argument(
            "page_token",
            server.admin.ListAuditEvents,
            admin_pb2.ListAuditEventsRequest(
                organization=team.org, page_size=2, page_token=first.next_page_token, **changed
            ),
            admin,
        )
        assert error_reason(error) == "PAGE_TOKEN_INVALID"


@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("action", {"action": "token.stolen"}),
        ("actor", {"actor": "key:nope"}),
        ("until", {"since": at(datetime(2030, 1, 2, tzinfo=UTC)), "until": at(NEW_YEAR)}),
        ("page_size", {"page_size": -1}),
    ],
)
def test_a_bad_filter_is_invalid_argument_naming_the_field(
    server: ServerHandle, admin_token: str, team: Team, field: str, fields: dict[str, Any]
) -> None:
    invalid_argument(
        field,
        server.admin.ListAuditEvents,
        admin_pb2.ListAuditEventsRequest(organization=team.org, **fields),
        bearer(admin_token),
    )


# -- what each management call records, under the request id of its log line ------------------


class Calls:
    """Makes calls and reads, from the server's own log line of each, its request id."""

    def __init__(self, server: ServerHandle, caplog: pytest.LogCaptureFixture) -> None:
        self.server = server
        self.caplog = caplog
        caplog.set_level(logging.INFO, logger="authority.calls")

    def call(self, stub: str, method: str, request: Any, metadata: Metadata) -> tuple[Any, str]:
        self.caplog.clear()
        try:
            response = getattr(getattr(self.server, stub), method)(request, metadata=metadata)
        except grpc.RpcError as error:
            response = error
        lines = [
            record
            for record in self.caplog.records
            if record.getMessage() == "rpc" and record.__dict__["rpc_method"].endswith(method)
        ]
        assert len(lines) == 1, lines
        request_id = str(lines[0].__dict__["request_id"])
        assert re.fullmatch(r"[0-9a-f]{16}", request_id), request_id
        return response, request_id


Expected = tuple[str, str | None, str, str, str, str]  # action, org, object, token, actor, key


def test_every_management_change_records_exactly_its_events_under_its_request_id(
    in_process: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    server, admin_token = in_process.server, in_process.admin_token
    admin, admin_id = bearer(admin_token), admin_token[4:20]
    start = newest_sequence(server, admin_token)
    calls = Calls(server, caplog)
    org, name = unique("org"), unique("user")
    expected: dict[str, list[Expected]] = {}

    def step(stub: str, method: str, request: Any, *events: Expected) -> tuple[Any, str]:
        response, request_id = calls.call(stub, method, request, admin)
        assert not isinstance(response, grpc.RpcError), response
        expected[request_id] = list(events)
        return response, request_id

    def by_admin(action: str, organization: str | None, subject: str, token: str = "") -> Expected:
        return (action, organization, subject, token, "admin", admin_id)

    step(
        "admin",
        "CreateOrganization",
        admin_pb2.CreateOrganizationRequest(name=org),
        by_admin("organization.created", org, org),
    )
    step(
        "admin",
        "CreatePrincipal",
        admin_pb2.CreatePrincipalRequest(name=name, kind_name="user"),
        by_admin("principal.created", None, name),
    )
    add = admin_pb2.AddMemberRequest(organization=org, principal=name, role_name="member")
    step("admin", "AddMember", add, by_admin("membership.added", org, name))
    promote = admin_pb2.AddMemberRequest(organization=org, principal=name, role_name="admin")
    step("admin", "AddMember", promote, by_admin("membership.role_changed", org, name))
    step("admin", "AddMember", promote)  # no change, no event
    issued = pb.IssueTokenRequest(organization=org, label="ci", subject=name, scopes=["all"])
    response, request_id = step("tokens", "IssueToken", issued)
    users = response.token.token_id
    expected[request_id] = [by_admin("token.issued", org, users, users)]
    response, request_id = step("tokens", "IssueToken", pb.IssueTokenRequest(organization=org))
    key_id = response.token.token_id
    expected[request_id] = [by_admin("token.issued", org, key_id, key_id)]
    revoke = pb.RevokeTokenRequest(token_id=key_id)
    step("tokens", "RevokeToken", revoke, by_admin("token.revoked", org, key_id, key_id))
    step("tokens", "RevokeToken", revoke)  # already revoked: nothing changes
    step(
        "admin",
        "RemoveMember",
        admin_pb2.RemoveMemberRequest(organization=org, principal=name),
        by_admin("membership.removed", org, name),
        by_admin("token.revoked", org, users, users),
    )
    for stub, method, request in [
        ("tokens", "GetToken", pb.GetTokenRequest(token_id=users)),
        ("tokens", "ListTokens", pb.ListTokensRequest(organization=org)),
        ("admin", "ListMembers", admin_pb2.ListMembersRequest(organization=org)),
        ("admin", "ListOrganizations", admin_pb2.ListOrganizationsRequest()),
        ("admin", "GetCacheStats", admin_pb2.GetCacheStatsRequest()),
        ("admin", "ListAuditEvents", admin_pb2.ListAuditEventsRequest(organization=org)),
    ]:
        step(stub, method, request)  # reads record nothing

    recorded: dict[str, list[Expected]] = {}
    for event in reversed(audit_events(server, admin, after=start)):
        assert event.outcome == "ok"
        assert event.peer.startswith(("ipv4:127.0.0.1:", "ipv6:")), event.peer
        recorded.setdefault(event.request_id, []).append(
            (
                event.action,
                event.organization or None,
                event.object,
                event.token_id,
                event.actor_principal,
                event.actor_token_id,
            )
        )
    recorded.pop("", None)  # the server's own events (expiry), if any
    assert recorded == {request_id: events for request_id, events in expected.items() if events}


def test_a_refused_call_is_recorded_with_its_reason_and_request_id_never_its_message(
    in_process: Deployment, admin_token: str, team: Team, caplog: pytest.LogCaptureFixture
) -> None:
    server = in_process.server  # its log lines are read here
    calls = Calls(server, caplog)
    narrow = make_org_key(server, admin_token, team.org, ["download-only"])
    denied, role_request = calls.call(
        "admin",
        "ListAuditEvents",
        admin_pb2.ListAuditEventsRequest(organization=team.org),
        team.member.metadata,
    )
    scoped, scope_request = calls.call(
        "tokens", "ListTokens", pb.ListTokensRequest(organization=team.org), narrow.metadata
    )
    assert denied.code() == scoped.code() == Code.PERMISSION_DENIED

    events = audit_events(server, bearer(admin_token), organization=team.org, action="call.refused")

    found = {event.request_id: event for event in events}
    role, scope = found[role_request], found[scope_request]
    member = team.member.credential.token_id
    assert (role.actor_principal, role.actor_token_id) == (team.member.name, member)
    assert (scope.actor_principal, scope.actor_token_id) == ("", narrow.token_id)
    assert dict(role.details) == {
        "method": LIST,
        "code": "PERMISSION_DENIED",
        "reason": "ROLE_TOO_LOW",
    }
    assert scope.details["reason"] == "SCOPE_MISSING"
    assert scope.object == scope.details["method"] == "authority.v1.TokenAuthority.ListTokens"
    assert {role.outcome, scope.outcome} == {"refused"}
    assert role.organization == scope.organization == team.org


def test_a_flood_of_bad_bearers_leaves_at_most_the_burst_in_the_log(
    deployment: Deployment,
) -> None:
    """A server of its own (its allowance untouched by other tests), whose monotonic clock
    stands still: no refill during the flood, so exactly the burst is recorded."""
    admin = bearer(deployment.admin_token)
    with serve(deployment.database_url) as server:
        start = newest_sequence(server, deployment.admin_token)
        bad = bearer("tka_" + "A" * 16 + "_" + "B" * 49)
        listing = admin_pb2.ListOrganizationsRequest()
        for _ in range(500):
            refused(Code.UNAUTHENTICATED, server.admin.ListOrganizations, listing, bad)
        flood = audit_events(server, admin, after=start, action="call.refused")
        server.monotonic.value += 1.0  # ten more allowed
        refused(Code.UNAUTHENTICATED, server.admin.ListMembers, admin_pb2.ListMembersRequest(), ())
        after_it = audit_events(server, admin, after=start, action="call.refused")

    assert len(flood) == REFUSAL_BURST
    for event in flood:
        assert (event.organization, event.actor_principal, event.actor_token_id) == ("", "", "")
        assert event.details["reason"] in {"TOKEN_MALFORMED", "TOKEN_UNKNOWN"}
        assert event.peer and event.request_id
    newest = after_it[0]
    assert newest.details["reason"] == "CREDENTIALS_MISSING"
    assert newest.details["unrecorded_before"] == str(500 - REFUSAL_BURST)


@pytest.mark.postgres
def test_a_refusal_is_answered_when_the_store_cannot_record_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.harness import create_postgres_database, drop_postgres_database
    from tests.integration.test_store_unavailable import _allow_connections

    url = create_postgres_database()
    try:
        with serve(url, server="grpcio") as server:  # its log is read here
            _allow_connections(url, False)
            began = time.monotonic()
            error = refused(
                Code.UNAUTHENTICATED,
                server.admin.ListOrganizations,
                admin_pb2.ListOrganizationsRequest(),
            )
            assert error_reason(error) == "CREDENTIALS_MISSING"
            assert time.monotonic() - began < 5
    finally:
        _allow_connections(url, True)
        drop_postgres_database(url)
    assert "audit: a refused call was not recorded" in caplog.text


# -- key exchanges ----------------------------------------------------------------------------

EXCHANGE = "authority.v1.TokenAuthority.ExchangeKey"


def exchange(server: ServerHandle, key: str, **fields: Any) -> pb.ExchangeKeyResponse:
    response: pb.ExchangeKeyResponse = server.tokens.ExchangeKey(
        pb.ExchangeKeyRequest(key=key, **fields)
    )
    return response


def iso(stamp: Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).isoformat()


def test_an_exchange_is_recorded_with_the_key_the_jti_scopes_audience_and_expiry_never_a_secret(
    server: ServerHandle, admin_token: str, team: Team
) -> None:
    admin = bearer(admin_token)
    user = make_user_with_token(server, admin_token, team.org, scopes=["download", "upload"])
    start = newest_sequence(server, admin_token)

    issued = exchange(
        server,
        user.credential.secret,
        scopes=["download"],
        ttl=Duration(seconds=300),
        audience="storage",
    )
    by_key = exchange(server, team.key.secret)
    server.tokens.RefreshToken(pb.RefreshTokenRequest(access_token=issued.access_token))

    events = audit_events(server, admin, after=start)
    assert [event.action for event in events] == ["access_token.issued"] * 2  # no refresh
    event = audit_events(server, admin, organization=team.org, object=issued.token_id)[0]
    assert (event.action, event.organization, event.token_id, event.outcome) == (
        "access_token.issued",
        team.org,
        issued.token_id,
        "ok",
    )
    assert (event.actor_principal, event.actor_token_id) == (user.name, user.credential.token_id)
    assert event.peer.startswith(("ipv4:127.0.0.1:", "ipv6:")), event.peer
    assert re.fullmatch(r"[0-9a-f]{16}", event.request_id), event.request_id
    assert dict(event.details) == {
        "key_id": user.credential.token_id,
        "scopes": "download",
        "audience": "storage",
        "expires_at": iso(issued.expires_at),
        "refresh_until": iso(issued.refresh_until),
    }
    keyed = audit_events(
        server,
        bearer(team.owner.credential.secret),
        organization=team.org,
        actor=f"key:{team.key.token_id}",
        action="access_token.issued",
    )
    assert [(e.object, e.details["audience"]) for e in keyed] == [(by_key.token_id, ISSUER)]
    text = json.dumps([MessageToDict(event) for event in events])
    for secret in (user.credential.secret, team.key.secret, issued.access_token):
        assert secret not in text
    assert issued.access_token.split(".")[2] not in text and not TOKEN_RE.search(text)


def test_an_exchange_and_a_refused_one_share_their_request_id_with_their_log_line(
    in_process: Deployment, admin_token: str, team: Team, caplog: pytest.LogCaptureFixture
) -> None:
    server = in_process.server  # its log lines are read here
    calls = Calls(server, caplog)
    start = newest_sequence(server, admin_token)

    issued, issued_id = calls.call(
        "tokens", "ExchangeKey", pb.ExchangeKeyRequest(key=team.key.secret), ()
    )
    widened = pb.ExchangeKeyRequest(key=team.key.secret, scopes=["not.a.scope.of.the.key"])
    refusal, refused_id = calls.call("tokens", "ExchangeKey", widened, ())

    assert isinstance(issued, pb.ExchangeKeyResponse) and isinstance(refusal, grpc.RpcError)
    events = audit_events(server, bearer(admin_token), after=start, organization=team.org)
    by_request = {event.request_id: (event.action, event.object) for event in events}
    assert by_request == {
        issued_id: ("access_token.issued", issued.token_id),
        refused_id: ("call.refused", EXCHANGE),
    }


def test_a_refused_exchange_by_a_live_key_is_recorded_in_its_organisation(
    server: ServerHandle, admin_token: str, team: Team
) -> None:
    narrow = make_org_key(server, admin_token, team.org, ["download-only"])
    start = newest_sequence(server, admin_token)

    error = refused(
        Code.PERMISSION_DENIED,
        server.tokens.ExchangeKey,
        pb.ExchangeKeyRequest(key=narrow.secret, scopes=["upload"]),
    )

    assert error_reason(error) == "SCOPE_EXCEEDS_ISSUER"
    [event] = audit_events(
        server, bearer(team.owner.credential.secret), after=start, organization=team.org
    )
    assert (event.action, event.object, event.outcome) == ("call.refused", EXCHANGE, "refused")
    assert (event.actor_principal, event.actor_token_id) == ("", narrow.token_id)
    assert dict(event.details) == {
        "method": EXCHANGE,
        "code": "PERMISSION_DENIED",
        "reason": "SCOPE_EXCEEDS_ISSUER",
    }
    assert re.fullmatch(r"[0-9a-f]{16}", event.request_id), event.request_id


def test_refused_exchanges_of_dead_or_bad_keys_are_recorded_unidentified_and_rate_limited(
    deployment: Deployment,
) -> None:
    """A server of its own: its refusal allowance is untouched by other tests, its monotonic
    clock stands still (no refill), and its wall clock may move."""
    admin_token = deployment.admin_token
    admin = bearer(admin_token)
    with serve(deployment.database_url) as server:
        org = make_org(server, admin_token)
        revoked = make_org_key(server, admin_token, org, ["download"])
        server.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=revoked.token_id), metadata=admin)
        expiring = issue(server, admin, org, ttl=Duration(seconds=60)).secret
        server.clock.advance(61)
        start = newest_sequence(server, admin_token)
        for value, reason in [
            (revoked.secret, "TOKEN_REVOKED"),
            (expiring, "TOKEN_EXPIRED"),
            ("tka_nonsense", "TOKEN_MALFORMED"),
        ]:
            error = refused(
                Code.UNAUTHENTICATED, server.tokens.ExchangeKey, pb.ExchangeKeyRequest(key=value)
            )
            assert error_reason(error) == reason
        recorded = audit_events(server, admin, after=start)
        for _ in range(2 * REFUSAL_BURST):
            try:
                exchange(server, "tka_nonsense")
            except grpc.RpcError as error:
                assert error.code() in {Code.UNAUTHENTICATED, Code.RESOURCE_EXHAUSTED}
        flood = audit_events(server, admin, after=start)

    assert [event.details["reason"] for event in reversed(recorded)] == [
        "TOKEN_REVOKED",
        "TOKEN_EXPIRED",
        "TOKEN_MALFORMED",
    ]
    for event in recorded:
        assert (event.action, event.object, event.details["method"]) == (
            "call.refused",
            EXCHANGE,
            EXCHANGE,
        )
        assert (event.organization, event.actor_principal, event.actor_token_id) == ("", "", "")
        assert event.peer and event.request_id
    assert len(flood) == REFUSAL_BURST
    assert {event.action for event in flood} == {"call.refused"}


# -- never a token value ----------------------------------------------------------------------


def test_no_event_field_ever_holds_a_token_value(
    server: ServerHandle, admin_token: str, team: Team
) -> None:
    admin = bearer(admin_token)
    start = newest_sequence(server, admin_token)
    leaked = issue(server, admin, team.org).secret
    issue(
        server,
        team.owner.metadata,
        team.org,
        label=f"copy of {leaked}",
        description=leaked,
        properties={"k": leaked},
    )
    listing = admin_pb2.ListMembersRequest(organization=team.org)
    refused(Code.UNAUTHENTICATED, server.admin.ListMembers, listing, bearer(leaked + "x"))
    refused(
        Code.INVALID_ARGUMENT,
        server.admin.ListMembers,
        admin_pb2.ListMembersRequest(organization=leaked),
        team.owner.metadata,
    )

    events = audit_events(server, admin, after=start)

    assert len(events) >= 2
    for event in events:
        text = json.dumps(MessageToDict(event))
        assert not TOKEN_RE.search(text), text
        assert leaked[21:] not in text


# -- export -----------------------------------------------------------------------------------


def export(database_url: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("AUTHORITY_")
    }
    environment["AUTHORITY_DATABASE_URL"] = database_url
    return subprocess.run(
        [str(AUTHORITY), "audit", "export", *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_export_writes_json_lines_oldest_first_matching_the_api(
    deployment: Deployment, team: Team
) -> None:
    server, admin = deployment.server, bearer(deployment.admin_token)
    for _ in range(3):
        issue(server, team.owner.metadata, team.org)
    listed = list(reversed(audit_events(server, admin, organization=team.org)))

    completed = export(deployment.database_url, "--since", "30d", "--organization", team.org)

    assert completed.returncode == 0, completed.stderr
    lines = [json.loads(line) for line in completed.stdout.splitlines()]
    assert [line["sequence"] for line in lines] == [event.sequence for event in listed]
    for line, event in zip(lines, listed, strict=True):
        assert line["action"] == event.action and line["object"] == event.object
        assert line["request_id"] == event.request_id and line["details"] == dict(event.details)
        moment = datetime.fromisoformat(line["occurred_at"])
        assert moment == event.occurred_at.ToDatetime(tzinfo=UTC)
    assert not TOKEN_RE.search(completed.stdout)


def test_export_takes_rfc_3339_bounds_and_refuses_a_bad_one(
    deployment: Deployment, team: Team
) -> None:
    future = (datetime.now(UTC) + timedelta(days=3650)).isoformat()
    long_ago = "2001-01-01T00:00:00Z"

    none = export(deployment.database_url, "--since", future, "--organization", team.org)
    upto = export(
        deployment.database_url, "--since", long_ago, "--until", "1s", "--organization", team.org
    )
    bad = export(deployment.database_url, "--since", "yesterday")
    unbounded = export(deployment.database_url)

    assert (none.returncode, none.stdout) == (0, "")
    assert upto.returncode == 0 and upto.stdout.count("\n") >= 1, upto.stderr
    assert bad.returncode == 1 and "--since 'yesterday'" in bad.stderr and not bad.stdout
    assert unbounded.returncode == 2 and "--since" in unbounded.stderr


# -- retention --------------------------------------------------------------------------------


def test_the_server_deletes_events_past_the_retention_and_sequences_go_on(
    blank_database: str,
) -> None:
    admin_token = bootstrap_admin(blank_database)
    admin = bearer(admin_token)
    with serve(
        blank_database, audit_retention_days=30, audit_retention_interval_seconds=0.05
    ) as server:
        old_org = make_org(server, admin_token)
        make_org(server, admin_token)
        before = audit_events(server, admin)
        server.clock.advance(timedelta(days=31).total_seconds())
        deadline = time.monotonic() + 10
        while len(left := audit_events(server, admin)) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        new_org = make_org(server, admin_token)
        after = audit_events(server, admin)

    assert len(before) >= 3
    assert [event.sequence for event in left] == [before[0].sequence]  # the newest stays
    assert after[0].sequence == before[0].sequence + 1
    assert after[0].object == new_org
    assert old_org not in {event.object for event in after}
