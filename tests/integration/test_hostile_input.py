"""Property-based: hostile values in every request field, through the real server.

Whatever a caller sends, every answer is either OK or a refusal with a status a client can act
on (never UNKNOWN, INTERNAL or a transport error such as an overflowing trailer), a short
message that does not quote the hostile value back (at most a 40-character prefix, nothing
shaped like a token), a google.rpc.ErrorInfo detail, and nothing stored changed. Validate and
ValidateBatch answer a refused token with a verdict, never an error status.

Mutating calls aim at a dedicated organisation (the arena) so that an accepted call cannot
disturb other tests; a refused one is checked against a snapshot of the arena, a second
organisation and the list of organisations taken just before it. Read-only calls are checked
against the snapshot whatever they answer.

Key exchange is checked beside its audit trail: an `access_token.issued` event follows every
accepted ExchangeKey and no refused one; RefreshToken and Validate also get tokens that this
service's own key signed with claims of every shape. A refused RotateSigningKey leaves the
published keys as they were.

`make test` runs a short hypothesis profile; `HYPOTHESIS_PROFILE=long` explores much more.
"""

from __future__ import annotations

import base64
import json
import re
import string
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import jwt
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from authority.domain.audit import KEY_PREFIX, MAX_OBJECT
from authority.domain.events import EventKind
from authority.domain.validation import MAX_REQUEST_ID
from authority.v1 import admin_pb2
from authority.v1 import token_authority_pb2 as pb
from tests.conftest import Deployment
from tests.harness import ServerHandle, bearer, serve, unique
from tests.integration.helpers import (
    MANAGE_SCOPES,
    Metadata,
    add_member,
    all_organizations,
    all_tokens,
    bad_request_fields,
    error_reason,
    issue,
    make_org,
    make_org_key,
    make_principal,
    make_user_with_token,
    members,
    signing_keys,
)

Code = grpc.StatusCode

REFUSAL_CODES = {
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.PERMISSION_DENIED,
    Code.FAILED_PRECONDITION,
    Code.ALREADY_EXISTS,
    Code.UNAUTHENTICATED,
}
# The ErrorInfo reasons of the contract (docs: issue 7) that a refusal here may carry.
REASONS = {
    "FIELD_INVALID",
    "BATCH_TOO_LARGE",
    "PAGE_TOKEN_INVALID",
    "CREDENTIALS_MISSING",
    "TOKEN_MALFORMED",
    "TOKEN_UNKNOWN",
    "TOKEN_EXPIRED",
    "TOKEN_REVOKED",
    "SCOPE_MISSING",
    "GLOBAL_ADMIN_REQUIRED",
    "ROLE_TOO_LOW",
    "SUBJECT_OUTRANKS_ISSUER",
    "SCOPE_EXCEEDS_ISSUER",
    "LIFETIME_EXCEEDS_ISSUER",
    "ORGANIZATION_NOT_FOUND",
    "TOKEN_NOT_FOUND",
    "PRINCIPAL_NOT_FOUND",
    "NOT_A_MEMBER",
    "ALREADY_EXISTS",
    "SUBJECT_NOT_A_MEMBER",
    "LAST_OWNER",
    "LAST_GLOBAL_ADMIN_TOKEN",
    "POSITION_EXPIRED",
}
MAX_MESSAGE = 1000
# A message may quote this much of a bad value, never more.
QUOTE_LIMIT = 40
SECRET_RUN = re.compile(r"[0-9A-Za-z]{32,}")
TOKEN_SHAPED = re.compile(r"tka_[0-9A-Za-z]{4,}")
BATCH_MAX = 1000  # AUTHORITY_VALIDATE_BATCH_MAX of the deployment (the default)
CALL_TIMEOUT = 60
# How long a WatchEvents stream is given to send its first message or the error that ends it.
WATCH_DEADLINE = 2.0

# -- the arena -------------------------------------------------------------------------------

Snapshot = tuple[object, ...]


@dataclass(frozen=True, repr=False)
class Arena:
    """A dedicated organisation with every kind of caller, plus one beside it."""

    server: ServerHandle
    admin_token: str
    admin: Metadata
    org: str
    other_org: str
    bearers: dict[str, Metadata]
    # Principals and tokens the hostile calls may change (never a caller's own).
    victims: tuple[str, ...]
    victim_token_ids: tuple[str, ...]
    # Principals that are callers: only ever read or named, never removed or demoted.
    callers: tuple[str, ...]
    stranger: str
    token_ids: tuple[str, ...]
    secrets: tuple[str, ...]
    tokens_page_token: str
    organizations_page_token: str
    audit_page_token: str
    # The newest event of the arena when it was made (WatchEvents is quiet after it).
    newest_sequence: int
    # Access tokens exchanged for the arena's live keys (an organisation key and a user's).
    access_tokens: tuple[str, ...]
    # The revoked key's value (one of `secrets`: refused by ExchangeKey).
    revoked_secret: str
    # The last snapshot taken, while nothing has been accepted since: the `before` of the next
    # call (a test's examples run one after the other on this arena, and nothing else uses it).
    last_snapshot: list[Snapshot] = field(default_factory=list)

    def __repr__(self) -> str:  # hypothesis prints it with every falsifying example
        return f"Arena(org={self.org!r}, other_org={self.other_org!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's pretty-printer
        printer.text(repr(self))


def _page_token(server: ServerHandle, admin: Metadata, org: str) -> str:
    page = server.tokens.ListTokens(
        pb.ListTokensRequest(organization=org, page_size=1, include_revoked=True), metadata=admin
    )
    return str(page.next_page_token)


def _newest_audit_event(server: ServerHandle, admin: Metadata, org: str) -> tuple[str, int]:
    """A page token of the arena's audit trail, and the sequence of its newest event."""
    page = server.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(organization=org, page_size=1), metadata=admin
    )
    return str(page.next_page_token), int(page.events[0].sequence)


@pytest.fixture
def arena(server: ServerHandle, admin_token: str) -> Arena:
    admin = bearer(admin_token)
    org = make_org(server, admin_token, "hostile")
    other_org = make_org(server, admin_token, "beside")
    owner = make_user_with_token(server, admin_token, org, "owner")
    manager = make_user_with_token(server, admin_token, org, "admin")
    member = make_user_with_token(server, admin_token, org, "member")
    key = make_org_key(server, admin_token, org, MANAGE_SCOPES)
    download_key = make_org_key(server, admin_token, org, ["download-only"])
    revoked = make_org_key(server, admin_token, org, MANAGE_SCOPES)
    server.tokens.RevokeToken(pb.RevokeTokenRequest(token_id=revoked.token_id), metadata=admin)
    # The global administrator's token confined to the arena (issue 7).
    add_member(server, admin_token, org, "admin", "admin")
    confined = issue(server, admin, org, subject="admin", scopes=list(MANAGE_SCOPES))
    victims = [make_user_with_token(server, admin_token, org, "member", prefix="victim")]
    victim_admin = make_user_with_token(server, admin_token, org, "admin", prefix="victim")
    victims.append(victim_admin)
    victim_key = make_org_key(server, admin_token, org, ["download-only"])
    outsider = make_user_with_token(server, admin_token, other_org, "owner")
    outside_key = make_org_key(server, admin_token, other_org, ["all"])
    callers = (owner, manager, member)
    access_tokens = tuple(
        server.tokens.ExchangeKey(pb.ExchangeKeyRequest(key=secret)).access_token
        for secret in (key.secret, member.credential.secret)
    )
    audit_page_token, newest_sequence = _newest_audit_event(server, admin, org)
    return Arena(
        server=server,
        admin_token=admin_token,
        admin=admin,
        org=org,
        other_org=other_org,
        bearers={
            "admin": admin,
            "owner": owner.metadata,
            "manager": manager.metadata,
            "member": member.metadata,
            "key": key.metadata,
            "download-key": download_key.metadata,
            "revoked": revoked.metadata,
            "confined-admin": bearer(confined.secret),
            "outsider": outsider.metadata,
            "none": (),
        },
        victims=(*(user.name for user in victims), make_principal(server, admin_token, "victim")),
        victim_token_ids=(
            *(user.credential.token_id for user in victims),
            victim_key.token_id,
        ),
        callers=(*(user.name for user in callers), "admin"),
        stranger=make_principal(server, admin_token, "stranger"),
        token_ids=(
            *(user.credential.token_id for user in (*callers, *victims, outsider)),
            key.token_id,
            download_key.token_id,
            revoked.token_id,
            confined.token.token_id,
            victim_key.token_id,
            outside_key.token_id,
            admin_token[4:20],
        ),
        secrets=(
            admin_token,
            confined.secret,
            key.secret,
            download_key.secret,
            revoked.secret,
            victim_key.secret,
            outside_key.secret,
            *(user.credential.secret for user in (*callers, *victims, outsider)),
        ),
        tokens_page_token=_page_token(server, admin, org),
        organizations_page_token=str(
            server.admin.ListOrganizations(
                admin_pb2.ListOrganizationsRequest(page_size=1), metadata=admin
            ).next_page_token
        ),
        audit_page_token=audit_page_token,
        newest_sequence=newest_sequence,
        access_tokens=access_tokens,
        revoked_secret=revoked.secret,
    )


def snapshot(arena: Arena) -> Snapshot:
    """What is stored about both organisations, and which organisations exist."""
    tokens = {
        org: [
            token.SerializeToString(deterministic=True)
            for token in all_tokens(arena.server, arena.admin, org, include_revoked=True)
        ]
        for org in (arena.org, arena.other_org)
    }
    return (
        tokens,
        members(arena.server, arena.admin_token, arena.org),
        members(arena.server, arena.admin_token, arena.other_org),
        all_organizations(arena.server, arena.admin),
    )


def state_before(arena: Arena) -> Snapshot:
    """The snapshot before a call: the one taken after the previous call, if still current."""
    if not arena.last_snapshot:
        arena.last_snapshot.append(snapshot(arena))
    return arena.last_snapshot[0]


def state_after(arena: Arena) -> Snapshot:
    """A fresh snapshot, remembered as the `before` of the next call."""
    after = snapshot(arena)
    arena.last_snapshot[:] = [after]
    return after


def accepted(arena: Arena) -> None:
    """An accepted call may have changed what is stored: the next call takes a fresh snapshot."""
    arena.last_snapshot.clear()


# -- what every answer must satisfy -----------------------------------------------------------


def strings_in(message: Message) -> set[str]:
    """Every string a request carries: fields, repeated fields, map keys and values."""
    found: set[str] = set()
    for descriptor, value in message.ListFields():
        if descriptor.type == descriptor.TYPE_STRING:
            found.update([value] if isinstance(value, str) else value)
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            assert descriptor.message_type is not None  # set for every TYPE_MESSAGE field
            if descriptor.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    found.add(key)
                    if isinstance(item, str):
                        found.add(item)
            elif isinstance(value, Message):
                found |= strings_in(value)
            else:
                for item in value:
                    found |= strings_in(item)
    return found


def check_message(text: str, sent: Iterable[str]) -> None:
    """Short, actionable, and quoting neither a long stretch of the input nor a token."""
    assert text, "a refusal must carry a message"
    assert len(text) <= MAX_MESSAGE, f"a {len(text)}-character message: {text[:300]!r}..."
    assert "Traceback" not in text, text
    run = SECRET_RUN.search(text)
    assert run is None, f"the message holds a secret-shaped run {run.group()!r}: {text!r}"
    for value in sent:
        for shaped in TOKEN_SHAPED.findall(value):
            assert shaped not in text, f"the message quotes token-shaped {shaped!r}: {text!r}"
        if len(value) <= QUOTE_LIMIT or len(text) <= QUOTE_LIMIT:
            continue
        # Any 41-character stretch of `text` holds one of these 21-character windows.
        probes = (text[i : i + 21] for i in range(0, len(text) - 20, 20))
        if any(probe in value for probe in probes):
            for start in range(len(text) - QUOTE_LIMIT):
                stretch = text[start : start + QUOTE_LIMIT + 1]
                assert stretch not in value, (
                    f"the message quotes more than {QUOTE_LIMIT} characters of the input: "
                    f"{stretch!r} in {text!r}"
                )


def check_refusal(error: grpc.RpcError, sent: set[str], before: Snapshot, after: Snapshot) -> None:
    """Status, message, nothing changed, then the google.rpc details (in that order, so that
    hypothesis reports the most basic property that fails)."""
    code, text = error.code(), error.details() or ""
    assert code in REFUSAL_CODES, f"{code}: {text[:300]!r}"
    check_message(text, sent)
    assert after == before, f"refused ({code}: {text!r}) but something changed"
    if code == Code.INVALID_ARGUMENT:
        assert bad_request_fields(error), f"INVALID_ARGUMENT without a BadRequest: {text!r}"
    reason = error_reason(error)
    assert reason in REASONS, f"{code} carries reason {reason!r}"


def call(
    arena: Arena,
    rpc: Callable[..., Any],
    request: Message,
    metadata: Metadata,
    *,
    read_only: bool = False,
) -> Any:
    """Make the call and check what every answer must satisfy; the response, or None."""
    before = state_before(arena)
    sent = strings_in(request) | {value for _, value in metadata}
    try:
        response = rpc(request, metadata=metadata, timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        check_refusal(error, sent, before, state_after(arena))
        return None
    if read_only:
        assert state_after(arena) == before, "a read-only call changed something stored"
    else:
        accepted(arena)
    return response


# -- strategies --------------------------------------------------------------------------------

ALNUM = string.digits + string.ascii_uppercase + string.ascii_lowercase  # the token alphabet
CHARS = st.characters(codec="utf-8")  # anything protobuf can carry: controls, NUL, no surrogates
NASTY = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a\x00b",
        "\t",
        "\n",
        "\r\n",
        "\x1b[31m",
        "\x7f",
        "\u202e",
        "\ufeff",
        "\u200b",
        "İ",
        "ß",
        "🚀",
        "%s%n",
        "'",
        '"',
        "\\",
        "../",
        "' OR '1'='1",
        "null",
        "NaN",
        "-1",
        "*",
        ".*",
        "a.*",
        "/authority.v1.Admin/CreateOrganization",
        "tka_",
    ]
)
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)


def _repeat(base: str, length: int) -> str:
    return (base * (length // len(base) + 1))[:length]


def _checksum(body: str) -> str:
    number, digits = zlib.crc32(body.encode()), []
    for _ in range(6):
        number, rest = divmod(number, 62)
        digits.append(ALNUM[rest])
    return "".join(reversed(digits))


def _well_formed(token_id: str, secret: str) -> str:
    body = f"tka_{token_id}_{secret}"
    return body + _checksum(body)


TOKEN_ID = st.text(ALNUM, min_size=16, max_size=16)
TOKEN_SHAPED_TEXT = st.one_of(
    st.builds(_well_formed, TOKEN_ID, st.text(ALNUM, min_size=43, max_size=43)),
    st.builds(lambda i, rest: f"tka_{i}_{rest}", TOKEN_ID, st.text(ALNUM, max_size=60)),
    st.text(ALNUM, min_size=4, max_size=80).map(lambda rest: "tka_" + rest),
    st.text(ALNUM, min_size=32, max_size=80),
)
LONG_TEXT = st.builds(
    _repeat, st.text(CHARS, min_size=1, max_size=8), st.integers(QUOTE_LIMIT, 100_000)
)
SHORT_TEXT = st.text(CHARS, max_size=80)
NAME_LIKE = st.from_regex(r"[a-z0-9][a-z0-9.@_-]{0,70}", fullmatch=True)
HOSTILE = st.one_of(
    NASTY,
    SHORT_TEXT,
    st.lists(st.one_of(NASTY, SHORT_TEXT, NAME_LIKE), min_size=2, max_size=4).map("".join),
    NAME_LIKE,
    TOKEN_SHAPED_TEXT,
    LONG_TEXT,
)
# For a field repeated many times: nothing long, so that requests stay far below the limit.
HOSTILE_SHORT = st.one_of(NASTY, SHORT_TEXT, NAME_LIKE, TOKEN_SHAPED_TEXT)
ENUM = st.one_of(st.integers(0, 4), INT32)
PAGE_SIZE = st.one_of(st.integers(-2, 1001), INT32)

GOOD_SCOPES = st.sampled_from(
    [
        "all",
        "upload-only",
        "download-only",
        "download",
        "*",
        "authority.v1.*",
        "authority.v1.TokenAuthority.IssueToken",
        "/authority.v1.Admin/ListMembers",
        "environment.control.*",
    ]
)
# Thousands of scopes, but short ones: the request stays well below the 16 MiB limit.
SCOPES = st.one_of(
    st.lists(st.one_of(GOOD_SCOPES, HOSTILE), max_size=8),
    st.builds(lambda n, scope: [scope] * n, st.integers(0, 10_000), HOSTILE_SHORT),
    st.builds(
        lambda n, base: [f"{base}{i}" for i in range(n)],
        st.integers(0, 10_000),
        st.one_of(GOOD_SCOPES, HOSTILE_SHORT),
    ),
)
PROPERTY_VALUE = st.one_of(HOSTILE, st.sampled_from(["v" * 1024, "v" * 1025]))
PROPERTIES = st.one_of(
    st.dictionaries(
        st.one_of(HOSTILE, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,130}", fullmatch=True)),
        PROPERTY_VALUE,
        max_size=8,
    ),
    st.builds(
        lambda n, key, value: {f"{key}{i}": value for i in range(n)},
        st.integers(0, 5000),
        st.sampled_from(["k", "", "\x00", "é", "-"]),
        st.one_of(HOSTILE_SHORT, st.sampled_from(["v" * 1024, "v" * 1025])),
    ),
)

_YEAR_9999 = 253402300799


def _seconds() -> st.SearchStrategy[int]:
    now = int(time.time())
    return st.one_of(
        st.integers(now - 10, now + 10 * 366 * 86400),
        st.sampled_from(
            [0, -1, 1, _YEAR_9999, _YEAR_9999 + 1, -62135596800, -62135596801, 2**31, 2**32]
        ),
        INT64,
    )


NANOS = st.one_of(st.integers(0, 999_999_999), st.sampled_from([-1, 10**9]), INT32)
DURATION = st.builds(
    lambda s, n: Duration(seconds=s, nanos=n),
    st.one_of(
        st.integers(-10, 11 * 366 * 86400),
        st.sampled_from([315_360_000, 315_360_001, -315_360_001]),
        INT64,
    ),
    NANOS,
)
EXPIRY = st.one_of(
    st.none(),
    st.builds(lambda s, n: ("expires_at", Timestamp(seconds=s, nanos=n)), _seconds(), NANOS),
    DURATION.map(lambda duration: ("ttl", duration)),
)

JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(CHARS, max_size=20),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(CHARS, max_size=5), children, max_size=4),
    ),
    max_leaves=10,
)


def _b64(raw: bytes, urlsafe: bool, pad: bool) -> str:
    encoded = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
    return encoded if pad else encoded.rstrip("=")


def _b64_json(value: object) -> str:
    return _b64(json.dumps(value).encode(), True, False)


def _decoded(token: str) -> list[Any] | None:
    """[query, position] of a page token, if it is still base64 JSON of that shape."""
    try:
        value = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        return None
    return value if isinstance(value, list) and len(value) == 2 else None


def page_tokens(real: str, other_queries: list[object]) -> st.SearchStrategy[str]:
    """Forged page tokens, given a real one of the query the test sends."""
    forged = [
        HOSTILE,
        st.builds(_b64, st.binary(max_size=200), st.booleans(), st.booleans()),
        JSON.map(_b64_json),
        # deeply nested JSON: a parser's recursion limit
        st.integers(1, 200_000).map(lambda depth: _b64(b"[" * depth + b"]" * depth, True, False)),
    ]
    if real:
        forged += [
            st.just(real),
            st.integers(0, len(real) - 1).map(lambda cut: real[:cut]),
            HOSTILE_SHORT.map(lambda junk: real + junk),
        ]
    decoded = _decoded(real) if real else None
    if decoded is not None:
        query, position = decoded
        positions = st.one_of(
            JSON,
            st.sampled_from([-1, 2**63, 10**30, "", "\x00", "zzzz", "x\x00", True, None, [[1]]]),
            HOSTILE_SHORT,
        )
        forged += [
            positions.map(lambda where: _b64_json([query, where])),
            st.one_of(JSON, st.sampled_from(other_queries)).map(
                lambda other: _b64_json([other, position])
            ),
        ]
    return st.one_of(*forged)


T = TypeVar("T")


def mostly(valid: T, other: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """`valid` about half the time, else `other`. (Hypothesis rarely picks a `st.just` branch
    of `one_of`, so a call would almost never get past its first check: this one does.)"""
    return st.booleans().flatmap(lambda pick: st.just(valid) if pick else other)


def bearer_metadata(arena: Arena) -> st.SearchStrategy[Metadata]:
    """One of the arena's callers, most often the global administrator, or a hostile header."""
    printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)
    hostile = st.one_of(
        TOKEN_SHAPED_TEXT.map(lambda value: "Bearer " + value),
        printable.map(lambda value: "Bearer " + value),
        printable,
        st.sampled_from(["Bearer", "Bearer ", "bearer  x", "Basic dXNlcjpwYXNz", "Bearer tka_"]),
        st.builds(_repeat, st.text(ALNUM, min_size=1, max_size=4), st.integers(1, 4000)).map(
            lambda value: "Bearer " + value
        ),
    )
    # The administrator half of the time: its calls get past authentication, so they reach
    # every field's validation and the store.
    return mostly(
        arena.admin,
        st.one_of(
            st.sampled_from(list(arena.bearers.values())),
            hostile.map(lambda value: (("authorization", value),)),
        ),
    )


def organization_names(arena: Arena) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from([arena.org, arena.other_org, "", "admin"]), HOSTILE)


def principal_names(arena: Arena, pool: Iterable[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from([*pool, arena.stranger]), HOSTILE)


def token_ids(arena: Arena, pool: Iterable[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(list(pool)),
        TOKEN_ID,
        HOSTILE,
        st.sampled_from(list(pool)).map(lambda token_id: token_id.lower()),
        st.sampled_from(list(arena.secrets)),
    )


def unknown_fields() -> st.SearchStrategy[bytes]:
    """Well-formed fields this version does not know (field 1000, length-delimited)."""
    return st.one_of(
        st.just(b""),
        st.binary(max_size=64).map(lambda raw: b"\xc2\x3e" + bytes([len(raw)]) + raw),
    )


M = TypeVar("M", bound=Message)


def with_unknown(request: M, extra: bytes) -> M:
    request.MergeFromString(extra)
    return request


# -- TokenAuthority management ----------------------------------------------------------------


@given(data=st.data())
def test_issue_token(arena: Arena, data: st.DataObject) -> None:
    request = pb.IssueTokenRequest(
        organization=data.draw(mostly(arena.org, organization_names(arena)), "organization"),
        label=data.draw(mostly("ci", HOSTILE), "label"),
        description=data.draw(mostly("", HOSTILE), "description"),
        subject=data.draw(
            mostly("", principal_names(arena, (*arena.callers, *arena.victims))),
            "subject",
        ),
        scopes=data.draw(SCOPES, "scopes"),
        scope_profile=pb.ScopeProfile.ValueType(data.draw(ENUM, "scope_profile")),
        properties=data.draw(PROPERTIES, "properties"),
    )
    expiry = data.draw(EXPIRY, "expiry")
    if expiry is not None:
        getattr(request, expiry[0]).CopyFrom(expiry[1])
    with_unknown(request, data.draw(unknown_fields(), "unknown fields"))
    call(arena, arena.server.tokens.IssueToken, request, data.draw(bearer_metadata(arena)))


@given(data=st.data())
def test_get_token(arena: Arena, data: st.DataObject) -> None:
    request = pb.GetTokenRequest(token_id=data.draw(token_ids(arena, arena.token_ids), "token_id"))
    with_unknown(request, data.draw(unknown_fields(), "unknown fields"))
    metadata = data.draw(bearer_metadata(arena), "bearer")
    call(arena, arena.server.tokens.GetToken, request, metadata, read_only=True)


@given(data=st.data())
def test_list_tokens(arena: Arena, data: st.DataObject) -> None:
    other_queries: list[object] = [
        [arena.other_org, None, True],
        [arena.org, None, False],
        [arena.org, "admin", True],
        ["organizations", None],
    ]
    request = pb.ListTokensRequest(
        organization=data.draw(mostly(arena.org, organization_names(arena)), "organization"),
        page_size=data.draw(PAGE_SIZE, "page_size"),
        page_token=data.draw(
            mostly("", page_tokens(arena.tokens_page_token, other_queries)),
            "page_token",
        ),
        include_revoked=data.draw(st.booleans(), "include_revoked"),
    )
    with_unknown(request, data.draw(unknown_fields(), "unknown fields"))
    metadata = data.draw(bearer_metadata(arena), "bearer")
    call(arena, arena.server.tokens.ListTokens, request, metadata, read_only=True)


@given(data=st.data())
def test_revoke_token(arena: Arena, data: st.DataObject) -> None:
    # Never a caller's own token (nor the administrator's: revoking it would end the session).
    token_id = data.draw(token_ids(arena, arena.victim_token_ids), "token_id")
    if token_id in arena.token_ids and token_id not in arena.victim_token_ids:
        token_id = arena.victim_token_ids[0]
    request = pb.RevokeTokenRequest(token_id=token_id)
    with_unknown(request, data.draw(unknown_fields(), "unknown fields"))
    call(arena, arena.server.tokens.RevokeToken, request, data.draw(bearer_metadata(arena)))


def check_secret_free(arena: Arena, answer: Message) -> None:
    """What the change log sends back never carries a token value."""
    raw = answer.SerializeToString()
    for secret in arena.secrets:
        assert secret.encode() not in raw, f"an answer carries a token value: {answer}"


@given(data=st.data())
def test_watch_events(arena: Arena, data: st.DataObject) -> None:
    # Mostly positions inside the arena's history (the first event comes at once): a stream
    # that has nothing to send costs the whole deadline.
    newest = arena.newest_sequence
    request = pb.WatchEventsRequest(
        organization=data.draw(mostly(arena.org, organization_names(arena)), "organization"),
        after_sequence=data.draw(
            st.one_of(
                st.sampled_from([0, 1, newest - 1, newest, -1, -(2**63), 2**63 - 1]),
                st.integers(-2, newest + 2),
                INT64,
            ),
            "after_sequence",
        ),
    )
    with_unknown(request, data.draw(unknown_fields(), "unknown fields"))
    metadata = data.draw(bearer_metadata(arena), "bearer")
    before = state_before(arena)
    sent = strings_in(request) | {value for _, value in metadata}
    stream = arena.server.tokens.WatchEvents(request, metadata=metadata, timeout=WATCH_DEADLINE)
    try:
        first = next(stream, None)
    except grpc.RpcError as error:
        if error.code() != Code.DEADLINE_EXCEEDED:
            check_refusal(error, sent, before, state_after(arena))
            return
        # Quiet (nothing after that position yet), not refused: only a valid request may be.
        assert request.organization in (arena.org, arena.other_org), error.details()
        assert request.after_sequence >= 0, error.details()
        first = None
    finally:
        stream.cancel()
    assert state_after(arena) == before, "a WatchEvents changed something stored"
    if first is not None:
        assert first.organization == request.organization, first
        assert first.sequence > request.after_sequence, first
        check_secret_free(arena, first)


# -- key exchange, refresh and the signing keys ----------------------------------------------

B64URL = string.ascii_letters + string.digits + "-_"
# Seconds since the epoch no access token of ours carries (a datetime cannot even hold most).
ODD_TIMES = [-1, -(2**63), _YEAR_9999 + 1, 2**53 + 1, 2**63, 10**30]
ACCESS_TOKEN_ISSUED = EventKind.ACCESS_TOKEN_ISSUED.value


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def signed_here(arena: Arena, token: str) -> dict[str, Any] | None:
    """The claims of `token` if a key the server publishes signed it, else None."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        published = jwt.PyJWKSet.from_json(signing_keys(arena.server).jwks_json)
        key = next(key for key in published.keys if key.key_id == kid)
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["EdDSA"],
            options={"verify_exp": False, "verify_aud": False, "verify_iat": False},
        )
    except (jwt.PyJWTError, StopIteration, ValueError, TypeError):
        return None
    return claims


def _sign(arena: Arena, claims: dict[str, Any]) -> str:
    """`claims` signed by the server's own current key: what no one else can make, so only
    the claims' checks stand between a shape the server never signs and a fault."""
    try:
        return str(arena.server.running.application.signing.ring.sign(claims))
    except (TypeError, ValueError):  # PyJWT will not encode it (e.g. a non-string iss)
        return "not.a.token"


def signed_variants(arena: Arena) -> st.SearchStrategy[str]:
    """Access tokens signed by this service's own key with one claim missing or of any value
    (times far out of range among them)."""
    real = claims_of(arena.access_tokens[0])
    names = st.sampled_from(sorted(real))
    odd_values = st.one_of(JSON, st.sampled_from([0, 2**31, *ODD_TIMES, True, "", [], {}]))
    times = st.sampled_from(["exp", "iat", "refresh_until"])
    odd_times = st.one_of(INT64, st.sampled_from(ODD_TIMES))
    claims = st.one_of(
        st.builds(lambda name, value: {**real, name: value}, names, odd_values),
        st.builds(lambda name, value: {**real, name: value}, times, odd_times),
        names.map(lambda name: {key: value for key, value in real.items() if key != name}),
    )
    return claims.map(lambda hostile: _sign(arena, hostile))


def jwt_shaped(arena: Arena) -> st.SearchStrategy[str]:
    """Access tokens: real, cut, extended, junk in three parts, hostile JSON in the header and
    payload, and signed by this service with claims of any shape."""
    tokens = st.sampled_from(list(arena.access_tokens))
    real = claims_of(arena.access_tokens[0])
    kid = jwt.get_unverified_header(arena.access_tokens[0])["kid"]
    part = st.text(B64URL, min_size=1, max_size=120)
    header = st.one_of(
        JSON,
        st.fixed_dictionaries(
            {
                "alg": st.one_of(st.sampled_from(["EdDSA", "none", "HS256"]), JSON),
                "typ": st.one_of(st.just("at+jwt"), JSON),
                "kid": st.one_of(st.just(kid), JSON),
            }
        ),
    )
    return st.one_of(
        tokens,
        st.builds(lambda token, cut: token[:cut], tokens, st.integers(0, 700)),
        st.builds(lambda token, junk: token + junk, tokens, HOSTILE_SHORT),
        st.builds(lambda *parts: ".".join(parts), part, part, part),
        st.builds(
            lambda head, body, signature: f"{_b64_json(head)}.{_b64_json(body)}.{signature}",
            header,
            st.one_of(st.just(real), JSON),
            part,
        ),
        signed_variants(arena),
    )


@pytest.fixture
def exchanger(deployment: Deployment) -> Iterator[ServerHandle]:
    """A server of its own on the arena's database, for ExchangeKey: its limits on failed
    exchanges and on recorded refusals are refilled before each call (its monotonic clock is
    moved), so that every example reaches the checks behind them; the shared server's
    allowances are left alone."""
    with serve(deployment.database_url) as server:
        yield server


def newest_exchange(arena: Arena) -> str:
    """The access token id of the newest `access_token.issued` event."""
    page = arena.server.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(action=ACCESS_TOKEN_ISSUED, page_size=1),
        metadata=arena.admin,
    )
    return str(page.events[0].object) if page.events else ""


def exchange_keys(arena: Arena) -> st.SearchStrategy[str]:
    """The arena's tokens about half the time (so that exchanges get past the key and reach
    the other fields), else damaged, forged or junk keys and access tokens."""
    secrets = st.sampled_from(list(arena.secrets))
    others = st.one_of(
        HOSTILE,
        st.builds(
            _well_formed,
            st.sampled_from(list(arena.token_ids)),
            st.text(ALNUM, min_size=43, max_size=43),
        ),
        st.builds(lambda secret, junk: secret + junk, secrets, HOSTILE_SHORT),
        st.builds(lambda secret, cut: secret[:cut], secrets, st.integers(0, 70)),
        secrets.map(lambda secret: f" {secret}\n"),
        jwt_shaped(arena),
    )
    return st.booleans().flatmap(lambda real: secrets if real else others)


@given(data=st.data())
def test_exchange_key(arena: Arena, exchanger: ServerHandle, data: st.DataObject) -> None:
    request = pb.ExchangeKeyRequest(
        key=data.draw(exchange_keys(arena), "key"),
        scopes=data.draw(mostly([], SCOPES), "scopes"),
        audience=data.draw(mostly("", HOSTILE), "audience"),
    )
    ttl = data.draw(st.one_of(st.none(), DURATION), "ttl")
    if ttl is not None:
        request.ttl.CopyFrom(ttl)
    with_unknown(request, data.draw(unknown_fields(), "unknown fields"))
    metadata = data.draw(bearer_metadata(arena), "bearer")  # none is needed: never echoed
    exchanger.monotonic.value += 3600
    recorded = newest_exchange(arena)

    answer = call(arena, exchanger.tokens.ExchangeKey, request, metadata, read_only=True)

    if answer is None:
        assert newest_exchange(arena) == recorded, "a refused exchange was recorded as issued"
        return
    assert newest_exchange(arena) == answer.token_id, "an exchange was not recorded"
    claims = claims_of(answer.access_token)
    keys = {secret[4:20]: secret for secret in arena.secrets}
    assert claims["parent"] in keys, "an access token for no key of the arena"
    assert keys[claims["parent"]] in request.key and keys[claims["parent"]] != arena.revoked_secret
    assert (claims["jti"], claims["exp"]) == (answer.token_id, answer.expires_at.seconds)
    assert claims["iat"] < claims["exp"] <= claims["iat"] + 900


def access_token_values(arena: Arena) -> st.SearchStrategy[str]:
    """The arena's access tokens about half the time, else signed variants, damaged, forged
    or junk values, and keys."""
    others = st.one_of(
        signed_variants(arena), jwt_shaped(arena), HOSTILE, st.sampled_from(list(arena.secrets))
    )
    tokens = st.sampled_from(list(arena.access_tokens))
    return st.booleans().flatmap(lambda real: tokens if real else others)


@given(data=st.data())
def test_refresh_token(arena: Arena, data: st.DataObject) -> None:
    request = pb.RefreshTokenRequest(
        access_token=data.draw(access_token_values(arena), "access_token")
    )
    with_unknown(request, data.draw(unknown_fields(), "unknown fields"))
    metadata = data.draw(bearer_metadata(arena), "bearer")

    answer = call(arena, arena.server.tokens.RefreshToken, request, metadata, read_only=True)

    if answer is None:
        return
    presented = signed_here(arena, request.access_token)
    assert presented is not None, "refreshed a token this service did not sign"
    renewed = claims_of(answer.access_token)
    kept = ("iss", "sub", "aud", "client_id", "scope", "org", "parent", "refresh_until")
    assert {name: renewed[name] for name in kept} == {name: presented[name] for name in kept}
    assert renewed["jti"] == answer.token_id != presented["jti"]


@given(data=st.data())
def test_get_signing_keys(arena: Arena, data: st.DataObject) -> None:
    request = with_unknown(
        pb.GetSigningKeysRequest(), data.draw(unknown_fields(), "unknown fields")
    )
    metadata = data.draw(bearer_metadata(arena), "bearer")  # none is needed: never echoed

    answer = call(arena, arena.server.tokens.GetSigningKeys, request, metadata, read_only=True)

    assert answer is not None, "GetSigningKeys needs nothing and refuses no one"
    published = json.loads(answer.jwks_json)["keys"]
    assert [key["kid"] for key in published] == [key.kid for key in answer.keys]
    for key in published:  # public parts only, never `d`
        assert set(key) == {"kty", "crv", "x", "kid", "alg", "use"}, key


def published_kids(arena: Arena) -> list[str]:
    return [key.kid for key in signing_keys(arena.server).keys]


@given(data=st.data())
def test_rotate_signing_key(arena: Arena, data: st.DataObject) -> None:
    request = with_unknown(
        admin_pb2.RotateSigningKeyRequest(), data.draw(unknown_fields(), "unknown fields")
    )
    metadata = data.draw(bearer_metadata(arena), "bearer")
    before = published_kids(arena)

    answer = call(arena, arena.server.admin.RotateSigningKey, request, metadata)

    after = published_kids(arena)
    if answer is None:
        assert after == before, "a refused rotation changed the signing keys"
        return
    assert metadata == arena.admin, "only a global administrator's global token rotates"
    assert (answer.kid, answer.retired_kid) == (after[0], before[0])
    assert after[1:] == before
    for token in arena.access_tokens:  # a retired key's tokens still verify
        assert arena.server.tokens.Validate(pb.ValidateRequest(token=token)).valid


# -- Admin -------------------------------------------------------------------------------------


@given(data=st.data())
def test_create_organization(arena: Arena, data: st.DataObject) -> None:
    request = admin_pb2.CreateOrganizationRequest(
        name=data.draw(
            st.one_of(organization_names(arena), st.builds(unique, st.just("made"))), "name"
        ),
        display_name=data.draw(mostly("", HOSTILE), "display_name"),
    )
    with_unknown(request, data.draw(unknown_fields(), "unknown fields"))
    call(arena, arena.server.admin.CreateOrganization, request, data.draw(bearer_metadata(arena)))


@given(data=st.data())
def test_list_organizations(arena: Arena, data: st.DataObject) -> None:
    other_queries: list[object] = [
        ["organizations", []],
        ["organizations", [arena.org]],
        [arena.org, None, True],
    ]
    request = admin_pb2.ListOrganizationsRequest(
        page_size=data.draw(PAGE_SIZE, "page_size"),
        page_token=data.draw(
            mostly("", page_tokens(arena.organizations_page_token, other_queries)),
            "page_token",
        ),
    )
    with_unknown(request, data.draw(unknown_fields(), "unknown fields"))
    metadata = data.draw(bearer_metadata(arena), "bearer")
    call(arena, arena.server.admin.ListOrganizations, request, metadata, read_only=True)


@given(data=st.data())
def test_create_principal(arena: Arena, data: st.DataObject) -> None:
    request = admin_pb2.CreatePrincipalRequest(
        name=data.draw(
            st.one_of(principal_names(arena, arena.callers), st.builds(unique, st.just("made"))),
            "name",
        ),
        kind=admin_pb2.PrincipalKind.ValueType(data.draw(ENUM, "kind")),
        kind_name=data.draw(
            st.one_of(st.sampled_from(["", "user", "service", "USER", " user ", "admin"]), HOSTILE),
            "kind_name",
        ),
    )
    with_unknown(request, data.draw(unknown_fields(), "unknown fields"))
    call(arena, arena.server.admin.CreatePrincipal, request, data.draw(bearer_metadata(arena)))


ROLE_NAMES = st.one_of(
    st.sampled_from(["", "owner", "admin", "member", "OWNER", " member ", "superuser"]), HOSTILE
)


@given(data=st.data())
def test_add_member(arena: Arena, data: st.DataObject) -> None:
    request = admin_pb2.AddMemberRequest(
        organization=data.draw(mostly(arena.org, organization_names(arena)), "organization"),
        principal=data.draw(principal_names(arena, arena.victims), "principal"),
        role=admin_pb2.Role.ValueType(data.draw(ENUM, "role")),
        role_name=data.draw(ROLE_NAMES, "role_name"),
    )
    with_unknown(request, data.draw(unknown_fields(), "unknown fields"))
    call(arena, arena.server.admin.AddMember, request, data.draw(bearer_metadata(arena)))


@given(data=st.data())
def test_remove_member(arena: Arena, data: st.DataObject) -> None:
    request = admin_pb2.RemoveMemberRequest(
        organization=data.draw(mostly(arena.org, organization_names(arena)), "organization"),
        principal=data.draw(principal_names(arena, arena.victims), "principal"),
    )
    with_unknown(request, data.draw(unknown_fields(), "unknown fields"))
    call(arena, arena.server.admin.RemoveMember, request, data.draw(bearer_metadata(arena)))


@given(data=st.data())
def test_list_members(arena: Arena, data: st.DataObject) -> None:
    request = admin_pb2.ListMembersRequest(
        organization=data.draw(mostly(arena.org, organization_names(arena)), "organization")
    )
    with_unknown(request, data.draw(unknown_fields(), "unknown fields"))
    metadata = data.draw(bearer_metadata(arena), "bearer")
    call(arena, arena.server.admin.ListMembers, request, metadata, read_only=True)


@given(data=st.data())
def test_get_cache_stats(arena: Arena, data: st.DataObject) -> None:
    request = with_unknown(
        admin_pb2.GetCacheStatsRequest(), data.draw(unknown_fields(), "unknown fields")
    )
    metadata = data.draw(bearer_metadata(arena), "bearer")
    call(arena, arena.server.admin.GetCacheStats, request, metadata, read_only=True)


TIMESTAMP = st.one_of(
    st.none(), st.builds(lambda s, n: Timestamp(seconds=s, nanos=n), _seconds(), NANOS)
)
ACTIONS = st.one_of(
    st.sampled_from(
        ["", *(kind.value for kind in EventKind), "TOKEN.ISSUED", "token.*", " token.issued"]
    ),
    HOSTILE,
)


@given(data=st.data())
def test_list_audit_events(arena: Arena, data: st.DataObject) -> None:
    unfiltered = [None] * 6
    other_queries: list[object] = [
        ["audit", arena.other_org, *unfiltered],
        ["audit", None, *unfiltered],
        ["audit", arena.org, "admin", *unfiltered[1:]],
        ["organizations", None],
        [arena.org, None, True],
    ]
    request = admin_pb2.ListAuditEventsRequest(
        organization=data.draw(mostly(arena.org, organization_names(arena)), "organization"),
        actor=data.draw(
            st.one_of(
                st.just(""),
                principal_names(arena, arena.callers),
                token_ids(arena, arena.token_ids).map(lambda token_id: KEY_PREFIX + token_id),
            ),
            "actor",
        ),
        action=data.draw(ACTIONS, "action"),
        object=data.draw(
            st.one_of(
                st.sampled_from(
                    ["", arena.org, *arena.token_ids, "/authority.v1.Admin/ListAuditEvents"]
                ),
                st.sampled_from(["o" * MAX_OBJECT, "o" * (MAX_OBJECT + 1)]),
                HOSTILE,
            ),
            "object",
        ),
        page_size=data.draw(PAGE_SIZE, "page_size"),
        page_token=data.draw(
            mostly("", page_tokens(arena.audit_page_token, other_queries)),
            "page_token",
        ),
    )
    for name in ("since", "until"):
        moment = data.draw(TIMESTAMP, name)
        if moment is not None:
            getattr(request, name).CopyFrom(moment)
    with_unknown(request, data.draw(unknown_fields(), "unknown fields"))
    metadata = data.draw(bearer_metadata(arena), "bearer")
    answer = call(arena, arena.server.admin.ListAuditEvents, request, metadata, read_only=True)
    if answer is not None:
        if request.organization:
            assert {event.organization for event in answer.events} <= {request.organization}
        check_secret_free(arena, answer)


# -- Validate, ValidateBatch: a refused token is an answer, never an error status --------------


def validate_requests(arena: Arena, text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """A token (real, damaged, forged or junk), a permission and a request_id."""
    secrets = st.sampled_from(list(arena.secrets))
    token = st.one_of(
        secrets,
        text,
        # a known id with a wrong secret, and small damage to real tokens
        st.builds(
            _well_formed,
            st.sampled_from(list(arena.token_ids)),
            st.text(ALNUM, min_size=43, max_size=43),
        ),
        st.builds(lambda secret, junk: secret + junk, secrets, HOSTILE_SHORT),
        st.builds(lambda secret, cut: secret[:cut], secrets, st.integers(0, 70)),
        secrets.map(str.lower),
        secrets.map(lambda secret: f" {secret}\n"),
        jwt_shaped(arena),
    )
    permission = st.one_of(
        st.sampled_from(["", "download", "upload", "/authority.v1.Admin/ListMembers", "a.*"]),
        text,
    )
    request_id = st.one_of(
        text,
        st.builds(_repeat, st.text(CHARS, min_size=1, max_size=3), st.integers(250, 260)),
    )
    return st.builds(pb.ValidateRequest, token=token, permission=permission, request_id=request_id)


def check_verdict(arena: Arena, request: Any, answer: Any) -> None:
    assert answer.request_id == request.request_id
    if answer.valid:
        issued = request.token in arena.secrets or signed_here(arena, request.token) is not None
        assert issued, "valid, but not one of the tokens issued"
        assert answer.reason == pb.REASON_UNSPECIFIED, "a valid answer carries no reason"
    else:
        assert answer.reason != pb.REASON_UNSPECIFIED, "a refused token carries its reason"


def overlong_request_id(request: Any) -> bool:
    """A request_id is echoed back, so it is bounded: a longer one is a bad request (the only
    thing a Validate may refuse with a status)."""
    return len(request.request_id) > MAX_REQUEST_ID


@given(data=st.data())
def test_validate(arena: Arena, data: st.DataObject) -> None:
    request = with_unknown(
        data.draw(validate_requests(arena, HOSTILE), "request"),
        data.draw(unknown_fields(), "unknown fields"),
    )
    before = state_before(arena)
    answer: pb.ValidateResponse | grpc.RpcError
    try:
        answer = arena.server.tokens.Validate(request, timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        answer = error
    after = state_after(arena)
    if isinstance(answer, grpc.RpcError):
        assert overlong_request_id(request), (
            f"Validate answered {answer.code()}: {answer.details()!r}"
        )
        assert answer.code() == Code.INVALID_ARGUMENT, f"{answer.code()}: {answer.details()!r}"
        check_refusal(answer, strings_in(request), before, after)
        assert bad_request_fields(answer) == ["request_id"]
        return
    assert not overlong_request_id(request), "an overlong request_id was echoed back"
    check_verdict(arena, request, answer)
    assert after == before, "a Validate changed something stored"


@given(data=st.data())
def test_validate_batch(arena: Arena, data: st.DataObject) -> None:
    distinct = data.draw(
        st.lists(validate_requests(arena, HOSTILE_SHORT), min_size=1, max_size=6), "requests"
    )
    size = data.draw(
        st.one_of(
            st.integers(0, 20), st.integers(BATCH_MAX - 2, BATCH_MAX + 2), st.integers(0, 5000)
        ),
        "size",
    )
    requests = [distinct[i % len(distinct)] for i in range(size)]
    if data.draw(st.booleans(), "one long token"):
        requests.append(pb.ValidateRequest(token=data.draw(LONG_TEXT, "long token")))
    request = pb.ValidateBatchRequest(requests=requests)
    before = state_before(arena)
    try:
        answer = arena.server.tokens.ValidateBatch(request, timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        after = state_after(arena)
        too_many = len(requests) > BATCH_MAX
        overlong = any(overlong_request_id(item) for item in requests)
        assert too_many or overlong, (
            f"ValidateBatch of {len(requests)} answered {error.code()}: {error.details()!r}"
        )
        assert error.code() == Code.INVALID_ARGUMENT, f"{error.code()}: {error.details()!r}"
        check_refusal(error, strings_in(request), before, after)
        expected = {"BATCH_TOO_LARGE"} if too_many else set()
        expected |= {"FIELD_INVALID"} if overlong else set()
        assert error_reason(error) in expected
        return
    after = state_after(arena)
    assert len(requests) <= BATCH_MAX, f"a batch of {len(requests)} was answered"
    assert not any(overlong_request_id(item) for item in requests), "an overlong request_id"
    assert len(answer.results) == len(requests)
    for item, result in zip(requests, answer.results, strict=True):
        check_verdict(arena, item, result)
    for item, result in zip(requests[: len(distinct)], answer.results, strict=False):
        alone = arena.server.tokens.Validate(item, timeout=CALL_TIMEOUT)
        assert result == alone, "a batch answers differently from Validate"
    assert after == before, "a ValidateBatch changed something stored"


# -- forged page tokens hypothesis found, kept as fixed cases -----------------------------------

FORGED_PAGE_TOKENS = {
    # a JSON parser's recursion limit (RecursionError, not ValueError)
    "nested-2000": _b64(b"[" * 2000 + b"]" * 2000, True, False),
    "nested-100000": _b64(b"[" * 100_000 + b"]" * 100_000, True, False),
    # the right query, a position PostgreSQL cannot even compare (text with NUL)
    "nul-position": _b64_json([["organizations", None], "\x00"]),
    "nul-in-query": _b64_json([["organizations\x00", None], "a"]),
    "float-position": _b64_json([["organizations", None], 1e308]),
    "huge-position": _b64_json([["organizations", None], 10**400]),
}


@pytest.mark.parametrize("rpc_name", ["ListTokens", "ListOrganizations"])
@pytest.mark.parametrize("case", list(FORGED_PAGE_TOKENS))
def test_forged_page_token(arena: Arena, rpc_name: str, case: str) -> None:
    token = FORGED_PAGE_TOKENS[case]
    if rpc_name == "ListTokens":
        request: Message = pb.ListTokensRequest(organization=arena.org, page_token=token)
        call(arena, arena.server.tokens.ListTokens, request, arena.admin, read_only=True)
    else:
        request = admin_pb2.ListOrganizationsRequest(page_token=token)
        call(arena, arena.server.admin.ListOrganizations, request, arena.admin, read_only=True)


# -- access tokens hypothesis found, kept as fixed cases -----------------------------------------

# Signed by this service's own key, so only the claims' checks stand in the way: a time no
# datetime (or timedelta) can hold made Validate and RefreshToken fail with INTERNAL.
SIGNED_ODD_TIMES = [
    ("exp", 2**53 + 1),
    ("exp", 10**30),
    ("iat", -(2**63)),
    ("refresh_until", 2**63),
    ("iat", -1),
]


@pytest.mark.parametrize(("claim", "value"), SIGNED_ODD_TIMES)
def test_a_signed_token_with_a_time_out_of_range_is_malformed_to_validate_and_refresh(
    arena: Arena, claim: str, value: int
) -> None:
    token = _sign(arena, {**claims_of(arena.access_tokens[0]), claim: value})

    answer = arena.server.tokens.Validate(pb.ValidateRequest(token=token), timeout=CALL_TIMEOUT)
    assert (answer.valid, answer.reason) == (False, pb.REASON_MALFORMED)
    with pytest.raises(grpc.RpcError) as refused:
        arena.server.tokens.RefreshToken(
            pb.RefreshTokenRequest(access_token=token), timeout=CALL_TIMEOUT
        )
    assert refused.value.code() == Code.UNAUTHENTICATED, refused.value.details()
    assert error_reason(refused.value) == "TOKEN_MALFORMED"


# -- requests close to the server's 16 MiB limit -------------------------------------------------

NEAR_LIMIT = 15 * 1024 * 1024


def _near_limit_requests(arena: Arena) -> dict[str, tuple[Callable[..., Any], Message, bool]]:
    big = _repeat("x\x00é", NEAR_LIMIT // 2)
    tokens, admin = arena.server.tokens, arena.server.admin
    return {
        "issue-description": (
            tokens.IssueToken,
            pb.IssueTokenRequest(organization=arena.org, label="x", description=big),
            False,
        ),
        "issue-organization": (tokens.IssueToken, pb.IssueTokenRequest(organization=big), False),
        "issue-properties": (
            tokens.IssueToken,
            pb.IssueTokenRequest(
                organization=arena.org,
                label="x",
                properties={f"k{i}": "v" * 100_000 for i in range(NEAR_LIMIT // 100_000)},
            ),
            False,
        ),
        "issue-scopes": (
            tokens.IssueToken,
            pb.IssueTokenRequest(
                organization=arena.org, label="x", scopes=["download"] * (NEAR_LIMIT // 10)
            ),
            False,
        ),
        "get-token": (tokens.GetToken, pb.GetTokenRequest(token_id=big), True),
        "list-tokens-page-token": (
            tokens.ListTokens,
            pb.ListTokensRequest(organization=arena.org, page_token=_repeat("QUFB", NEAR_LIMIT)),
            True,
        ),
        "create-organization": (
            admin.CreateOrganization,
            admin_pb2.CreateOrganizationRequest(name=unique("big"), display_name=big),
            False,
        ),
        "add-member": (
            admin.AddMember,
            admin_pb2.AddMemberRequest(organization=arena.org, principal=big, role_name="member"),
            False,
        ),
    }


NEAR_LIMIT_CASES = [
    "issue-description",
    "issue-organization",
    "issue-properties",
    "issue-scopes",
    "get-token",
    "list-tokens-page-token",
    "create-organization",
    "add-member",
]


@pytest.mark.parametrize("case", NEAR_LIMIT_CASES)
def test_request_close_to_the_size_limit(arena: Arena, case: str) -> None:
    rpc, request, read_only = _near_limit_requests(arena)[case]
    assert request.ByteSize() < 16 * 1024 * 1024
    call(arena, rpc, request, arena.admin, read_only=read_only)


def test_validate_close_to_the_size_limit(arena: Arena) -> None:
    request = pb.ValidateRequest(token="tka_" + "A" * NEAR_LIMIT, permission="p" * 1000)
    answer = arena.server.tokens.Validate(request, timeout=CALL_TIMEOUT)
    assert answer.reason == pb.REASON_MALFORMED
