"""Token use cases: issue, show, list and revoke. Each runs as one unit of work.

Who may do what is asked of `policy` after `access` has resolved the caller under lock; nothing
here decides a permission on its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from authority.domain import pagination, policy
from authority.domain.access import Access
from authority.domain.clock import Clock
from authority.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    shown,
)
from authority.domain.events import Event, EventKind, Initiator, token_event
from authority.domain.models import (
    TokenRecord,
    check_organization_name,
    check_principal_name,
    check_text,
)
from authority.domain.policy import Actor, Caller, TokenAccess
from authority.domain.ports import Hold, Store, Transaction
from authority.domain.scopes import parse_scopes
from authority.domain.token_format import SecretHasher, is_token_id, new_token

MAX_LABEL = 100
MAX_DESCRIPTION = 1000
MAX_PROPERTIES = 64
MAX_PROPERTY_VALUE = 1024
# The longest ttl a token may be given: a ttl meant as "temporary" and typed with a few digits
# too many should be refused, not honoured. (An expires_at is taken as the instant it names.)
MAX_TTL = timedelta(days=10 * 365)
_PROPERTY_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")


@dataclass(frozen=True, slots=True)
class IssueTokenCommand:
    """What IssueToken asks for. An empty organization asks for a global token."""

    organization: str
    label: str = ""
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


def token_not_found(token_id: str) -> NotFound:
    """Worded the same whether the token does not exist or is hidden from the caller."""
    return NotFound(f"token {shown(token_id)} not found", Reason.TOKEN_NOT_FOUND)


class TokenService:
    """The token use cases. Holds no state of its own beyond what it was given."""

    def __init__(self, store: Store, clock: Clock, hasher: SecretHasher, access: Access) -> None:
        self._store = store
        self._clock = clock
        self._hasher = hasher
        self._access = access

    def issue_token(self, caller: Caller, command: IssueTokenCommand) -> IssuedToken:
        """Create a token no stronger than the caller's own; return it with its value."""
        organization = command.organization and check_organization_name(command.organization)
        label = check_text("label", command.label.strip(), MAX_LABEL)
        check_text("description", command.description, MAX_DESCRIPTION, multiline=True)
        subject = command.subject and check_principal_name(command.subject, "subject")
        scopes = parse_scopes(command.scopes, command.scope_profile)
        properties = _check_properties(command.properties or {})
        now = self._clock()
        requested = _expiry(now, command.expires_at, command.ttl)
        token = new_token()

        def work(tx: Transaction) -> TokenRecord:
            if organization:
                actor = self._access.authorize(tx, caller, organization, Hold.ADD)
                subject_role = tx.get_role(organization, subject) if subject else None
                if subject and subject_role is None:
                    raise FailedPrecondition(
                        f"principal {shown(subject)} is not a member of organization "
                        f"{shown(organization)}; add it with Admin/AddMember first",
                        Reason.SUBJECT_NOT_A_MEMBER,
                    )
                policy.may_issue(actor, subject or None, subject_role, scopes)
                owner = subject or None
            else:
                actor = self._access.authorize_global(
                    tx, caller, "issue a global token (set organization)", Hold.ADD
                )
                owner = self._global_subject(tx, actor, subject)
                policy.may_issue(actor, owner, None, scopes)
            record = TokenRecord(
                token_id=token.token_id,
                secret_hash=self._hasher.hash(token),
                organization=organization or None,
                subject=owner,
                label=label,
                description=command.description,
                scopes=scopes,
                created_at=now,
                expires_at=policy.issued_expiry(caller, requested),
                revoked_at=None,
                created_by=caller.actor,
                properties=properties,
            )
            tx.add_token(record)
            tx.record(issued_event(record, Initiator.of(caller)))
            return record

        return IssuedToken(record=self._store.run(work), secret=token.value)

    @staticmethod
    def _global_subject(tx: Transaction, actor: Actor, subject: str) -> str:
        """A global token acts for a global administrator: the caller's own by default."""
        owner = subject or actor.caller.subject
        assert owner is not None  # a global standing always has a subject
        principal = tx.get_principal(owner)
        if principal is None or not principal.global_admin:
            raise FailedPrecondition(
                f"principal {shown(owner)} is not a global administrator; a global token can act "
                "only for one (set organization to issue an organisation token)",
                Reason.SUBJECT_NOT_A_MEMBER,
            )
        return owner

    def _find(
        self, tx: Transaction, caller: Caller, token_id: str, wanted: TokenAccess, hold: Hold
    ) -> TokenRecord:
        """The token if the caller may do `wanted` with it; NotFound when it may not see it."""
        if not token_id:
            raise InvalidArgument("token_id", "is required")
        if not is_token_id(token_id):
            raise InvalidArgument(
                "token_id", f"{shown(token_id)} is not a token id (16 letters/digits)"
            )
        hidden = token_not_found(token_id)
        record = tx.get_token(token_id)
        if record is None:
            raise hidden
        if record.organization is None:
            try:
                self._access.authorize_global(tx, caller, "manage global tokens", hold)
            except PermissionDenied:
                raise hidden from None
            return record
        try:
            actor = self._access.authorize(tx, caller, record.organization, hold)
        except NotFound:
            raise hidden from None
        role = tx.get_role(record.organization, record.subject) if record.subject else None
        policy.require_token_access(
            policy.token_access(actor, record.subject, role), wanted, hidden
        )
        return record

    def get_token(self, caller: Caller, token_id: str) -> TokenRecord:
        """One token the caller may see."""
        return self._store.run(
            lambda tx: self._find(tx, caller, token_id, TokenAccess.SEE, Hold.READ)
        )

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

        def work(tx: Transaction) -> Page[TokenRecord]:
            actor = self._access.authorize(tx, caller, organization, Hold.READ)
            subject = policy.listed_subject(actor)
            query: list[object] = [organization, subject, include_revoked]
            before = pagination.decode(page_token, query, int)
            rows = tx.list_tokens(organization, subject, include_revoked, before, limit + 1)
            next_token = pagination.encode(query, rows[limit - 1][0]) if len(rows) > limit else ""
            return Page([record for _, record in rows[:limit]], next_token)

        return self._store.run(work)

    def revoke_token(self, caller: Caller, token_id: str) -> TokenRecord:
        """Revoke at once; a second revoke changes nothing and keeps the first revoked_at.

        The last live global-administrator token is never revoked: that would lock every
        operator out (the break-glass command is for a lost token, not for this).
        """
        now = self._clock()

        def work(tx: Transaction) -> TokenRecord:
            record = self._find(tx, caller, token_id, TokenAccess.MANAGE, Hold.CHANGE)
            live = record.revoked_at is None and (
                record.expires_at is None or record.expires_at > now
            )
            if record.organization is None and live and tx.count_live_global_tokens(now) <= 1:
                raise FailedPrecondition(
                    "this is the last live global-administrator token: issue another "
                    "(IssueToken with no organization) before revoking this one",
                    Reason.LAST_GLOBAL_ADMIN_TOKEN,
                )
            revoked = tx.revoke_token(token_id, now)
            assert revoked is not None  # found, and locked, inside this same transaction
            if record.revoked_at is None:  # a second revoke changes nothing, records nothing
                tx.record(
                    token_event(
                        EventKind.TOKEN_REVOKED,
                        Initiator.of(caller),
                        record.organization,
                        token_id,
                        now,
                    )
                )
            return revoked

        return self._store.run(work)


def issued_event(record: TokenRecord, initiator: Initiator) -> Event:
    """TOKEN_ISSUED: what a follower needs to know of a new token (never its hash)."""
    return token_event(
        EventKind.TOKEN_ISSUED,
        initiator,
        record.organization,
        record.token_id,
        record.created_at,
        principal=record.subject or "",
        label=record.label,
        scopes=" ".join(record.scopes),
        expires_at=record.expires_at.isoformat() if record.expires_at else "",
    )


def _expiry(now: datetime, expires_at: datetime | None, ttl: timedelta | None) -> datetime | None:
    if expires_at is not None:
        if expires_at <= now:
            raise InvalidArgument("expires_at", "must be in the future")
        return expires_at
    if ttl is not None:
        if ttl <= timedelta(0):
            raise InvalidArgument("ttl", "must be positive")
        if ttl > MAX_TTL:
            raise InvalidArgument("ttl", "must be at most ten years")
        return now + ttl
    return None


def _check_properties(properties: Mapping[str, str]) -> dict[str, str]:
    if len(properties) > MAX_PROPERTIES:
        raise InvalidArgument(
            "properties", f"at most {MAX_PROPERTIES} entries (got {len(properties)})"
        )
    for key, value in properties.items():
        if _PROPERTY_KEY_RE.fullmatch(key) is None:
            raise InvalidArgument(
                "properties",
                f"key {shown(key)}: use letters, digits and . _ / -, at most 128 characters",
            )
        if len(value) > MAX_PROPERTY_VALUE:
            raise InvalidArgument(
                "properties", f"value of {shown(key)}: at most {MAX_PROPERTY_VALUE} characters"
            )
        if "\x00" in value:
            raise InvalidArgument("properties", f"value of {shown(key)} must not contain NUL")
    return dict(properties)
