"""Shared by the API integration tests: fresh organisations, principals, tokens and refusals.

Everything goes through the real server over its real channel; nothing here reaches into the
service's internals. Names are made unique because the tests of a backend share one database.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from authority.v1 import admin_pb2
from authority.v1 import token_authority_pb2 as pb
from tests.harness import ServerHandle, bearer, unique

Metadata = tuple[tuple[str, str], ...]

# What a user's token needs to manage tokens and members: every authority.v1 method, plus the
# data-plane profile so that it can hand `all` on to the tokens it issues.
MANAGE_SCOPES = ("authority.v1.*", "all")
ROLES = {
    "owner": admin_pb2.ROLE_OWNER,
    "admin": admin_pb2.ROLE_ADMIN,
    "member": admin_pb2.ROLE_MEMBER,
}


@dataclass(frozen=True)
class Credential:
    """A token the test holds: its value, its id and the metadata that presents it."""

    secret: str
    token_id: str
    token: pb.Token

    @property
    def metadata(self) -> Metadata:
        return bearer(self.secret)


@dataclass(frozen=True)
class User:
    """A principal with a membership in one organisation and a management token there."""

    name: str
    organization: str
    credential: Credential

    @property
    def metadata(self) -> Metadata:
        return self.credential.metadata


def credential(issued: pb.IssueTokenResponse) -> Credential:
    return Credential(issued.secret, issued.token.token_id, issued.token)


def make_org(server: ServerHandle, admin_token: str, prefix: str = "org") -> str:
    """A fresh organisation, created by the global administrator."""
    name = unique(prefix)
    server.admin.CreateOrganization(
        admin_pb2.CreateOrganizationRequest(name=name, display_name=f"Org {name}"),
        metadata=bearer(admin_token),
    )
    return name


def make_principal(
    server: ServerHandle,
    admin_token: str,
    prefix: str = "user",
    kind: admin_pb2.PrincipalKind.ValueType = admin_pb2.PRINCIPAL_KIND_USER,
) -> str:
    """A fresh principal, created by the global administrator."""
    name = unique(prefix)
    server.admin.CreatePrincipal(
        admin_pb2.CreatePrincipalRequest(name=name, kind=kind), metadata=bearer(admin_token)
    )
    return name


def add_member(
    server: ServerHandle, admin_token: str, organization: str, principal: str, role: str
) -> admin_pb2.Membership:
    membership: admin_pb2.Membership = server.admin.AddMember(
        admin_pb2.AddMemberRequest(
            organization=organization, principal=principal, role=ROLES[role]
        ),
        metadata=bearer(admin_token),
    )
    return membership


def issue(
    server: ServerHandle, metadata: Metadata, organization: str, **fields: Any
) -> pb.IssueTokenResponse:
    """IssueToken with a default label; `fields` are IssueTokenRequest fields."""
    fields.setdefault("label", unique("label"))
    response: pb.IssueTokenResponse = server.tokens.IssueToken(
        pb.IssueTokenRequest(organization=organization, **fields), metadata=metadata
    )
    return response


def make_user_with_token(
    server: ServerHandle,
    admin_token: str,
    organization: str,
    role: str = "member",
    scopes: Sequence[str] = MANAGE_SCOPES,
    prefix: str = "user",
) -> User:
    """A new principal with `role` in `organization` and a token for it issued by the admin."""
    name = make_principal(server, admin_token, prefix)
    add_member(server, admin_token, organization, name, role)
    issued = issue(server, bearer(admin_token), organization, subject=name, scopes=list(scopes))
    return User(name, organization, credential(issued))


def make_org_key(
    server: ServerHandle, admin_token: str, organization: str, scopes: Sequence[str]
) -> Credential:
    """An organisation key (a token with no subject) issued by the admin."""
    return credential(issue(server, bearer(admin_token), organization, scopes=list(scopes)))


def validate(server: ServerHandle, token: str, permission: str = "") -> pb.ValidateResponse:
    response: pb.ValidateResponse = server.tokens.Validate(
        pb.ValidateRequest(token=token, permission=permission)
    )
    return response


def refused(
    code: grpc.StatusCode, rpc: Callable[..., Any], request: Any, metadata: Metadata = ()
) -> grpc.RpcError:
    """Call `rpc` and assert it fails with `code` and a non-empty message; return the error."""
    with pytest.raises(grpc.RpcError) as caught:
        rpc(request, metadata=metadata)
    error = caught.value
    assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
    assert error.details(), "a refusal must carry a message a person can act on"
    return error


def bad_request_fields(error: grpc.RpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest detail of an INVALID_ARGUMENT error."""
    status = rpc_status.from_call(error)
    assert status is not None, "INVALID_ARGUMENT must carry a google.rpc.Status"
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields.extend(violation.field for violation in bad_request.field_violations)
    return fields


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The google.rpc.ErrorInfo detail every refusal carries (domain `authority.v1`)."""
    status = rpc_status.from_call(error)
    assert status is not None, f"{error.code()} carries no google.rpc.Status"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "authority.v1", info.domain
            return info
    raise AssertionError(f"{error.code()} {error.details()!r} carries no ErrorInfo detail")


def error_reason(error: grpc.RpcError) -> str:
    """The stable machine-readable reason of a refusal (ErrorInfo.reason)."""
    # googleapis-common-protos ships .pyi files but no py.typed, so mypy sees google.rpc as Any.
    reason: str = error_info(error).reason
    return reason


def error_message(error: grpc.RpcError) -> str:
    """The message a person reads (grpc calls it `details()`): every refusal carries one."""
    message = error.details()
    assert message is not None, f"{error.code()} carries no message"
    return message


def invalid_argument(
    field: str, rpc: Callable[..., Any], request: Any, metadata: Metadata = ()
) -> grpc.RpcError:
    """Assert INVALID_ARGUMENT whose message and BadRequest detail both name `field`."""
    error = refused(grpc.StatusCode.INVALID_ARGUMENT, rpc, request, metadata)
    assert field in error_message(error), error.details()
    assert bad_request_fields(error) == [field]
    return error


def all_tokens(
    server: ServerHandle, metadata: Metadata, organization: str, include_revoked: bool = True
) -> list[pb.Token]:
    """Every token of `organization` the caller may see, following every page."""
    tokens: list[pb.Token] = []
    page_token = ""
    while True:
        page = server.tokens.ListTokens(
            pb.ListTokensRequest(
                organization=organization,
                page_size=1000,
                page_token=page_token,
                include_revoked=include_revoked,
            ),
            metadata=metadata,
        )
        tokens.extend(page.tokens)
        page_token = page.next_page_token
        if not page_token:
            return tokens


def members(server: ServerHandle, admin_token: str, organization: str) -> dict[str, int]:
    """principal -> role of every member, as the admin sees them."""
    response = server.admin.ListMembers(
        admin_pb2.ListMembersRequest(organization=organization), metadata=bearer(admin_token)
    )
    return {membership.principal: membership.role for membership in response.members}


def all_organizations(server: ServerHandle, metadata: Metadata, page_size: int = 1000) -> list[str]:
    """Names of every organisation the caller may see, following every page."""
    names: list[str] = []
    page_token = ""
    while True:
        page = server.admin.ListOrganizations(
            admin_pb2.ListOrganizationsRequest(page_size=page_size, page_token=page_token),
            metadata=metadata,
        )
        names.extend(organization.name for organization in page.organizations)
        page_token = page.next_page_token
        if not page_token:
            return names


def management_calls(organization: str, token_id: str) -> list[tuple[str, str, Any]]:
    """(stub, method, a well-formed request) for every unary call that needs a bearer token
    (WatchEvents, a stream, is covered by the isolation matrix and its own tests)."""
    principal = "someone"
    return [
        ("tokens", "IssueToken", pb.IssueTokenRequest(organization=organization, label="x")),
        ("tokens", "GetToken", pb.GetTokenRequest(token_id=token_id)),
        ("tokens", "ListTokens", pb.ListTokensRequest(organization=organization)),
        ("tokens", "RevokeToken", pb.RevokeTokenRequest(token_id=token_id)),
        ("admin", "CreateOrganization", admin_pb2.CreateOrganizationRequest(name=unique("o"))),
        ("admin", "ListOrganizations", admin_pb2.ListOrganizationsRequest()),
        (
            "admin",
            "CreatePrincipal",
            admin_pb2.CreatePrincipalRequest(name=unique("p"), kind_name="user"),
        ),
        (
            "admin",
            "AddMember",
            admin_pb2.AddMemberRequest(
                organization=organization, principal=principal, role_name="member"
            ),
        ),
        (
            "admin",
            "RemoveMember",
            admin_pb2.RemoveMemberRequest(organization=organization, principal=principal),
        ),
        ("admin", "ListMembers", admin_pb2.ListMembersRequest(organization=organization)),
        ("admin", "GetCacheStats", admin_pb2.GetCacheStatsRequest()),
        ("admin", "ListAuditEvents", admin_pb2.ListAuditEventsRequest(organization=organization)),
        ("admin", "RotateSigningKey", admin_pb2.RotateSigningKeyRequest()),
    ]


def rpc_of(server: ServerHandle, stub: str, method: str) -> Callable[..., Any]:
    rpc: Callable[..., Any] = getattr(getattr(server, stub), method)
    return rpc


# -- Validate cache counters -----------------------------------------------------------------

# The CacheStats fields that count events (the others are sizes and settings).
CACHE_COUNTERS = (
    "hits",
    "misses",
    "evictions",
    "negative_hits",
    "coalesced",
    "store_reads",
    "invalidations",
)


def cache_stats(server: ServerHandle, admin_token: str) -> admin_pb2.CacheStats:
    """GetCacheStats of one server process, asked by a global administrator."""
    stats: admin_pb2.CacheStats = server.admin.GetCacheStats(
        admin_pb2.GetCacheStatsRequest(), metadata=bearer(admin_token)
    )
    return stats


def cache_activity(before: admin_pb2.CacheStats, after: admin_pb2.CacheStats) -> dict[str, int]:
    """What the cache counted between two `cache_stats` snapshots of one server.

    GetCacheStats authenticates its bearer through the same cache: the second snapshot's own
    lookup is a hit (the first snapshot cached the bearer) and is taken off, so what is left
    is what the calls made in between did.
    """
    activity = {name: getattr(after, name) - getattr(before, name) for name in CACHE_COUNTERS}
    activity["hits"] -= 1
    return activity


def counted(**counters: int) -> dict[str, int]:
    """The `cache_activity` expected: the counters named, every other one zero."""
    unknown = set(counters) - set(CACHE_COUNTERS)
    assert not unknown, f"not cache counters: {unknown}"
    return {name: counters.get(name, 0) for name in CACHE_COUNTERS}


# -- signing keys ------------------------------------------------------------------------------


def signing_keys(server: ServerHandle) -> pb.GetSigningKeysResponse:
    """The server's published JWK set (no bearer needed)."""
    response: pb.GetSigningKeysResponse = server.tokens.GetSigningKeys(pb.GetSigningKeysRequest())
    return response


def current_kid(server: ServerHandle) -> str:
    """The kid the server signs with: the first of its published set."""
    return signing_keys(server).keys[0].kid


def eventually(condition: Callable[[], bool], seconds: float = 1.0) -> bool:
    """Whether `condition` holds within `seconds` (polled; asked once more at the deadline)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()
