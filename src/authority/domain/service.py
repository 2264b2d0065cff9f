"""Management rules: who may issue, see and revoke which tokens, and how organisations work.

Every method runs in one store transaction (the unit of work) and is plain synchronous code:
the api layer runs it in a worker thread. Authentication happens before, in the api layer,
through the same Validator that serves Validate; the result arrives here as a `Caller`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from authority.domain import pagination
from authority.domain.clock import Clock
from authority.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from authority.domain.models import (
    Membership,
    Organization,
    Principal,
    PrincipalKind,
    Role,
    TokenRecord,
    check_organization_name,
    check_principal_name,
)
from authority.domain.ports import Store, Transaction
from authority.domain.scopes import PermissionMatcher, parse_scopes
from authority.domain.token_format import SecretHasher, is_token_id, new_token
from authority.domain.validation import ValidationEntry

MAX_LABEL = 100
MAX_DESCRIPTION = 1000
MAX_PROPERTIES = 64
MAX_PROPERTY_VALUE = 1024
_PROPERTY_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the bearer token, already authenticated and checked for the method."""

    token_id: str
    organization: str | None
    subject: str | None
    matcher: PermissionMatcher

    @classmethod
    def from_entry(cls, entry: ValidationEntry) -> Caller:
        return cls(
            token_id=entry.token_id,
            organization=entry.organization or None,
            subject=entry.subject or None,
            matcher=entry.matcher,
        )

    @property
    def actor(self) -> str:
        """Recorded as `created_by`: the principal, or the organisation key itself."""
        return self.subject or f"key:{self.token_id}"


@dataclass(frozen=True, slots=True)
class IssueTokenCommand:
    organization: str
    label: str
    description: str = ""
    subject: str = ""
    scopes: Sequence[str] = ()
    scope_profile: str | None = None
    expires_at: datetime | None = None
    ttl: timedelta | None = None
    properties: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    record: TokenRecord
    secret: str


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


# The caller's standing in one organisation. GLOBAL is a global administrator.
_GLOBAL = "global"


class AuthorityService:
    """The management use cases. Holds no state of its own beyond what it was given."""

    def __init__(self, store: Store, clock: Clock, hasher: SecretHasher) -> None:
        self._store = store
        self._clock = clock
        self._hasher = hasher

    # -- access -----------------------------------------------------------------------------

    def _is_global_admin(self, tx: Transaction, caller: Caller) -> bool:
        if caller.organization is not None or caller.subject is None:
            return False
        principal = tx.get_principal(caller.subject)
        return principal is not None and principal.global_admin

    def _standing(self, tx: Transaction, caller: Caller, organization: str) -> Role | str:
        """The caller's role in `organization`; NotFound when it has none or it does not exist.

        An organisation key (no subject) acts as an admin of its own organisation, within its
        scopes. A token is confined to its own organisation, whatever its subject's roles.
        """
        not_found = NotFound(f"organization {organization!r} not found")
        if self._is_global_admin(tx, caller):
            if tx.get_organization(organization) is None:
                raise not_found
            return _GLOBAL
        if caller.organization != organization or tx.get_organization(organization) is None:
            raise not_found
        if caller.subject is None:
            return Role.ADMIN
        role = tx.get_role(organization, caller.subject)
        if role is None:
            raise not_found
        return role

    def _require_global_admin(self, tx: Transaction, caller: Caller, action: str) -> None:
        if not self._is_global_admin(tx, caller):
            raise PermissionDenied(f"only a global administrator may {action}")

    def require_global_admin(self, caller: Caller, action: str) -> None:
        """PermissionDenied unless the caller is a global administrator."""
        with self._store.transaction() as tx:
            self._require_global_admin(tx, caller, action)

    def _visible_token(self, tx: Transaction, caller: Caller, token_id: str) -> TokenRecord:
        """The token if the caller may manage it; NotFound otherwise (existence not disclosed)."""
        if not token_id:
            raise InvalidArgument("token_id", "is required")
        if not is_token_id(token_id):
            raise InvalidArgument("token_id", f"{token_id!r} is not a token id (16 letters/digits)")
        not_found = NotFound(f"token {token_id!r} not found")
        record = tx.get_token(token_id)
        if record is None:
            raise not_found
        if record.organization is None:
            if not self._is_global_admin(tx, caller):
                raise not_found
            return record
        try:
            standing = self._standing(tx, caller, record.organization)
        except NotFound:
            raise not_found from None
        if standing == Role.MEMBER and record.subject != caller.subject:
            raise not_found
        return record

    # -- tokens -----------------------------------------------------------------------------

    def issue_token(self, caller: Caller, command: IssueTokenCommand) -> IssuedToken:
        """Create a token no stronger than the caller's own; return it with its value."""
        organization = check_organization_name(command.organization)
        label = command.label.strip()
        if not label:
            raise InvalidArgument("label", "is required (a short name such as ci-uploader)")
        _check_text("label", label, MAX_LABEL)
        _check_text("description", command.description, MAX_DESCRIPTION, multiline=True)
        subject = command.subject and check_principal_name(command.subject, "subject")
        scopes = parse_scopes(command.scopes, command.scope_profile)
        properties = _check_properties(command.properties or {})
        now = self._clock()
        expires_at = _expiry(now, command.expires_at, command.ttl)
        for scope in scopes:
            if not caller.matcher.covers(scope):
                raise PermissionDenied(
                    f"cannot issue scope {scope!r}: the calling token does not hold it "
                    "(a token may not be stronger than the one that issues it)"
                )
        with self._store.transaction() as tx:
            standing = self._standing(tx, caller, organization)
            if standing == Role.MEMBER and subject != caller.subject:
                raise PermissionDenied(
                    "members may issue tokens only for themselves: set subject to "
                    f"{caller.subject!r}"
                )
            if subject and tx.get_role(organization, subject) is None:
                raise FailedPrecondition(
                    f"principal {subject!r} is not a member of organization {organization!r}; "
                    "add it with Admin/AddMember first"
                )
            token = new_token()
            record = TokenRecord(
                token_id=token.token_id,
                secret_hash=self._hasher.hash(token),
                organization=organization,
                subject=subject or None,
                label=label,
                description=command.description,
                scopes=scopes,
                created_at=now,
                expires_at=expires_at,
                revoked_at=None,
                created_by=caller.actor,
                properties=properties,
            )
            tx.add_token(record)
        return IssuedToken(record=record, secret=token.value)

    def get_token(self, caller: Caller, token_id: str) -> TokenRecord:
        """One token the caller may see."""
        with self._store.transaction() as tx:
            return self._visible_token(tx, caller, token_id)

    def list_tokens(
        self,
        caller: Caller,
        organization: str,
        page_size: int,
        page_token: str,
        include_revoked: bool,
    ) -> Page[TokenRecord]:
        """An organisation's tokens, newest first; members see only their own."""
        check_organization_name(organization)
        limit = pagination.page_size(page_size)
        with self._store.transaction() as tx:
            standing = self._standing(tx, caller, organization)
            subject = caller.subject if standing == Role.MEMBER else None
            query: list[object] = [organization, subject, include_revoked]
            before = pagination.decode(page_token, query)
            rows = tx.list_tokens(
                organization,
                subject,
                include_revoked,
                before if isinstance(before, int) else None,
                limit + 1,
            )
        next_token = pagination.encode(query, rows[limit - 1][0]) if len(rows) > limit else ""
        return Page([record for _, record in rows[:limit]], next_token)

    def revoke_token(self, caller: Caller, token_id: str) -> TokenRecord:
        """Revoke at once; a second revoke changes nothing and keeps the first revoked_at."""
        with self._store.transaction() as tx:
            self._visible_token(tx, caller, token_id)
            revoked = tx.revoke_token(token_id, self._clock())
        assert revoked is not None  # it was visible inside this same transaction
        return revoked

    # -- organisations, principals, members --------------------------------------------------

    def create_organization(self, caller: Caller, name: str, display_name: str) -> Organization:
        """Global administrators create organisations."""
        check_organization_name(name, "name")
        _check_text("display_name", display_name, MAX_LABEL)
        with self._store.transaction() as tx:
            self._require_global_admin(tx, caller, "create organisations")
            if tx.get_organization(name) is not None:
                raise AlreadyExists(f"organization {name!r} already exists")
            organization = Organization(name, display_name or name, self._clock())
            tx.add_organization(organization)
        return organization

    def list_organizations(
        self, caller: Caller, page_size: int, page_token: str
    ) -> Page[Organization]:
        """Every organisation for a global administrator; otherwise the caller's own."""
        limit = pagination.page_size(page_size)
        with self._store.transaction() as tx:
            only: list[str] | None = None
            if not self._is_global_admin(tx, caller):
                if caller.organization is None:
                    only = []
                elif caller.subject is None:
                    only = [caller.organization]
                else:
                    mine = set(tx.organizations_of(caller.subject))
                    only = [caller.organization] if caller.organization in mine else []
            query: list[object] = ["organizations", only]
            after = pagination.decode(page_token, query)
            rows = tx.list_organizations(only, after if isinstance(after, str) else None, limit + 1)
        next_token = pagination.encode(query, rows[limit - 1].name) if len(rows) > limit else ""
        return Page(rows[:limit], next_token)

    def create_principal(self, caller: Caller, name: str, kind: PrincipalKind | None) -> Principal:
        """Global administrators register users and services."""
        check_principal_name(name, "name")
        if kind is None:
            raise InvalidArgument("kind", "is required: PRINCIPAL_KIND_USER or _SERVICE")
        with self._store.transaction() as tx:
            self._require_global_admin(tx, caller, "create principals")
            if tx.get_principal(name) is not None:
                raise AlreadyExists(f"principal {name!r} already exists")
            principal = Principal(name, kind, False, self._clock())
            tx.add_principal(principal)
        return principal

    def _require_member_manager(
        self, tx: Transaction, caller: Caller, organization: str, roles: Sequence[Role | None]
    ) -> None:
        """Owners and global administrators manage any role; admins only plain members."""
        standing = self._standing(tx, caller, organization)
        if standing in (_GLOBAL, Role.OWNER):
            return
        if standing == Role.ADMIN and all(role in (None, Role.MEMBER) for role in roles):
            return
        raise PermissionDenied(
            "only owners may change owners and admins; admins may manage members"
            if standing == Role.ADMIN
            else f"members of {organization!r} may not manage its members"
        )

    def add_member(
        self, caller: Caller, organization: str, principal: str, role: Role | None
    ) -> Membership:
        """Add a principal to an organisation, or change its role there."""
        check_organization_name(organization)
        check_principal_name(principal)
        if role is None:
            raise InvalidArgument("role", "is required: owner, admin or member")
        with self._store.transaction() as tx:
            current = tx.get_role(organization, principal)
            self._require_member_manager(tx, caller, organization, [role, current])
            if tx.get_principal(principal) is None:
                raise NotFound(f"principal {principal!r} not found; create it first")
            if current == Role.OWNER and role != Role.OWNER:
                _keep_an_owner(tx, organization)
            membership = Membership(organization, principal, role)
            tx.set_role(membership)
        return membership

    def remove_member(self, caller: Caller, organization: str, principal: str) -> list[str]:
        """Remove a principal; its tokens in the organisation are revoked. Returns their ids."""
        check_organization_name(organization)
        check_principal_name(principal)
        with self._store.transaction() as tx:
            current = tx.get_role(organization, principal)
            self._require_member_manager(tx, caller, organization, [current])
            if current is None:
                raise NotFound(f"principal {principal!r} is not a member of {organization!r}")
            if current == Role.OWNER:
                _keep_an_owner(tx, organization)
            tx.remove_membership(organization, principal)
            now = self._clock()
            revoked: list[str] = []
            for _, record in tx.list_tokens(organization, principal, False, None, 1_000_000):
                tx.revoke_token(record.token_id, now)
                revoked.append(record.token_id)
        return revoked

    def list_members(self, caller: Caller, organization: str) -> list[Membership]:
        """Anyone with a standing in the organisation may see its members."""
        check_organization_name(organization)
        with self._store.transaction() as tx:
            self._standing(tx, caller, organization)
            return tx.list_members(organization)

    # -- bootstrap ---------------------------------------------------------------------------

    def bootstrap(self, name: str) -> IssuedToken:
        """Create the first global administrator and its all-powerful token, once."""
        check_principal_name(name, "name")
        now = self._clock()
        with self._store.transaction() as tx:
            if tx.any_global_admin():
                raise FailedPrecondition(
                    "a global administrator already exists; ask one for a token"
                )
            if tx.get_principal(name) is not None:
                raise AlreadyExists(f"principal {name!r} already exists")
            tx.add_principal(Principal(name, PrincipalKind.USER, True, now))
            token = new_token()
            record = TokenRecord(
                token_id=token.token_id,
                secret_hash=self._hasher.hash(token),
                organization=None,
                subject=name,
                label="bootstrap",
                description="first global administrator",
                scopes=("*",),
                created_at=now,
                expires_at=None,
                revoked_at=None,
                created_by="bootstrap",
            )
            tx.add_token(record)
        return IssuedToken(record=record, secret=token.value)


def _keep_an_owner(tx: Transaction, organization: str) -> None:
    owners = [m for m in tx.list_members(organization) if m.role == Role.OWNER]
    if len(owners) <= 1:
        raise FailedPrecondition(
            f"{organization!r} would have no owner left: make another member owner first"
        )


def _expiry(now: datetime, expires_at: datetime | None, ttl: timedelta | None) -> datetime | None:
    if expires_at is not None:
        if expires_at <= now:
            raise InvalidArgument("expires_at", "must be in the future")
        return expires_at
    if ttl is not None:
        if ttl <= timedelta(0):
            raise InvalidArgument("ttl", "must be positive")
        return now + ttl
    return None


def _check_text(field: str, value: str, limit: int, multiline: bool = False) -> None:
    """Length and no control characters (a NUL byte would not even store on PostgreSQL)."""
    if len(value) > limit:
        raise InvalidArgument(field, f"at most {limit} characters")
    allowed = "\n\t" if multiline else ""
    if any((ord(char) < 32 and char not in allowed) or char == "\x7f" for char in value):
        raise InvalidArgument(field, "must not contain control characters")


def _check_properties(properties: Mapping[str, str]) -> dict[str, str]:
    if len(properties) > MAX_PROPERTIES:
        raise InvalidArgument("properties", f"at most {MAX_PROPERTIES} entries")
    for key, value in properties.items():
        if _PROPERTY_KEY_RE.fullmatch(key) is None:
            raise InvalidArgument(
                "properties",
                f"key {key!r}: use letters, digits and . _ / -, at most 128 characters",
            )
        if len(value) > MAX_PROPERTY_VALUE:
            raise InvalidArgument(
                "properties", f"value of {key!r}: at most {MAX_PROPERTY_VALUE} characters"
            )
        if "\x00" in value:
            raise InvalidArgument("properties", f"value of {key!r} must not contain NUL")
    return dict(properties)
