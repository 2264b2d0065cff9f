"""Admin through a real server: organisations, principals, memberships and cache stats."""

from __future__ import annotations

from datetime import UTC

import grpc
import pytest

from authority.v1 import admin_pb2
from authority.v1 import token_authority_pb2 as pb
from tests.harness import ServerHandle, bearer, unique
from tests.integration.helpers import (
    ROLES,
    Metadata,
    add_member,
    all_organizations,
    all_tokens,
    error_message,
    invalid_argument,
    issue,
    make_org,
    make_org_key,
    make_principal,
    make_user_with_token,
    members,
    refused,
    validate,
)

PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def add(
    server: ServerHandle, metadata: Metadata, org: str, principal: str, role: str
) -> admin_pb2.Membership:
    membership: admin_pb2.Membership = server.admin.AddMember(
        admin_pb2.AddMemberRequest(organization=org, principal=principal, role_name=role),
        metadata=metadata,
    )
    return membership


def remove_request(org: str, principal: str) -> admin_pb2.RemoveMemberRequest:
    return admin_pb2.RemoveMemberRequest(organization=org, principal=principal)


def add_request(org: str, principal: str, role: str) -> admin_pb2.AddMemberRequest:
    return admin_pb2.AddMemberRequest(organization=org, principal=principal, role_name=role)


# -- CreateOrganization ----------------------------------------------------------------------


def test_create_organization_returns_what_was_asked_for(
    server: ServerHandle, auth: Metadata
) -> None:
    name = unique("acme")

    created = server.admin.CreateOrganization(
        admin_pb2.CreateOrganizationRequest(name=name, display_name="Acme Corp."), metadata=auth
    )

    assert created.name == name
    assert created.display_name == "Acme Corp."
    assert created.created_at.ToDatetime(tzinfo=UTC) == server.clock()
    assert name in all_organizations(server, auth)


def test_longest_allowed_organisation_name_is_accepted(
    server: ServerHandle, auth: Metadata
) -> None:
    name = unique("o").ljust(63, "x")

    created = server.admin.CreateOrganization(
        admin_pb2.CreateOrganizationRequest(name=name), metadata=auth
    )

    assert created.name == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a",
        "Acme",
        "-acme",
        "acme-",
        "ac_me",
        "ac me",
        "acme.io",
        "acmé",
        "x" * 64,
    ],
)
def test_create_organization_refuses_a_bad_slug_and_names_the_field(
    server: ServerHandle, auth: Metadata, name: str
) -> None:
    request = admin_pb2.CreateOrganizationRequest(name=name)

    error = invalid_argument("name", server.admin.CreateOrganization, request, auth)

    assert "lowercase" in error_message(error) or "required" in error_message(error)


def test_create_organization_refuses_a_name_that_is_taken(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    error = refused(
        grpc.StatusCode.ALREADY_EXISTS,
        server.admin.CreateOrganization,
        admin_pb2.CreateOrganizationRequest(name=org),
        auth,
    )

    assert org in error_message(error)


@pytest.mark.parametrize("caller", ["owner", "key"])
def test_only_a_global_administrator_creates_organisations(
    server: ServerHandle, admin_token: str, org: str, caller: str
) -> None:
    metadata = _all_powerful_but_not_global(server, admin_token, org, caller)

    error = refused(
        PERMISSION_DENIED,
        server.admin.CreateOrganization,
        admin_pb2.CreateOrganizationRequest(name=unique("denied")),
        metadata,
    )

    assert "global administrator" in error_message(error)


# -- ListOrganizations -----------------------------------------------------------------------


def test_list_organizations_pages_by_name_without_duplicates_or_gaps(
    server: ServerHandle, admin_token: str, auth: Metadata
) -> None:
    for _ in range(3):
        make_org(server, admin_token)
    everything = all_organizations(server, auth)
    page_size = max(2, len(everything) // 4 + 1)

    pages = []
    page_token = ""
    while True:
        page = server.admin.ListOrganizations(
            admin_pb2.ListOrganizationsRequest(page_size=page_size, page_token=page_token),
            metadata=auth,
        )
        pages.append([organization.name for organization in page.organizations])
        page_token = page.next_page_token
        if not page_token:
            break

    assert len(pages) >= 2
    assert all(len(page) == page_size for page in pages[:-1])
    assert [name for page in pages for name in page] == everything == sorted(everything)


def test_list_organizations_refuses_a_negative_page_size(
    server: ServerHandle, auth: Metadata
) -> None:
    invalid_argument(
        "page_size",
        server.admin.ListOrganizations,
        admin_pb2.ListOrganizationsRequest(page_size=-5),
        auth,
    )


def test_list_organizations_refuses_a_page_token_it_did_not_make(
    server: ServerHandle, auth: Metadata
) -> None:
    invalid_argument(
        "page_token",
        server.admin.ListOrganizations,
        admin_pb2.ListOrganizationsRequest(page_token="not-a-token"),
        auth,
    )


# -- CreatePrincipal -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"kind": admin_pb2.PRINCIPAL_KIND_USER}, admin_pb2.PRINCIPAL_KIND_USER),
        ({"kind": admin_pb2.PRINCIPAL_KIND_SERVICE}, admin_pb2.PRINCIPAL_KIND_SERVICE),
        ({"kind_name": "user"}, admin_pb2.PRINCIPAL_KIND_USER),
        ({"kind_name": "service"}, admin_pb2.PRINCIPAL_KIND_SERVICE),
    ],
)
def test_create_principal_takes_the_kind_as_enum_or_name(
    server: ServerHandle, auth: Metadata, fields: dict[str, object], kind: int
) -> None:
    name = unique("ci-bot")

    created = server.admin.CreatePrincipal(
        admin_pb2.CreatePrincipalRequest(name=name, **fields),  # type: ignore[arg-type]
        metadata=auth,
    )

    assert (created.name, created.kind, created.global_admin) == (name, kind, False)
    assert created.created_at.ToDatetime(tzinfo=UTC) == server.clock()


@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("kind", {}),
        ("kind", {"kind": 99}),
        ("kind_name", {"kind_name": "robot"}),
        ("name", {"name": "", "kind_name": "user"}),
        ("name", {"name": "Alice", "kind_name": "user"}),
        ("name", {"name": "al ice", "kind_name": "user"}),
        ("name", {"name": "a" * 129, "kind_name": "user"}),
    ],
)
def test_create_principal_names_the_bad_field(
    server: ServerHandle, auth: Metadata, field: str, fields: dict[str, object]
) -> None:
    request = admin_pb2.CreatePrincipalRequest(**{"name": unique("p"), **fields})  # type: ignore[arg-type]

    invalid_argument(field, server.admin.CreatePrincipal, request, auth)


@pytest.mark.parametrize("taken", ["fresh", "admin"])
def test_create_principal_refuses_a_name_that_is_taken(
    server: ServerHandle, admin_token: str, auth: Metadata, taken: str
) -> None:
    name = make_principal(server, admin_token) if taken == "fresh" else "admin"

    error = refused(
        grpc.StatusCode.ALREADY_EXISTS,
        server.admin.CreatePrincipal,
        admin_pb2.CreatePrincipalRequest(name=name, kind_name="service"),
        auth,
    )

    assert name in error_message(error)


def test_only_a_global_administrator_creates_principals(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    owner = make_user_with_token(server, admin_token, org, "owner", ["*"])

    refused(
        PERMISSION_DENIED,
        server.admin.CreatePrincipal,
        admin_pb2.CreatePrincipalRequest(name=unique("p"), kind_name="user"),
        owner.metadata,
    )


# -- AddMember / ListMembers -----------------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "admin", "member"])
def test_add_member_takes_the_role_as_enum_or_lowercase_name(
    server: ServerHandle, admin_token: str, auth: Metadata, org: str, role: str
) -> None:
    by_enum, by_name = make_principal(server, admin_token), make_principal(server, admin_token)

    enum_membership = server.admin.AddMember(
        admin_pb2.AddMemberRequest(organization=org, principal=by_enum, role=ROLES[role]),
        metadata=auth,
    )
    name_membership = add(server, auth, org, by_name, role)

    assert (enum_membership.organization, enum_membership.principal) == (org, by_enum)
    assert enum_membership.role == name_membership.role == ROLES[role]
    assert members(server, admin_token, org) == {by_enum: ROLES[role], by_name: ROLES[role]}


@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("role", {}),
        ("role", {"role": 99}),
        ("role_name", {"role_name": "boss"}),
        ("role", {"role": admin_pb2.ROLE_OWNER, "role_name": "member"}),
        ("principal", {"principal": "", "role_name": "member"}),
        ("principal", {"principal": "Not Valid", "role_name": "member"}),
        ("organization", {"organization": "", "role_name": "member"}),
    ],
)
def test_add_member_names_the_bad_field(
    server: ServerHandle,
    admin_token: str,
    auth: Metadata,
    org: str,
    field: str,
    fields: dict[str, object],
) -> None:
    principal = make_principal(server, admin_token)
    request = admin_pb2.AddMemberRequest(
        **{"organization": org, "principal": principal, **fields}  # type: ignore[arg-type]
    )

    invalid_argument(field, server.admin.AddMember, request, auth)

    assert members(server, admin_token, org) == {}


def test_add_member_of_a_principal_that_does_not_exist_is_not_found(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    ghost = unique("ghost")

    error = refused(
        grpc.StatusCode.NOT_FOUND, server.admin.AddMember, add_request(org, ghost, "member"), auth
    )

    assert ghost in error_message(error)


def test_add_member_again_changes_the_role(
    server: ServerHandle, admin_token: str, auth: Metadata, org: str
) -> None:
    principal = make_principal(server, admin_token)
    add(server, auth, org, principal, "member")

    changed = add(server, auth, org, principal, "admin")

    assert changed.role == admin_pb2.ROLE_ADMIN
    assert members(server, admin_token, org) == {principal: admin_pb2.ROLE_ADMIN}


def test_every_member_may_list_the_members(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    owner = make_user_with_token(server, admin_token, org, "owner")
    member = make_user_with_token(server, admin_token, org, "member")

    listed = server.admin.ListMembers(
        admin_pb2.ListMembersRequest(organization=org), metadata=member.metadata
    )

    assert {(m.organization, m.principal, m.role) for m in listed.members} == {
        (org, owner.name, admin_pb2.ROLE_OWNER),
        (org, member.name, admin_pb2.ROLE_MEMBER),
    }


@pytest.mark.parametrize("role", ["owner", "admin", "member"])
def test_owner_may_add_and_remove_any_role(
    server: ServerHandle, admin_token: str, org: str, role: str
) -> None:
    owner = make_user_with_token(server, admin_token, org, "owner")
    principal = make_principal(server, admin_token)

    add(server, owner.metadata, org, principal, role)
    server.admin.RemoveMember(remove_request(org, principal), metadata=owner.metadata)

    assert principal not in members(server, admin_token, org)


def test_admin_may_add_and_remove_plain_members(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    make_user_with_token(server, admin_token, org, "owner")
    manager = make_user_with_token(server, admin_token, org, "admin")
    principal = make_principal(server, admin_token)

    add(server, manager.metadata, org, principal, "member")
    assert members(server, admin_token, org)[principal] == admin_pb2.ROLE_MEMBER
    server.admin.RemoveMember(remove_request(org, principal), metadata=manager.metadata)

    assert principal not in members(server, admin_token, org)


@pytest.mark.parametrize(
    ("current", "wanted"),
    [
        (None, "admin"),
        (None, "owner"),
        ("member", "admin"),
        ("admin", "member"),
        ("owner", "member"),
    ],
)
def test_admin_may_not_grant_or_change_owner_and_admin_roles(
    server: ServerHandle, admin_token: str, org: str, current: str | None, wanted: str
) -> None:
    make_user_with_token(server, admin_token, org, "owner")
    manager = make_user_with_token(server, admin_token, org, "admin")
    principal = make_principal(server, admin_token)
    if current:
        add_member(server, admin_token, org, principal, current)
    before = members(server, admin_token, org)

    error = refused(
        PERMISSION_DENIED,
        server.admin.AddMember,
        add_request(org, principal, wanted),
        manager.metadata,
    )

    assert "owner" in error_message(error)
    assert members(server, admin_token, org) == before


@pytest.mark.parametrize("target_role", ["owner", "admin"])
def test_admin_may_not_remove_owners_or_admins(
    server: ServerHandle, admin_token: str, org: str, target_role: str
) -> None:
    make_user_with_token(server, admin_token, org, "owner")
    manager = make_user_with_token(server, admin_token, org, "admin")
    target = make_user_with_token(server, admin_token, org, target_role)

    refused(
        PERMISSION_DENIED,
        server.admin.RemoveMember,
        remove_request(org, target.name),
        manager.metadata,
    )

    assert target.name in members(server, admin_token, org)
    assert validate(server, target.credential.secret).valid


def test_member_may_not_manage_members(server: ServerHandle, admin_token: str, org: str) -> None:
    member = make_user_with_token(server, admin_token, org, "member")
    peer = make_user_with_token(server, admin_token, org, "member")
    principal = make_principal(server, admin_token)
    before = members(server, admin_token, org)

    added = refused(
        PERMISSION_DENIED,
        server.admin.AddMember,
        add_request(org, principal, "member"),
        member.metadata,
    )
    removed = refused(
        PERMISSION_DENIED,
        server.admin.RemoveMember,
        remove_request(org, peer.name),
        member.metadata,
    )

    assert org in error_message(added) and org in error_message(removed)
    assert members(server, admin_token, org) == before


# -- the last owner --------------------------------------------------------------------------


def test_last_owner_cannot_be_removed(server: ServerHandle, admin_token: str, org: str) -> None:
    owner = make_user_with_token(server, admin_token, org, "owner")

    for metadata in (bearer(admin_token), owner.metadata):
        error = refused(
            FAILED_PRECONDITION,
            server.admin.RemoveMember,
            remove_request(org, owner.name),
            metadata,
        )
        assert "owner" in error_message(error)

    assert members(server, admin_token, org) == {owner.name: admin_pb2.ROLE_OWNER}
    assert validate(server, owner.credential.secret).valid


@pytest.mark.parametrize("role", ["admin", "member"])
def test_last_owner_cannot_be_demoted(
    server: ServerHandle, admin_token: str, org: str, role: str
) -> None:
    owner = make_user_with_token(server, admin_token, org, "owner")

    error = refused(
        FAILED_PRECONDITION,
        server.admin.AddMember,
        add_request(org, owner.name, role),
        bearer(admin_token),
    )

    assert "owner" in error_message(error)
    assert members(server, admin_token, org) == {owner.name: admin_pb2.ROLE_OWNER}


def test_an_owner_may_step_down_once_there_is_another_owner(
    server: ServerHandle, admin_token: str, org: str
) -> None:
    first = make_user_with_token(server, admin_token, org, "owner")
    second = make_principal(server, admin_token)
    add(server, first.metadata, org, second, "owner")

    add(server, first.metadata, org, first.name, "member")
    error = refused(
        FAILED_PRECONDITION,
        server.admin.RemoveMember,
        remove_request(org, second),
        bearer(admin_token),
    )

    assert members(server, admin_token, org) == {
        first.name: admin_pb2.ROLE_MEMBER,
        second: admin_pb2.ROLE_OWNER,
    }
    assert org in error_message(error)


# -- RemoveMember ----------------------------------------------------------------------------


def test_remove_member_revokes_its_tokens_in_that_organisation_at_once(
    server: ServerHandle, admin_token: str, auth: Metadata, org: str
) -> None:
    member = make_user_with_token(server, admin_token, org, "member")
    own = issue(server, member.metadata, org, subject=member.name, scopes=["download-only"])
    already_revoked = issue(server, auth, org, subject=member.name)
    server.tokens.RevokeToken(
        pb.RevokeTokenRequest(token_id=already_revoked.token.token_id), metadata=auth
    )
    bystander = make_org_key(server, admin_token, org, ["download-only"])
    elsewhere_org = make_org(server, admin_token)
    add_member(server, admin_token, elsewhere_org, member.name, "member")
    elsewhere = issue(server, auth, elsewhere_org, subject=member.name)
    for secret in (member.credential.secret, own.secret, elsewhere.secret):
        assert validate(server, secret).valid  # cached now

    response = server.admin.RemoveMember(remove_request(org, member.name), metadata=auth)

    assert sorted(response.revoked_token_ids) == sorted(
        [member.credential.token_id, own.token.token_id]
    )
    for secret in (member.credential.secret, own.secret):
        assert validate(server, secret, "download").reason == pb.REASON_REVOKED
    assert validate(server, bystander.secret, "download").valid
    assert validate(server, elsewhere.secret, "download").valid
    assert member.name not in members(server, admin_token, org)
    listed = {token.token_id: token for token in all_tokens(server, auth, org)}
    assert listed[own.token.token_id].HasField("revoked_at")


def test_remove_of_a_principal_that_is_not_a_member_is_not_found(
    server: ServerHandle, admin_token: str, auth: Metadata, org: str
) -> None:
    principal = make_principal(server, admin_token)

    error = refused(
        grpc.StatusCode.NOT_FOUND, server.admin.RemoveMember, remove_request(org, principal), auth
    )

    assert principal in error_message(error)


def test_removed_principal_can_be_added_back_and_gets_new_tokens(
    server: ServerHandle, admin_token: str, auth: Metadata, org: str
) -> None:
    member = make_user_with_token(server, admin_token, org, "member")
    server.admin.RemoveMember(remove_request(org, member.name), metadata=auth)

    add(server, auth, org, member.name, "member")
    fresh = issue(server, auth, org, subject=member.name)

    assert validate(server, fresh.secret).valid
    assert validate(server, member.credential.secret).reason == pb.REASON_REVOKED


# -- GetCacheStats ---------------------------------------------------------------------------


def test_cache_stats_count_validate_traffic_for_a_global_administrator(
    server: ServerHandle, auth: Metadata, org: str
) -> None:
    issued = issue(server, auth, org)
    validate(server, issued.secret)
    before = server.admin.GetCacheStats(admin_pb2.GetCacheStatsRequest(), metadata=auth)

    for _ in range(3):
        validate(server, issued.secret)
    after = server.admin.GetCacheStats(admin_pb2.GetCacheStatsRequest(), metadata=auth)

    assert after.max_entries > 0
    assert after.hits >= before.hits + 3
    assert after.size >= 1


@pytest.mark.parametrize("caller", ["owner", "key"])
def test_cache_stats_are_for_global_administrators_only(
    server: ServerHandle, admin_token: str, org: str, caller: str
) -> None:
    metadata = _all_powerful_but_not_global(server, admin_token, org, caller)

    error = refused(
        PERMISSION_DENIED, server.admin.GetCacheStats, admin_pb2.GetCacheStatsRequest(), metadata
    )

    assert "global administrator" in error_message(error)


def _all_powerful_but_not_global(
    server: ServerHandle, admin_token: str, org: str, caller: str
) -> Metadata:
    """An organisation key, or an owner's token, holding every scope: still not a global admin."""
    if caller == "key":
        return make_org_key(server, admin_token, org, ["*"]).metadata
    return make_user_with_token(server, admin_token, org, "owner", ["*"]).metadata
