"""Management rules of AuthorityService, against a real (SQLite) store and a manual clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from authority.domain.access import Access, caller_from_entry
from authority.domain.clock import Clock
from authority.domain.errors import (
    AlreadyExists,
    AuthorityError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from authority.domain.installation import Installation
from authority.domain.models import Membership, PrincipalKind, Role
from authority.domain.organizations import OrganizationService
from authority.domain.policy import Caller
from authority.domain.token_format import SecretHasher, parse_token
from authority.domain.tokens import (
    MAX_DESCRIPTION,
    MAX_LABEL,
    MAX_PROPERTIES,
    MAX_PROPERTY_VALUE,
    IssuedToken,
    IssueTokenCommand,
    TokenService,
)
from authority.domain.validation import ValidationEntry
from authority.store.database import create_engines
from authority.store.repository import SqlStore
from tests.harness import PEPPER_HEX, ManualClock, create_sqlite_database

HASHER = SecretHasher(bytes.fromhex(PEPPER_HEX))
E = TypeVar("E", bound=AuthorityError)


def caller_of(issued: IssuedToken) -> Caller:
    """The Caller the api layer builds after authenticating this token."""
    return caller_from_entry(ValidationEntry.from_record(issued.record))


@dataclass
class AuthorityService:
    """The use cases wired as server.py wires them."""

    tokens: TokenService
    organizations: OrganizationService
    installation: Installation

    @classmethod
    def build(cls, store: SqlStore, clock: Clock) -> AuthorityService:
        access = Access(clock)
        return cls(
            TokenService(store, clock, HASHER, access),
            OrganizationService(store, clock, access),
            Installation(store, clock, HASHER),
        )


@dataclass
class World:
    """Organisation `acme` with owner alice, admin bob, member carol; dave belongs nowhere.

    Organisation `globex` has owner erin. Every person holds a `*` token in their organisation.
    """

    service: AuthorityService
    store: SqlStore
    clock: ManualClock
    root: Caller
    alice: Caller
    bob: Caller
    carol: Caller
    erin: Caller

    def issue(self, caller: Caller, **fields: Any) -> IssuedToken:
        """Issue in acme, labelled `ci`, unless `fields` say otherwise."""
        fields.setdefault("organization", "acme")
        fields.setdefault("label", "ci")
        return self.service.tokens.issue_token(caller, IssueTokenCommand(**fields))

    def token_ids(self, caller: Caller, organization: str = "acme", **options: object) -> list[str]:
        page = self.service.tokens.list_tokens(
            caller, organization, 1000, "", bool(options.get("all"))
        )
        return [record.token_id for record in page.items]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    store = SqlStore(*create_engines(create_sqlite_database(tmp_path), 1))
    clock = ManualClock()
    service = AuthorityService.build(store, clock)
    root = caller_of(service.installation.bootstrap("root"))
    for organization in ("acme", "globex"):
        service.organizations.create_organization(root, organization, "")
    members = {"alice": ("acme", Role.OWNER), "bob": ("acme", Role.ADMIN)}
    members |= {"carol": ("acme", Role.MEMBER), "erin": ("globex", Role.OWNER)}
    for name in [*members, "dave"]:
        service.organizations.create_principal(root, name, PrincipalKind.USER)
    callers = {}
    for name, (organization, role) in members.items():
        service.organizations.add_member(root, organization, name, role)
        command = IssueTokenCommand(organization, f"{name}-admin", subject=name, scopes=["*"])
        callers[name] = caller_of(service.tokens.issue_token(root, command))
    try:
        yield World(service, store, clock, root, **callers)
    finally:
        store.dispose()


def refusal(error: type[E], call: Callable[..., object], *args: object) -> E:
    """The refusal `call(*args)` raises, which must be an `error`."""
    with pytest.raises(error) as refused:
        call(*args)
    return refused.value


# -- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_creates_an_all_powerful_global_administrator_once(tmp_path: Path) -> None:
    store = SqlStore(*create_engines(create_sqlite_database(tmp_path), 1))
    try:
        service = AuthorityService.build(store, ManualClock())
        issued = service.installation.bootstrap("root")
        token = parse_token(issued.secret)
        assert token is not None and token.token_id == issued.record.token_id
        assert HASHER.matches(token, issued.record.secret_hash)
        assert issued.record.scopes == ("*",)
        assert (issued.record.organization, issued.record.subject) == (None, "root")
        assert issued.record.expires_at is None
        assert store.get_token(token.token_id) == issued.record

        refusal(FailedPrecondition, service.installation.bootstrap, "root")
        refusal(FailedPrecondition, service.installation.bootstrap, "someone-else")
    finally:
        store.dispose()


def test_bootstrap_refuses_a_malformed_name(tmp_path: Path) -> None:
    store = SqlStore(*create_engines(create_sqlite_database(tmp_path), 1))
    try:
        service = AuthorityService.build(store, ManualClock())
        assert (
            refusal(InvalidArgument, service.installation.bootstrap, "Not A Name").field == "name"
        )
        service.installation.bootstrap("root")  # nothing was created by the refused call
    finally:
        store.dispose()


# -- organisations, principals, members -------------------------------------------------------


def test_a_global_administrator_creates_organisations_with_unique_names(world: World) -> None:
    created = world.service.organizations.create_organization(world.root, "initech", "Initech Inc.")
    assert (created.name, created.display_name, created.created_at) == (
        "initech",
        "Initech Inc.",
        world.clock(),
    )
    assert (
        world.service.organizations.create_organization(world.root, "hooli", "").display_name
        == "hooli"
    )
    refusal(
        AlreadyExists, world.service.organizations.create_organization, world.root, "initech", ""
    )
    error = refusal(
        InvalidArgument, world.service.organizations.create_organization, world.root, "Bad_Name", ""
    )
    assert error.field == "name"
    long_display = "x" * (MAX_LABEL + 1)
    error = refusal(
        InvalidArgument,
        world.service.organizations.create_organization,
        world.root,
        "ok-name",
        long_display,
    )
    assert error.field == "display_name"


def test_only_a_global_administrator_creates_organisations_and_principals(world: World) -> None:
    refusal(
        PermissionDenied, world.service.organizations.create_organization, world.alice, "mine", ""
    )
    refusal(
        PermissionDenied,
        world.service.organizations.create_principal,
        world.alice,
        "frank",
        PrincipalKind.USER,
    )
    names = [
        org.name
        for org in world.service.organizations.list_organizations(world.root, 100, "").items
    ]
    assert names == ["acme", "globex"]


def test_creating_a_principal_needs_a_kind_and_a_free_name(world: World) -> None:
    service = world.service
    error = refusal(
        InvalidArgument, service.organizations.create_principal, world.root, "frank", None
    )
    assert error.field == "kind"
    robot = service.organizations.create_principal(world.root, "ci-robot", PrincipalKind.SERVICE)
    assert (robot.kind, robot.global_admin) == (PrincipalKind.SERVICE, False)
    refusal(
        AlreadyExists,
        service.organizations.create_principal,
        world.root,
        "ci-robot",
        PrincipalKind.USER,
    )


def test_members_are_listed_with_their_roles(world: World) -> None:
    assert world.service.organizations.list_members(world.carol, "acme") == [
        Membership("acme", "alice", Role.OWNER),
        Membership("acme", "bob", Role.ADMIN),
        Membership("acme", "carol", Role.MEMBER),
    ]


def test_adding_a_member_needs_an_existing_principal_and_a_role(world: World) -> None:
    refusal(
        NotFound, world.service.organizations.add_member, world.alice, "acme", "nobody", Role.MEMBER
    )
    error = refusal(
        InvalidArgument, world.service.organizations.add_member, world.alice, "acme", "dave", None
    )
    assert error.field == "role"


def test_admins_manage_plain_members_but_not_owners_or_admins(world: World) -> None:
    service = world.service
    service.organizations.add_member(world.bob, "acme", "dave", Role.MEMBER)
    refusal(
        PermissionDenied, service.organizations.add_member, world.bob, "acme", "dave", Role.ADMIN
    )
    refusal(
        PermissionDenied, service.organizations.add_member, world.bob, "acme", "dave", Role.OWNER
    )
    refusal(PermissionDenied, service.organizations.remove_member, world.bob, "acme", "alice")
    assert service.organizations.remove_member(world.bob, "acme", "dave") == []


def test_members_may_not_manage_members(world: World) -> None:
    refusal(
        PermissionDenied,
        world.service.organizations.add_member,
        world.carol,
        "acme",
        "dave",
        Role.MEMBER,
    )
    refusal(PermissionDenied, world.service.organizations.remove_member, world.carol, "acme", "bob")


def test_owners_manage_every_role(world: World) -> None:
    service = world.service
    service.organizations.add_member(world.alice, "acme", "dave", Role.OWNER)
    service.organizations.add_member(world.alice, "acme", "bob", Role.MEMBER)
    roles = {m.principal: m.role for m in service.organizations.list_members(world.alice, "acme")}
    assert roles == {
        "alice": Role.OWNER,
        "bob": Role.MEMBER,
        "carol": Role.MEMBER,
        "dave": Role.OWNER,
    }


def test_the_last_owner_can_be_neither_removed_nor_demoted(world: World) -> None:
    service = world.service
    refusal(FailedPrecondition, service.organizations.remove_member, world.root, "acme", "alice")
    refusal(
        FailedPrecondition,
        service.organizations.add_member,
        world.root,
        "acme",
        "alice",
        Role.ADMIN,
    )
    assert Membership("acme", "alice", Role.OWNER) in service.organizations.list_members(
        world.root, "acme"
    )

    service.organizations.add_member(world.root, "acme", "dave", Role.OWNER)
    service.organizations.add_member(world.root, "acme", "alice", Role.ADMIN)
    refusal(FailedPrecondition, service.organizations.remove_member, world.root, "acme", "dave")


def test_removing_a_member_revokes_its_tokens_in_that_organisation(world: World) -> None:
    service = world.service
    own = [world.issue(world.carol, subject="carol").record.token_id for _ in range(2)]
    others = world.issue(world.alice, subject="bob").record.token_id
    world.clock.advance(60)

    revoked = service.organizations.remove_member(world.alice, "acme", "carol")

    assert set(revoked) == {*own, world.carol.token_id}
    for token_id in revoked:
        record = world.store.get_token(token_id)
        assert record is not None and record.revoked_at == world.clock()
    other = world.store.get_token(others)
    assert other is not None and other.revoked_at is None
    assert "carol" not in {
        m.principal for m in service.organizations.list_members(world.alice, "acme")
    }


def test_removing_a_non_member_is_not_found(world: World) -> None:
    refusal(NotFound, world.service.organizations.remove_member, world.alice, "acme", "dave")


# -- issuing ----------------------------------------------------------------------------------


def test_an_issued_token_is_returned_once_with_a_value_that_matches_its_record(
    world: World,
) -> None:
    issued = world.issue(
        world.alice,
        label="  uploader  ",
        description="for CI",
        scopes=["upload-only"],
        properties={"team": "infra"},
    )
    record, token = issued.record, parse_token(issued.secret)
    assert token is not None and token.token_id == record.token_id
    assert HASHER.matches(token, record.secret_hash)
    assert issued.secret.encode() not in record.secret_hash
    assert (record.label, record.description, record.scopes) == ("uploader", "for CI", ("upload",))
    assert (record.organization, record.subject, record.created_by) == ("acme", None, "alice")
    assert (record.created_at, record.expires_at, record.revoked_at) == (world.clock(), None, None)
    assert world.service.tokens.get_token(world.alice, record.token_id) == record


def test_an_organisation_key_acts_as_an_admin_of_its_own_organisation(world: World) -> None:
    key = caller_of(world.issue(world.alice, scopes=["*"]))
    assert key.subject is None
    issued = world.issue(key, subject="carol")
    assert issued.record.created_by == f"key:{key.token_id}"
    refusal(
        PermissionDenied, world.service.organizations.add_member, key, "acme", "dave", Role.OWNER
    )


@pytest.mark.parametrize("label", ["x" * (MAX_LABEL + 1), "tab\there"])
def test_a_label_is_short_and_plain(world: World, label: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        world.issue(world.alice, label=label)
    assert refused.value.field == "label"


@pytest.mark.parametrize("label", ["", "   "])
def test_a_label_is_optional(world: World, label: str) -> None:
    assert world.issue(world.alice, label=label).record.label == ""


def test_a_label_of_the_maximum_length_is_accepted(world: World) -> None:
    assert world.issue(world.alice, label="x" * MAX_LABEL).record.label == "x" * MAX_LABEL


def test_a_description_is_limited(world: World) -> None:
    world.issue(world.alice, description="d" * MAX_DESCRIPTION)
    with pytest.raises(InvalidArgument) as refused:
        world.issue(world.alice, description="d" * (MAX_DESCRIPTION + 1))
    assert refused.value.field == "description"


@pytest.mark.parametrize(
    "properties",
    [
        {f"key{number}": "v" for number in range(MAX_PROPERTIES + 1)},
        {"team": "v" * (MAX_PROPERTY_VALUE + 1)},
        {"": "v"},
        {"-starts-with-dash": "v"},
        {"has space": "v"},
        {"k" * 129: "v"},
    ],
    ids=["too many", "value too long", "empty key", "dash first", "space", "key too long"],
)
def test_properties_are_limited(world: World, properties: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument) as refused:
        world.issue(world.alice, properties=properties)
    assert refused.value.field == "properties"


def test_properties_at_their_limits_are_stored(world: World) -> None:
    properties = {f"k.{number}/x_y-z": "v" * MAX_PROPERTY_VALUE for number in range(MAX_PROPERTIES)}
    issued = world.issue(world.alice, properties=properties)
    assert (
        world.service.tokens.get_token(world.alice, issued.record.token_id).properties == properties
    )


def test_expires_at_must_be_in_the_future(world: World) -> None:
    now = world.clock()
    for moment in (now - timedelta(days=1), now):
        with pytest.raises(InvalidArgument) as refused:
            world.issue(world.alice, expires_at=moment)
        assert refused.value.field == "expires_at"
    later = now + timedelta(seconds=1)
    assert world.issue(world.alice, expires_at=later).record.expires_at == later


def test_a_ttl_must_be_positive_and_counts_from_the_injected_clock(world: World) -> None:
    for ttl in (timedelta(0), timedelta(seconds=-1)):
        with pytest.raises(InvalidArgument) as refused:
            world.issue(world.alice, ttl=ttl)
        assert refused.value.field == "ttl"
    issued = world.issue(world.alice, ttl=timedelta(hours=1))
    assert issued.record.expires_at == world.clock() + timedelta(hours=1)


def test_a_token_cannot_be_stronger_than_the_one_that_issues_it(world: World) -> None:
    download = caller_of(world.issue(world.alice, subject="bob", scopes=["download-only"]))
    for scopes in (["*"], ["upload"], ["all"], ["x.*"]):
        with pytest.raises(PermissionDenied):
            world.issue(download, subject="bob", scopes=scopes)
    assert world.issue(download, subject="bob", scopes=["download"]).record.scopes == ("download",)


def test_a_prefix_holder_issues_only_below_its_prefix(world: World) -> None:
    holder = caller_of(world.issue(world.alice, subject="bob", scopes=["a.*"]))
    assert world.issue(holder, subject="bob", scopes=["a.b.*", "a.b.C"]).record.scopes == (
        "a.b.*",
        "a.b.C",
    )
    with pytest.raises(PermissionDenied):
        world.issue(holder, subject="bob", scopes=["ab.*"])
    with pytest.raises(PermissionDenied):
        world.issue(holder, subject="bob", scopes=[])  # nothing means `all`


def test_a_member_issues_tokens_only_for_itself(world: World) -> None:
    assert world.issue(world.carol, subject="carol").record.subject == "carol"
    with pytest.raises(PermissionDenied):
        world.issue(world.carol, subject="bob")
    with pytest.raises(PermissionDenied):
        world.issue(world.carol)  # an organisation key


def test_the_subject_must_be_a_member_of_the_organisation(world: World) -> None:
    before = world.token_ids(world.root, all=True)
    for subject in ("dave", "erin", "nobody"):
        with pytest.raises(FailedPrecondition):
            world.issue(world.alice, subject=subject)
    assert world.token_ids(world.root, all=True) == before


def test_a_malformed_subject_is_an_invalid_argument(world: World) -> None:
    with pytest.raises(InvalidArgument) as refused:
        world.issue(world.alice, subject="Not Valid")
    assert refused.value.field == "subject"


def test_a_malformed_scope_is_an_invalid_argument(world: World) -> None:
    with pytest.raises(InvalidArgument) as refused:
        world.issue(world.alice, scopes=["a.*.b"])
    assert refused.value.field == "scopes"


# -- listing ----------------------------------------------------------------------------------


def test_tokens_are_listed_newest_first_in_pages(world: World) -> None:
    key = caller_of(world.issue(world.root, organization="globex", scopes=["*"]))
    issued = [world.issue(key, organization="globex", label=f"t{n}").record for n in range(5)]
    expected = [record.token_id for record in reversed(issued)] + [
        key.token_id,
        world.erin.token_id,
    ]

    seen, page_token, pages = [], "", 0
    while True:
        page = world.service.tokens.list_tokens(key, "globex", 3, page_token, False)
        seen += [record.token_id for record in page.items]
        pages += 1
        page_token = page.next_page_token
        if not page_token:
            break
    assert (seen, pages) == (expected, 3)


def test_a_full_last_page_has_no_next_page_token(world: World) -> None:
    page = world.service.tokens.list_tokens(world.erin, "globex", 1, "", False)
    assert [r.token_id for r in page.items] == [world.erin.token_id] and page.next_page_token == ""


def test_a_page_token_is_bound_to_its_query(world: World) -> None:
    for _ in range(3):
        world.issue(world.alice)
    page = world.service.tokens.list_tokens(world.alice, "acme", 1, "", False)
    assert page.next_page_token
    with pytest.raises(InvalidArgument) as refused:
        world.service.tokens.list_tokens(world.alice, "acme", 1, page.next_page_token, True)
    assert refused.value.field == "page_token"
    with pytest.raises(InvalidArgument):
        world.service.tokens.list_tokens(world.carol, "acme", 1, page.next_page_token, False)


def test_revoked_tokens_are_listed_only_on_request(world: World) -> None:
    revoked = world.issue(world.alice).record.token_id
    world.service.tokens.revoke_token(world.alice, revoked)
    assert revoked not in world.token_ids(world.alice)
    assert revoked in world.token_ids(world.alice, all=True)


def test_a_member_lists_only_its_own_tokens(world: World) -> None:
    own = world.issue(world.carol, subject="carol").record.token_id
    world.issue(world.alice, subject="bob")
    assert world.token_ids(world.carol) == [own, world.carol.token_id]


def test_organisations_listed_are_those_the_caller_belongs_to(world: World) -> None:
    def names(caller: Caller) -> list[str]:
        return [
            org.name for org in world.service.organizations.list_organizations(caller, 10, "").items
        ]

    assert names(world.root) == ["acme", "globex"]
    assert names(world.carol) == ["acme"]
    assert names(caller_of(world.issue(world.alice))) == ["acme"]


def test_organisations_are_listed_in_pages(world: World) -> None:
    for name in ("aa", "bb", "cc"):
        world.service.organizations.create_organization(world.root, name, "")
    first = world.service.organizations.list_organizations(world.root, 2, "")
    second = world.service.organizations.list_organizations(world.root, 2, first.next_page_token)
    third = world.service.organizations.list_organizations(world.root, 2, second.next_page_token)
    names = [org.name for page in (first, second, third) for org in page.items]
    assert names == ["aa", "acme", "bb", "cc", "globex"]
    assert third.next_page_token == ""


# -- get and revoke ---------------------------------------------------------------------------


def test_revoking_twice_keeps_the_first_revoked_at(world: World) -> None:
    token_id = world.issue(world.alice).record.token_id
    first = world.service.tokens.revoke_token(world.alice, token_id)
    assert first.revoked_at == world.clock()
    world.clock.advance(3600)
    second = world.service.tokens.revoke_token(world.bob, token_id)
    assert second.revoked_at == first.revoked_at
    assert world.service.tokens.get_token(world.alice, token_id).revoked_at == first.revoked_at


def test_a_member_manages_only_tokens_whose_subject_it_is(world: World) -> None:
    own = world.issue(world.carol, subject="carol").record.token_id
    bobs = world.issue(world.alice, subject="bob").record.token_id
    assert world.service.tokens.get_token(world.carol, own).subject == "carol"
    refusal(NotFound, world.service.tokens.get_token, world.carol, bobs)
    refusal(NotFound, world.service.tokens.revoke_token, world.carol, bobs)
    assert world.service.tokens.revoke_token(world.carol, own).revoked_at is not None


def test_a_token_id_is_checked_before_any_lookup(world: World) -> None:
    for token_id in ("", "short", "x" * 17, "tka_" + "A" * 12):
        error = refusal(InvalidArgument, world.service.tokens.get_token, world.alice, token_id)
        assert error.field == "token_id"
    refusal(NotFound, world.service.tokens.get_token, world.alice, "A" * 16)


def test_the_bootstrap_token_is_visible_only_to_global_administrators(world: World) -> None:
    refusal(NotFound, world.service.tokens.get_token, world.alice, world.root.token_id)
    assert world.service.tokens.get_token(world.root, world.root.token_id).organization is None


# -- isolation between organisations ----------------------------------------------------------


def test_another_organisations_tokens_are_not_found(world: World) -> None:
    acme_token = world.issue(world.alice).record.token_id
    service = world.service
    refusal(NotFound, service.tokens.get_token, world.erin, acme_token)
    refusal(NotFound, service.tokens.revoke_token, world.erin, acme_token)
    record = world.store.get_token(acme_token)
    assert record is not None and record.revoked_at is None


def test_another_organisation_is_not_found_just_like_a_missing_one(world: World) -> None:
    service = world.service
    calls = [
        lambda org: service.tokens.list_tokens(world.erin, org, 10, "", False),
        lambda org: service.organizations.list_members(world.erin, org),
        lambda org: service.organizations.add_member(world.erin, org, "dave", Role.MEMBER),
        lambda org: service.organizations.remove_member(world.erin, org, "carol"),
        lambda org: service.tokens.issue_token(world.erin, IssueTokenCommand(org, "x")),
    ]
    for call in calls:
        foreign = refusal(NotFound, call, "acme")
        missing = refusal(NotFound, call, "nowhere")
        assert foreign.message.replace("acme", "?") == missing.message.replace("nowhere", "?")
    assert "dave" not in {
        m.principal for m in service.organizations.list_members(world.alice, "acme")
    }


def test_a_token_is_confined_to_its_organisation_whatever_its_subjects_roles(world: World) -> None:
    world.service.organizations.add_member(world.root, "globex", "alice", Role.OWNER)
    refusal(NotFound, world.service.organizations.list_members, world.alice, "globex")
    with pytest.raises(NotFound):
        world.issue(world.alice, organization="globex", subject="alice")
