"""Requests built from Python values and results read from responses.

Shared by the blocking and the asyncio client, which differ only in how they make the call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from authority.client._models import (
    AccessToken,
    IssuedToken,
    Membership,
    Organization,
    Principal,
    PrincipalKind,
    Reason,
    Role,
    ScopeProfile,
    Token,
    ValidationResult,
)
from authority.v1 import admin_pb2
from authority.v1 import token_authority_pb2 as pb

Metadata = tuple[tuple[str, str], ...]
# What validate_batch accepts per item: a token alone (is it alive?) or (token, permission).
BatchItem = str | tuple[str, str]

_PROFILES = {
    ScopeProfile.ALL: pb.SCOPE_PROFILE_ALL,
    ScopeProfile.UPLOAD_ONLY: pb.SCOPE_PROFILE_UPLOAD_ONLY,
    ScopeProfile.DOWNLOAD_ONLY: pb.SCOPE_PROFILE_DOWNLOAD_ONLY,
}
_ROLES = {
    admin_pb2.ROLE_OWNER: Role.OWNER,
    admin_pb2.ROLE_ADMIN: Role.ADMIN,
    admin_pb2.ROLE_MEMBER: Role.MEMBER,
}
_KINDS = {
    admin_pb2.PRINCIPAL_KIND_USER: PrincipalKind.USER,
    admin_pb2.PRINCIPAL_KIND_SERVICE: PrincipalKind.SERVICE,
}
_REASONS = {
    pb.Reason.Value(reason.value): reason for reason in Reason if reason is not Reason.UNRECOGNIZED
}


def bearer_metadata(token: str | None) -> Metadata | None:
    """The `authorization` metadata management calls authenticate with."""
    return (("authorization", f"Bearer {token}"),) if token else None


# -- requests -------------------------------------------------------------------------------


def validate_request(token: str, permission: str, request_id: str = "") -> pb.ValidateRequest:
    return pb.ValidateRequest(token=token, permission=permission, request_id=request_id)


def batch_request(items: Iterable[BatchItem]) -> pb.ValidateBatchRequest:
    requests = []
    for item in items:
        token, permission = (item, "") if isinstance(item, str) else item
        requests.append(validate_request(token, permission))
    return pb.ValidateBatchRequest(requests=requests)


def issue_request(
    organization: str,
    label: str,
    *,
    scopes: Sequence[str],
    scope_profile: ScopeProfile | str | None,
    subject: str,
    description: str,
    ttl: timedelta | None,
    expires_at: datetime | None,
    properties: Mapping[str, str] | None,
) -> pb.IssueTokenRequest:
    """The IssueToken request; refuses locally what the wire cannot say unambiguously."""
    if isinstance(scopes, str):
        # A lone string would be sent as one scope per character.
        raise TypeError("scopes must be a sequence of permission strings, not a str")
    request = pb.IssueTokenRequest(
        organization=organization,
        label=label,
        description=description,
        subject=subject,
        scopes=list(scopes),
        properties=dict(properties or {}),
    )
    if scope_profile is not None:
        request.scope_profile = _PROFILES[ScopeProfile(scope_profile)]
    if ttl is not None and expires_at is not None:
        raise ValueError("give at most one of ttl and expires_at")
    if ttl is not None:
        request.ttl.FromTimedelta(ttl)
    if expires_at is not None:
        if expires_at.tzinfo is None:
            # A naive datetime's zone is a guess; the service would read it as UTC.
            raise ValueError("expires_at must be timezone-aware, e.g. datetime.now(UTC)")
        request.expires_at.FromDatetime(expires_at.astimezone(UTC))
    return request


def exchange_request(
    key: str, scopes: Sequence[str], ttl: timedelta | None, audience: str
) -> pb.ExchangeKeyRequest:
    if isinstance(scopes, str):
        raise TypeError("scopes must be a sequence of permission strings, not a str")
    request = pb.ExchangeKeyRequest(key=key, scopes=list(scopes), audience=audience)
    if ttl is not None:
        request.ttl.FromTimedelta(ttl)
    return request


def create_principal_request(
    name: str, kind: PrincipalKind | str
) -> admin_pb2.CreatePrincipalRequest:
    return admin_pb2.CreatePrincipalRequest(name=name, kind_name=str(kind))


def add_member_request(
    organization: str, principal: str, role: Role | str
) -> admin_pb2.AddMemberRequest:
    return admin_pb2.AddMemberRequest(
        organization=organization, principal=principal, role_name=str(role)
    )


# -- results --------------------------------------------------------------------------------


def _datetime(value: Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def validation_result(response: pb.ValidateResponse) -> ValidationResult:
    return ValidationResult(
        valid=response.valid,
        reason=_REASONS.get(response.reason, Reason.UNRECOGNIZED),
        token_id=response.token_id,
        organization=response.organization,
        subject=response.subject,
        scopes=tuple(response.scopes),
        expires_at=_datetime(response.expires_at) if response.HasField("expires_at") else None,
        properties=dict(response.properties),
    )


def validation_results(response: pb.ValidateBatchResponse) -> list[ValidationResult]:
    return [validation_result(item) for item in response.results]


def token(message: pb.Token) -> Token:
    return Token(
        token_id=message.token_id,
        organization=message.organization,
        subject=message.subject,
        label=message.label,
        description=message.description,
        scopes=tuple(message.scopes),
        created_at=_datetime(message.created_at),
        expires_at=_datetime(message.expires_at) if message.HasField("expires_at") else None,
        revoked_at=_datetime(message.revoked_at) if message.HasField("revoked_at") else None,
        created_by=message.created_by,
        properties=dict(message.properties),
        display_hint=message.display_hint,
    )


def issued_token(response: pb.IssueTokenResponse) -> IssuedToken:
    return IssuedToken(token=token(response.token), secret=response.secret)


def access_token(response: pb.ExchangeKeyResponse | pb.RefreshTokenResponse) -> AccessToken:
    return AccessToken(
        access_token=response.access_token,
        token_id=response.token_id,
        expires_at=_datetime(response.expires_at),
        refresh_until=(
            _datetime(response.refresh_until) if response.HasField("refresh_until") else None
        ),
    )


def organization(message: admin_pb2.Organization) -> Organization:
    return Organization(
        name=message.name,
        display_name=message.display_name,
        created_at=_datetime(message.created_at),
    )


def principal(message: admin_pb2.Principal) -> Principal:
    return Principal(
        name=message.name,
        kind=_KINDS[message.kind],
        global_admin=message.global_admin,
        created_at=_datetime(message.created_at),
    )


def membership(message: admin_pb2.Membership) -> Membership:
    return Membership(
        organization=message.organization, principal=message.principal, role=_ROLES[message.role]
    )
