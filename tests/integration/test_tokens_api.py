"""TokenAuthority through a real server: issue, validate, get, list and revoke (issue 3).

The global administrator's token (scope `*`) drives the management calls here; who may do
what is in test_access_control.py.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from authority.domain.token_format import new_token
from authority.v1 import token_authority_pb2 as pb
from tests.harness import ManualClock, ServerHandle, unique
from tests.integration.helpers import (
    Metadata,
    add_member,
    all_tokens,
    error_message,
    invalid_argument,
    issue,
    make_org,
    make_org_key,
    make_principal,
    refused,
    validate,
)

# The shape the README gives secret scanners.
SCANNER_REGEX = re.compile(r"\btka_[0-9A-Za-z]{16}_[0-9A-Za-z]{49}\b")


def at(timestamp: Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


def timestamp_of(moment: datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(moment)
    return message


def change_one_character(value: str, index: int) -> str:
    replacement = "A" if value[index] != "A" else "B"
    return value[:index] + replacement + value[index + 1 :]


# -- IssueToken ------------------------------------------------------------------------------


def test_issued_token_shows_every_field_it_was_given(
    server: ServerHandle, auth: Metadata, admin_token: str, org: str, clock: ManualClock
) -> None:
    subject = make_principal(server, admin_token)
    add_member(server, admin_token, org, subject, "member")

    issued = issue(
        server,
        auth,
        org,
        subject=subject,
        label="ci-uploader",
        description="uploads build artefacts",
        scopes=["download-only", "environment.control.StopEnv"],
        ttl=Duration(seconds=3600),
        properties={"team": "build", "ticket": "OPS-42"},
    )
    token = issued.token

    assert len(token.token_id) == 16
    assert token.organization == org
    assert token.subject == subject
    assert token.label == "ci-uploader"
    assert token.description == "uploads build artefacts"
    assert sorted(token.scopes) == ["download", "environment.control.StopEnv"]
    assert at(token.created_at) == clock()
    assert at(token.expires_at) == clock() + timedelta(hours=1)
    assert not token.HasField("revoked_at")
    assert token.created_by == "admin"
    assert dict(token.properties) == {"team": "build", "ticket": "OPS-42"}
    assert issued.secret.startswith(token.display_hint)
    assert token.token_id in token.display_hint


def test_issued_secret_has_the_scannable_shape_and_embeds_the_token_id(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    issued = issue(server, auth, org)

    assert SCANNER_REGEX.fullmatch(issued.secret)
    assert issued.secret.startswith(f"tka_{issued.token.token_id}_")


def test_each_issue_mints_a_new_id_and_secret(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    first, second = issue(server, auth, org, label="same"), issue(server, auth, org, label="same")

    assert first.token.token_id != second.token.token_id
    assert first.secret != second.secret


def test_secret_is_returned_by_issue_only_and_never_by_get_or_list(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    issued = issue(server, auth, org)
    secret_part = issued.secret.removeprefix(issued.token.display_hint)

    got = server.tokens.GetToken(pb.GetTokenRequest(token_id=issued.token.token_id), metadata=auth)
    listed = server.tokens.ListTokens(pb.ListTokensRequest(organization=org), metadata=auth)
    revoked = server.tokens.RevokeToken(
        pb.RevokeTokenRequest(token_id=issued.token.token_id), metadata=auth
    )

    assert validate(server, issued.secret).reason == pb.REASON_REVOKED  # the secret was real
    for message in (got, listed, revoked):
        wire = message.SerializeToString()
        assert secret_part.encode() not in wire
        assert secret_part not in str(message)
    assert [token.token_id for token in listed.tokens] == [issued.token.token_id]


def test_expires_at_given_as_a_timestamp_is_kept_to_the_second(
    server: ServerHandle, auth: Metadata, org: str, clock: ManualClock
) -> None:
    expires = clock() + timedelta(days=3, seconds=7)

    issued = issue(server, auth, org, expires_at=timestamp_of(expires))
    answer = validate(server, issued.secret)

    assert at(issued.token.expires_at) == expires
    assert answer.valid and at(answer.expires_at) == expires


def test_token_without_expiry_has_no_expires_at_and_stays_valid(
    server: ServerHandle, auth: Metadata, org: str, clock: ManualClock
) -> None:
    issued = issue(server, auth, org)

    clock.advance(10 * 365 * 86400)

    assert not issued.token.HasField("expires_at")
    assert validate(server, issued.secret, "download").valid


@pytest.mark.parametrize(
    ("profile", "scopes"),
    [
        (pb.SCOPE_PROFILE_ALL, ["download", "upload"]),
        (pb.SCOPE_PROFILE_UPLOAD_ONLY, ["upload"]),
        (pb.SCOPE_PROFILE_DOWNLOAD_ONLY, ["download"]),
    ],
)
def test_scope_profile_enum_expands_to_its_permissions(
    server: ServerHandle, auth: Metadata, org: str, profile: int, scopes: list[str]
) -> None:
    issued = issue(server, auth, org, scope_profile=profile)

    assert sorted(issued.token.scopes) == scopes


@pytest.mark.parametrize(
    ("names", "scopes"),
    [
        (["all"], ["download", "upload"]),
        (["upload-only"], ["upload"]),
        (["download-only"], ["download"]),
        (["download-only", "upload-only"], ["download", "upload"]),
        ([], ["download", "upload"]),
    ],
)
def test_profile_names_in_scopes_expand_and_nothing_means_all(
    server: ServerHandle, auth: Metadata, org: str, names: list[str], scopes: list[str]
) -> None:
    issued = issue(server, auth, org, scopes=names)

    assert sorted(issued.token.scopes) == scopes
    assert validate(server, issued.secret).valid


def test_profile_enum_combines_with_custom_scopes(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    issued = issue(
        server,
        auth,
        org,
        scope_profile=pb.SCOPE_PROFILE_UPLOAD_ONLY,
        scopes=["environment.control.StopEnv"],
    )

    assert sorted(issued.token.scopes) == ["environment.control.StopEnv", "upload"]
    assert validate(server, issued.secret, "upload").valid
    assert validate(server, issued.secret, "environment.control.StopEnv").valid
    assert validate(server, issued.secret, "download").reason == pb.REASON_PERMISSION_DENIED


@pytest.mark.parametrize(
    ("scope", "allowed", "denied"),
    [
        (
            "environment.control.StopEnv",
            ["environment.control.StopEnv"],
            ["environment.control.StartEnv", "environment.control", "download"],
        ),
        (
            "environment.control.*",
            ["environment.control.StopEnv", "environment.control.sub.Method"],
            ["environment.controller.StopEnv", "environment.other.StopEnv", "download"],
        ),
        (
            "*",
            ["download", "upload", "environment.control.StopEnv", "anything.at.all"],
            [],
        ),
    ],
)
def test_custom_scopes_and_wildcards_grant_exactly_what_they_name(
    server: ServerHandle,
    auth: Metadata,
    org: str,
    scope: str,
    allowed: list[str],
    denied: list[str],
) -> None:
    issued = issue(server, auth, org, scopes=[scope])

    assert list(issued.token.scopes) == [scope]
    for permission in allowed:
        answer = validate(server, issued.secret, permission)
        assert answer.valid, permission
    for permission in denied:
        answer = validate(server, issued.secret, permission)
        assert (answer.valid, answer.reason) == (False, pb.REASON_PERMISSION_DENIED), permission


def test_method_names_in_wire_form_are_accepted_as_scopes_and_permissions(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    issued = issue(server, auth, org, scopes=["/environment.control/StopEnv"])

    assert list(issued.token.scopes) == ["environment.control.StopEnv"]
    assert validate(server, issued.secret, "/environment.control/StopEnv").valid
    assert validate(server, issued.secret, "environment.control.StopEnv").valid


@pytest.mark.parametrize(
    "scope", ["env..control", "env.*.control", "with space", "**", "env.control*", "", "a" * 201]
)
def test_issue_refuses_a_scope_that_is_not_a_permission_string(
    server: ServerHandle, auth: Metadata, org: str, scope: str
) -> None:
    request = pb.IssueTokenRequest(organization=org, label="x", scopes=["download", scope])

    error = invalid_argument("scopes", server.tokens.IssueToken, request, auth)

    assert "environment.control.*" in error_message(error)  # says what a scope looks like


@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("organization", {"organization": "Not A Slug", "label": "x"}),
        ("label", {"label": "tab\there"}),
        ("label", {"label": "l" * 101}),
        ("description", {"label": "x", "description": "d" * 1001}),
        ("subject", {"label": "x", "subject": "Not A Name"}),
        ("properties", {"label": "x", "properties": {"bad key!": "v"}}),
        ("properties", {"label": "x", "properties": {"k": "v" * 1025}}),
        ("properties", {"label": "x", "properties": {f"k{i}": "v" for i in range(65)}}),
        ("scopes", {"label": "x", "scopes": [f"s{i}" for i in range(65)]}),
        ("scope_profile", {"label": "x", "scope_profile": 99}),
        ("ttl", {"label": "x", "ttl": Duration(seconds=0)}),
        ("ttl", {"label": "x", "ttl": Duration(seconds=-60)}),
        ("ttl", {"label": "x", "ttl": Duration(seconds=11 * 365 * 86400)}),
        ("expires_at", {"label": "x", "expires_at": Timestamp(seconds=1)}),
        ("expires_at", {"label": "x", "expires_at": Timestamp(seconds=-5)}),
    ],
)
def test_issue_names_the_bad_field(
    server: ServerHandle, auth: Metadata, org: str, field: str, fields: dict[str, object]
) -> None:
    request = pb.IssueTokenRequest(**{"organization": org, **fields})  # type: ignore[arg-type]

    invalid_argument(field, server.tokens.IssueToken, request, auth)


def test_issue_refuses_an_expiry_at_the_current_moment(
    server: ServerHandle, auth: Metadata, org: str, clock: ManualClock
) -> None:
    request = pb.IssueTokenRequest(organization=org, label="x", expires_at=timestamp_of(clock()))

    invalid_argument("expires_at", server.tokens.IssueToken, request, auth)


def test_issue_in_an_organisation_that_does_not_exist_is_not_found(
    server: ServerHandle, auth: Metadata
) -> None:
    missing = unique("missing")

    error = refused(
        grpc.StatusCode.NOT_FOUND,
        server.tokens.IssueToken,
        pb.IssueTokenRequest(organization=missing, label="x"),
        auth,
    )

    assert missing in error_message(error)


def test_issue_for_a_subject_that_is_not_a_member_fails_its_precondition(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    error = refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        server.tokens.IssueToken,
        pb.IssueTokenRequest(organization=org, label="x", subject=unique("stranger")),
        auth,
    )

    assert "AddMember" in error_message(error)


# -- Validate --------------------------------------------------------------------------------


def test_validate_answers_who_the_token_is_for(
    server: ServerHandle, auth: Metadata, org: str, clock: ManualClock
) -> None:
    issued = issue(server, auth, org, scopes=["download-only"], ttl=Duration(seconds=600))

    answer = validate(server, issued.secret, "download")

    assert answer.valid
    assert answer.reason == pb.REASON_UNSPECIFIED
    assert answer.token_id == issued.token.token_id
    assert answer.organization == org
    assert answer.subject == ""
    assert list(answer.scopes) == ["download"]
    assert at(answer.expires_at) == clock() + timedelta(seconds=600)


def test_validate_with_an_empty_permission_only_asks_whether_the_token_is_alive(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    issued = issue(server, auth, org, scopes=["environment.control.StopEnv"])

    alive = validate(server, issued.secret, "")
    server.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=issued.token.token_id), metadata=auth)
    dead = validate(server, issued.secret, "")

    assert alive.valid
    assert (dead.valid, dead.reason) == (False, pb.REASON_REVOKED)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda secret: "", id="empty"),
        pytest.param(lambda secret: "garbage", id="garbage"),
        pytest.param(lambda secret: "tka_", id="prefix-only"),
        pytest.param(lambda secret: secret[:-1], id="truncated-by-one"),
        pytest.param(lambda secret: secret[: len(secret) // 2], id="truncated-by-half"),
        pytest.param(lambda secret: secret + "0", id="one-character-too-many"),
        pytest.param(lambda secret: " " + secret, id="leading-space"),
        pytest.param(lambda secret: "tkb_" + secret[4:], id="wrong-prefix"),
        pytest.param(lambda secret: change_one_character(secret, 10), id="id-character-changed"),
        pytest.param(lambda secret: change_one_character(secret, 40), id="secret-char-changed"),
        pytest.param(lambda secret: change_one_character(secret, -1), id="checksum-changed"),
        pytest.param(lambda secret: secret[:30] + "-" + secret[31:], id="bad-alphabet"),
        pytest.param(lambda secret: secret.upper(), id="case-changed"),
    ],
)
def test_mistyped_or_truncated_token_is_refused_as_malformed(
    server: ServerHandle, auth: Metadata, org: str, mangle: object
) -> None:
    secret = issue(server, auth, org).secret
    assert callable(mangle)
    presented = mangle(secret)
    assert presented != secret

    answer = validate(server, presented, "download")

    assert (answer.valid, answer.reason) == (False, pb.REASON_MALFORMED)
    assert answer.token_id == ""  # nothing about any token is disclosed


def test_well_formed_token_that_was_never_issued_is_unknown(server: ServerHandle) -> None:
    never_issued = new_token().value

    answer = validate(server, never_issued, "download")

    assert (answer.valid, answer.reason) == (False, pb.REASON_UNKNOWN)
    assert answer.token_id == ""


def test_right_id_with_a_wrong_secret_is_unknown_and_discloses_nothing(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    issued = issue(server, auth, org)
    assert validate(server, issued.secret).valid  # now in the cache too
    forged = new_token(issued.token.token_id).value
    assert forged != issued.secret

    answer = validate(server, forged, "download")

    assert (answer.valid, answer.reason) == (False, pb.REASON_UNKNOWN)
    assert answer.token_id == "" and answer.organization == "" and not answer.scopes


def test_token_is_refused_as_expired_from_its_expiry_on(
    server: ServerHandle, auth: Metadata, org: str, clock: ManualClock
) -> None:
    issued = issue(server, auth, org, ttl=Duration(seconds=60))

    clock.advance(59)
    just_before = validate(server, issued.secret, "download")
    clock.advance(1)
    at_expiry = validate(server, issued.secret, "download")
    clock.advance(3600)
    long_after = validate(server, issued.secret, "")

    assert just_before.valid
    assert (at_expiry.valid, at_expiry.reason) == (False, pb.REASON_EXPIRED)
    assert (long_after.valid, long_after.reason) == (False, pb.REASON_EXPIRED)
    assert long_after.token_id == issued.token.token_id  # found, so identified


def test_token_expiring_at_a_set_moment_expires_when_the_clock_is_set_past_it(
    server: ServerHandle, auth: Metadata, org: str, clock: ManualClock
) -> None:
    expires = clock() + timedelta(days=30)
    issued = issue(server, auth, org, expires_at=timestamp_of(expires))

    clock.set(expires + timedelta(seconds=1))
    answer = validate(server, issued.secret, "download")

    assert (answer.valid, answer.reason) == (False, pb.REASON_EXPIRED)


def test_revoked_token_is_refused_by_the_next_validate(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    issued = issue(server, auth, org)
    assert validate(server, issued.secret, "download").valid

    server.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=issued.token.token_id), metadata=auth)
    answer = validate(server, issued.secret, "download")

    assert (answer.valid, answer.reason) == (False, pb.REASON_REVOKED)
    assert answer.token_id == issued.token.token_id


def test_revoked_wins_over_expired(
    server: ServerHandle, auth: Metadata, org: str, clock: ManualClock
) -> None:
    issued = issue(server, auth, org, ttl=Duration(seconds=5))
    server.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=issued.token.token_id), metadata=auth)

    clock.advance(60)

    assert validate(server, issued.secret).reason == pb.REASON_REVOKED


def test_token_without_the_permission_is_refused_as_permission_denied(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    issued = issue(server, auth, org, scopes=["upload-only"])

    answer = validate(server, issued.secret, "download")

    assert (answer.valid, answer.reason) == (False, pb.REASON_PERMISSION_DENIED)
    assert answer.token_id == issued.token.token_id
    assert list(answer.scopes) == ["upload"]


@pytest.mark.parametrize(
    "permission",
    ["not a permission", "download!", "env..control", "environment.control.*", "*", "a" * 201],
)
def test_permission_that_is_not_a_permission_string_is_refused_as_invalid(
    server: ServerHandle, auth: Metadata, org: str, permission: str
) -> None:
    issued = issue(server, auth, org, scopes=["download-only"])

    answer = validate(server, issued.secret, permission)

    assert (answer.valid, answer.reason) == (False, pb.REASON_INVALID_PERMISSION)


@pytest.mark.parametrize(
    ("scope", "permission"),
    [
        ("*", "not a permission"),
        ("*", "*"),
        ("environment.*", "environment.control.*"),
        ("environment.*", "environment.not a permission"),
    ],
)
def test_wildcard_token_still_refuses_an_invalid_permission_as_invalid(
    server: ServerHandle, auth: Metadata, org: str, scope: str, permission: str
) -> None:
    issued = issue(server, auth, org, scopes=[scope])

    answer = validate(server, issued.secret, permission)

    assert (answer.valid, answer.reason) == (False, pb.REASON_INVALID_PERMISSION)


def test_validate_batch_answers_each_request_in_order_with_its_request_id(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    download = issue(server, auth, org, scopes=["download-only"])
    revoked = issue(server, auth, org)
    server.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=revoked.token.token_id), metadata=auth)
    requests = [
        pb.ValidateRequest(token=download.secret, permission="download", request_id="a"),
        pb.ValidateRequest(token=download.secret, permission="upload", request_id="b"),
        pb.ValidateRequest(token="garbage", permission="download", request_id="c"),
        pb.ValidateRequest(token=revoked.secret, request_id="d"),
        pb.ValidateRequest(token=new_token().value, request_id="e"),
    ]

    response = server.tokens.ValidateBatch(pb.ValidateBatchRequest(requests=requests))

    assert [(r.request_id, r.valid, r.reason) for r in response.results] == [
        ("a", True, pb.REASON_UNSPECIFIED),
        ("b", False, pb.REASON_PERMISSION_DENIED),
        ("c", False, pb.REASON_MALFORMED),
        ("d", False, pb.REASON_REVOKED),
        ("e", False, pb.REASON_UNKNOWN),
    ]
    assert response.results[0].token_id == download.token.token_id


def test_validate_batch_of_nothing_answers_nothing(server: ServerHandle) -> None:
    assert list(server.tokens.ValidateBatch(pb.ValidateBatchRequest()).results) == []


def test_validate_stream_answers_every_request_with_its_request_id(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    issued = issue(server, auth, org, scopes=["download-only"])
    requests = [
        pb.ValidateRequest(token=issued.secret, permission="download", request_id="1"),
        pb.ValidateRequest(token=issued.secret, permission="upload", request_id="2"),
        pb.ValidateRequest(token=issued.secret[:-1], permission="download", request_id="3"),
    ]

    answers = list(server.tokens.ValidateStream(iter(requests)))

    # Answers may overtake each other (a store read must not hold up the stream behind it);
    # the request_id is what matches them.
    assert sorted((a.request_id, a.valid, a.reason) for a in answers) == [
        ("1", True, pb.REASON_UNSPECIFIED),
        ("2", False, pb.REASON_PERMISSION_DENIED),
        ("3", False, pb.REASON_MALFORMED),
    ]


def test_a_request_id_is_bounded_in_every_form_of_validate(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    """It is echoed back, so it is bounded like every input that comes back out."""
    issued = issue(server, auth, org)
    longest = pb.ValidateRequest(token=issued.secret, request_id="r" * 256)
    too_long = pb.ValidateRequest(token=issued.secret, request_id="r" * 257)

    assert server.tokens.Validate(longest).request_id == "r" * 256
    invalid_argument("request_id", server.tokens.Validate, too_long)
    invalid_argument(
        "request_id",
        server.tokens.ValidateBatch,
        pb.ValidateBatchRequest(requests=[longest, too_long]),
    )
    with pytest.raises(grpc.RpcError) as stream_error:
        list(server.tokens.ValidateStream(iter([longest, too_long])))
    assert stream_error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in error_message(stream_error.value)
    assert "r" * 257 not in error_message(stream_error.value)


def test_ping_echoes_its_payload_without_credentials(server: ServerHandle) -> None:
    assert server.tokens.Ping(pb.PingRequest(payload="x" * 100)).payload == "x" * 100


def test_ping_echoes_a_bounded_payload_only(server: ServerHandle) -> None:
    assert server.tokens.Ping(pb.PingRequest(payload="x" * 4096)).payload == "x" * 4096
    invalid_argument("payload", server.tokens.Ping, pb.PingRequest(payload="x" * 4097))


# -- GetToken --------------------------------------------------------------------------------


def test_get_token_shows_what_issue_returned(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    issued = issue(
        server, auth, org, description="d", ttl=Duration(seconds=60), properties={"k": "v"}
    )

    got = server.tokens.GetToken(pb.GetTokenRequest(token_id=issued.token.token_id), metadata=auth)

    assert got == issued.token


def test_get_token_of_an_id_that_was_never_issued_is_not_found(
    server: ServerHandle, auth: Metadata
) -> None:
    token_id = new_token().token_id

    error = refused(
        grpc.StatusCode.NOT_FOUND,
        server.tokens.GetToken,
        pb.GetTokenRequest(token_id=token_id),
        auth,
    )

    assert token_id in error_message(error)


@pytest.mark.parametrize(
    "token_id", ["", "short", "x" * 17, "tka_0123456789abcdef", "abc!efgh12345678"]
)
def test_get_token_names_a_token_id_that_is_not_one(
    server: ServerHandle, auth: Metadata, token_id: str
) -> None:
    invalid_argument(
        "token_id", server.tokens.GetToken, pb.GetTokenRequest(token_id=token_id), auth
    )


# -- ListTokens ------------------------------------------------------------------------------


def _ids(tokens: object) -> list[str]:
    return [token.token_id for token in tokens]  # type: ignore[attr-defined]


def _list(
    server: ServerHandle, auth: Metadata, org: str, **fields: object
) -> pb.ListTokensResponse:
    response: pb.ListTokensResponse = server.tokens.ListTokens(
        pb.ListTokensRequest(organization=org, **fields),  # type: ignore[arg-type]
        metadata=auth,
    )
    return response


def test_list_tokens_pages_newest_first_without_duplicates_or_gaps(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    issued = [issue(server, auth, org, label=f"t{index}").token.token_id for index in range(7)]

    pages: list[list[str]] = []
    page_token = ""
    while True:
        page = _list(server, auth, org, page_size=3, page_token=page_token)
        pages.append(_ids(page.tokens))
        page_token = page.next_page_token
        if not page_token:
            break

    assert [len(page) for page in pages] == [3, 3, 1]
    assert [token_id for page in pages for token_id in page] == list(reversed(issued))


def test_last_page_has_no_next_page_token_even_when_it_is_full(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    for _ in range(4):
        issue(server, auth, org)

    first = _list(server, auth, org, page_size=2)
    second = _list(server, auth, org, page_size=2, page_token=first.next_page_token)

    assert first.next_page_token
    assert len(second.tokens) == 2 and second.next_page_token == ""


def test_token_issued_while_paging_neither_repeats_nor_hides_older_ones(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    older = [issue(server, auth, org).token.token_id for _ in range(4)]

    first = _list(server, auth, org, page_size=2)
    newer = issue(server, auth, org).token.token_id
    second = _list(server, auth, org, page_size=2, page_token=first.next_page_token)

    assert _ids(first.tokens) + _ids(second.tokens) == list(reversed(older))
    assert _ids(_list(server, auth, org, page_size=1).tokens) == [newer]


def test_list_tokens_defaults_to_fifty_and_caps_large_page_sizes(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    for _ in range(51):
        issue(server, auth, org)

    default = _list(server, auth, org)
    huge = _list(server, auth, org, page_size=2**31 - 1)

    assert len(default.tokens) == 50 and default.next_page_token
    assert len(huge.tokens) == 51 and huge.next_page_token == ""


def test_revoked_tokens_are_listed_only_when_asked_for(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    kept = issue(server, auth, org).token.token_id
    gone = issue(server, auth, org).token.token_id
    server.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=gone), metadata=auth)

    default = _list(server, auth, org)
    everything = _list(server, auth, org, include_revoked=True)

    assert _ids(default.tokens) == [kept]
    assert _ids(everything.tokens) == [gone, kept]
    assert everything.tokens[0].HasField("revoked_at")


def test_list_tokens_shows_only_the_named_organisation(
    server: ServerHandle, auth: Metadata, admin_token: str, org: str
) -> None:
    other = make_org(server, admin_token)
    mine = issue(server, auth, org).token.token_id
    issue(server, auth, other)

    assert _ids(all_tokens(server, auth, org)) == [mine]


def test_page_token_reused_with_a_different_organisation_is_invalid(
    server: ServerHandle, auth: Metadata, admin_token: str, org: str
) -> None:
    other = make_org(server, admin_token)
    for _ in range(3):
        issue(server, auth, org)
        issue(server, auth, other)
    page_token = _list(server, auth, org, page_size=1).next_page_token

    error = invalid_argument(
        "page_token",
        server.tokens.ListTokens,
        pb.ListTokensRequest(organization=other, page_size=1, page_token=page_token),
        auth,
    )

    assert "unchanged" in error_message(error)


def test_page_token_reused_with_include_revoked_changed_is_invalid(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    for _ in range(3):
        issue(server, auth, org)
    page_token = _list(server, auth, org, page_size=1).next_page_token

    invalid_argument(
        "page_token",
        server.tokens.ListTokens,
        pb.ListTokensRequest(
            organization=org, page_size=1, page_token=page_token, include_revoked=True
        ),
        auth,
    )


@pytest.mark.parametrize("page_token", ["garbage!", "bm90IGpzb24", "WzEsMl0", "e30"])
def test_page_token_not_from_this_service_is_invalid(
    server: ServerHandle, auth: Metadata, org: str, page_token: str
) -> None:
    invalid_argument(
        "page_token",
        server.tokens.ListTokens,
        pb.ListTokensRequest(organization=org, page_token=page_token),
        auth,
    )


def test_negative_page_size_is_invalid(server: ServerHandle, auth: Metadata, org: str) -> None:
    invalid_argument(
        "page_size",
        server.tokens.ListTokens,
        pb.ListTokensRequest(organization=org, page_size=-1),
        auth,
    )


def test_list_tokens_requires_an_organisation(server: ServerHandle, auth: Metadata) -> None:
    invalid_argument("organization", server.tokens.ListTokens, pb.ListTokensRequest(), auth)


# -- RevokeToken -----------------------------------------------------------------------------


def test_revoke_is_idempotent_and_keeps_the_first_revoked_at(
    server: ServerHandle, auth: Metadata, org: str, clock: ManualClock
) -> None:
    token_id = issue(server, auth, org).token.token_id
    request = pb.RevokeTokenRequest(token_id=token_id)

    first = server.tokens.RevokeToken(request, metadata=auth)
    first_moment = clock()
    clock.advance(3600)
    second = server.tokens.RevokeToken(request, metadata=auth)
    got = server.tokens.GetToken(pb.GetTokenRequest(token_id=token_id), metadata=auth)

    assert at(first.revoked_at) == first_moment
    assert at(second.revoked_at) == first_moment
    assert at(got.revoked_at) == first_moment


def test_revoke_returns_the_token_with_its_fields(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    issued = issue(server, auth, org, description="d", properties={"k": "v"})

    revoked = server.tokens.RevokeToken(
        pb.RevokeTokenRequest(token_id=issued.token.token_id), metadata=auth
    )

    without_revocation = pb.Token()
    without_revocation.CopyFrom(revoked)
    without_revocation.ClearField("revoked_at")
    assert without_revocation == issued.token


def test_revoke_of_an_id_that_was_never_issued_is_not_found(
    server: ServerHandle, auth: Metadata
) -> None:
    refused(
        grpc.StatusCode.NOT_FOUND,
        server.tokens.RevokeToken,
        pb.RevokeTokenRequest(token_id=new_token().token_id),
        auth,
    )


def test_revoke_names_a_missing_token_id(server: ServerHandle, auth: Metadata) -> None:
    invalid_argument("token_id", server.tokens.RevokeToken, pb.RevokeTokenRequest(), auth)


def test_revoking_one_token_leaves_its_siblings_alive(
    server: ServerHandle, auth: Metadata, admin_token: str, org: str
) -> None:
    key = make_org_key(server, admin_token, org, ["download-only"])
    sibling = issue(server, auth, org, scopes=["download-only"])

    server.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=key.token_id), metadata=auth)

    assert validate(server, sibling.secret, "download").valid
