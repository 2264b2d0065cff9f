"""Protobuf <-> domain. Kept apart so the servicers read as parse, call, map."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from authority.cache.validator import CacheStats
from authority.domain.audit import AuditFilter
from authority.domain.errors import InvalidArgument, shown
from authority.domain.events import EventKind, RecordedEvent, WatchedEvent
from authority.domain.exchange import IssuedAccessToken
from authority.domain.models import Membership, Organization, Principal, PrincipalKind, Role
from authority.domain.models import TokenRecord as DomainToken
from authority.domain.token_format import display_hint
from authority.domain.validation import Reason, Verdict, check_request_id
from authority.v1 import admin_pb2, token_authority_pb2

PROFILE_NAMES: dict[int, str | None] = {
    token_authority_pb2.SCOPE_PROFILE_UNSPECIFIED: None,
    token_authority_pb2.SCOPE_PROFILE_ALL: "all",
    token_authority_pb2.SCOPE_PROFILE_UPLOAD_ONLY: "upload-only",
    token_authority_pb2.SCOPE_PROFILE_DOWNLOAD_ONLY: "download-only",
}
_ROLE_TO_PROTO = {
    Role.OWNER: admin_pb2.ROLE_OWNER,
    Role.ADMIN: admin_pb2.ROLE_ADMIN,
    Role.MEMBER: admin_pb2.ROLE_MEMBER,
}
_ROLE_FROM_PROTO: dict[int, Role] = {value: role for role, value in _ROLE_TO_PROTO.items()}
_KIND_TO_PROTO = {
    PrincipalKind.USER: admin_pb2.PRINCIPAL_KIND_USER,
    PrincipalKind.SERVICE: admin_pb2.PRINCIPAL_KIND_SERVICE,
}
_KIND_FROM_PROTO: dict[int, PrincipalKind] = {value: kind for kind, value in _KIND_TO_PROTO.items()}
_REASONS = {reason: token_authority_pb2.Reason.ValueType(reason.value) for reason in Reason}
# Beyond year 9999 a Timestamp cannot be turned into a datetime.
_MAX_TIMESTAMP_SECONDS = 253402300799


def timestamp(moment: datetime) -> Timestamp:
    seconds = math.floor(moment.timestamp())
    return Timestamp(seconds=seconds, nanos=moment.microsecond * 1000)


def to_datetime(value: Timestamp, field: str) -> datetime:
    if not 0 <= value.seconds <= _MAX_TIMESTAMP_SECONDS or not 0 <= value.nanos < 10**9:
        raise InvalidArgument(field, "is not a valid timestamp")
    return value.ToDatetime(tzinfo=UTC)


# google.protobuf.Duration's own range (about 10,000 years); how long a token may live is
# the domain's rule, not this.
_MAX_DURATION_SECONDS = 315_576_000_000


def to_timedelta(seconds: int, nanos: int, field: str) -> timedelta:
    if abs(seconds) > _MAX_DURATION_SECONDS or abs(nanos) >= 10**9:
        raise InvalidArgument(field, "is not a valid duration")
    return timedelta(seconds=seconds, microseconds=nanos // 1000)


def profile_name(profile: int) -> str | None:
    if profile not in PROFILE_NAMES:
        raise InvalidArgument("scope_profile", f"unknown profile {profile}")
    return PROFILE_NAMES[profile]


def role(value: int, name: str) -> Role | None:
    """A role from the enum or its lowercase name; None when neither is given."""
    if name:
        try:
            from_name = Role(name.strip().lower())
        except ValueError:
            raise InvalidArgument(
                "role_name", f"{shown(name)}: use owner, admin or member"
            ) from None
        if value and _ROLE_FROM_PROTO.get(value) != from_name:
            raise InvalidArgument("role", "role and role_name disagree; give one of them")
        return from_name
    if value and value not in _ROLE_FROM_PROTO:
        raise InvalidArgument("role", f"unknown role {value}")
    return _ROLE_FROM_PROTO.get(value)


def principal_kind(value: int, name: str) -> PrincipalKind | None:
    if name:
        try:
            return PrincipalKind(name.strip().lower())
        except ValueError:
            raise InvalidArgument("kind_name", f"{shown(name)}: use user or service") from None
    if value and value not in _KIND_FROM_PROTO:
        raise InvalidArgument("kind", f"unknown kind {value}")
    return _KIND_FROM_PROTO.get(value)


def access_token(issued: IssuedAccessToken) -> dict[str, Any]:
    """The fields ExchangeKeyResponse and RefreshTokenResponse share."""
    claims = issued.claims
    return {
        "access_token": issued.value,
        "token_id": claims.token_id,
        "expires_at": Timestamp(seconds=claims.expires_at),
        "refresh_until": Timestamp(seconds=claims.refresh_until),
    }


def token(record: DomainToken) -> token_authority_pb2.Token:
    message = token_authority_pb2.Token(
        token_id=record.token_id,
        organization=record.organization or "",
        subject=record.subject or "",
        label=record.label,
        description=record.description,
        scopes=record.scopes,
        created_at=timestamp(record.created_at),
        created_by=record.created_by,
        properties=record.properties,
        display_hint=display_hint(record.token_id),
    )
    if record.expires_at is not None:
        message.expires_at.CopyFrom(timestamp(record.expires_at))
    if record.revoked_at is not None:
        message.revoked_at.CopyFrom(timestamp(record.revoked_at))
    return message


# Validate answers are kept serialized: bytes per cached entry cost a fraction of a message
# object, and appending a field to a serialized message is how protobuf encodes setting it.
_REQUEST_ID_TAG = b"\x42"  # ValidateResponse.request_id: field 8, length-delimited
_RESULT_TAG = b"\x0a"  # ValidateBatchResponse.results: field 1, length-delimited
_ONE_BYTE_VARINTS = tuple(bytes((length,)) for length in range(128))
_UNFOUND = {
    reason: token_authority_pb2.ValidateResponse(
        valid=False, reason=_REASONS[reason]
    ).SerializeToString()
    for reason in Reason
}


def _varint(number: int) -> bytes:
    if number < 128:
        return _ONE_BYTE_VARINTS[number]
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def rendered_verdict(result: Verdict, request_id: str) -> bytes:
    """A serialized ValidateResponse; rendered once per cached entry and reason."""
    entry = result.entry
    if entry is None:
        body = _UNFOUND[result.reason]
    else:
        cached = entry.rendered.get(result.reason)
        if cached is None:
            cached = entry.rendered[result.reason] = token_authority_pb2.ValidateResponse(
                valid=result.reason is Reason.OK,
                reason=_REASONS[result.reason],
                token_id=entry.token_id,
                organization=entry.organization,
                subject=entry.subject,
                scopes=entry.scopes,
                expires_at=timestamp(entry.expires_at) if entry.expires_at else None,
                properties=entry.properties,
                # Map entries in key order: the same bytes from every process (both servers,
                # every replica), not in each one's own hash order.
            ).SerializeToString(deterministic=True)
        body = cached
    if not request_id:
        return body
    check_request_id(request_id)
    raw = request_id.encode()
    return body + _REQUEST_ID_TAG + _varint(len(raw)) + raw


def rendered_batch(
    verdicts: Sequence[Verdict], requests: Sequence[token_authority_pb2.ValidateRequest]
) -> bytes:
    """A serialized ValidateBatchResponse: one answer per request, in order, joined from the
    rendered answers (both servers send it as it is)."""
    parts: list[bytes] = []
    for result, request in zip(verdicts, requests, strict=True):
        body = rendered_verdict(result, request.request_id)
        parts += (_RESULT_TAG, _varint(len(body)), body)
    return b"".join(parts)


_TOKEN_EVENT_KINDS = {
    EventKind.TOKEN_ISSUED: token_authority_pb2.TOKEN_EVENT_KIND_ISSUED,
    EventKind.TOKEN_CHANGED: token_authority_pb2.TOKEN_EVENT_KIND_CHANGED,
    EventKind.TOKEN_REVOKED: token_authority_pb2.TOKEN_EVENT_KIND_REVOKED,
    EventKind.TOKEN_EXPIRED: token_authority_pb2.TOKEN_EVENT_KIND_EXPIRED,
    EventKind.TOKEN_EXPIRING: token_authority_pb2.TOKEN_EVENT_KIND_EXPIRING,
}


def token_event(watched: WatchedEvent) -> token_authority_pb2.TokenEvent:
    """A WatchEvents message: ids, names and times only (the log holds no secret)."""
    recorded = watched.recorded
    event = recorded.event
    initiator = event.initiator
    actor = initiator.principal or (f"key:{initiator.token_id}" if initiator.token_id else "")
    message = token_authority_pb2.TokenEvent(
        sequence=recorded.sequence,
        kind=_TOKEN_EVENT_KINDS.get(event.kind, token_authority_pb2.TOKEN_EVENT_KIND_UNSPECIFIED),
        token_id=event.token_id or "",
        organization=event.organization or "",
        subject=watched.principal or "",
        occurred_at=timestamp(event.occurred_at),
        actor=actor,
    )
    if watched.expires_at is not None:
        message.expires_at.CopyFrom(timestamp(watched.expires_at))
    return message


def organization(value: Organization) -> admin_pb2.Organization:
    return admin_pb2.Organization(
        name=value.name, display_name=value.display_name, created_at=timestamp(value.created_at)
    )


def principal(value: Principal) -> admin_pb2.Principal:
    return admin_pb2.Principal(
        name=value.name,
        kind=_KIND_TO_PROTO[value.kind],
        global_admin=value.global_admin,
        created_at=timestamp(value.created_at),
    )


def membership(value: Membership) -> admin_pb2.Membership:
    return admin_pb2.Membership(
        organization=value.organization, principal=value.principal, role=_ROLE_TO_PROTO[value.role]
    )


def cache_stats(stats: CacheStats) -> admin_pb2.CacheStats:
    return admin_pb2.CacheStats(
        hits=stats.hits,
        misses=stats.misses,
        evictions=stats.evictions,
        size=stats.size,
        negative_hits=stats.negative_hits,
        negative_size=stats.negative_size,
        coalesced=stats.coalesced,
        store_reads=stats.store_reads,
        invalidations=stats.invalidations,
        max_entries=stats.max_entries,
    )


def audit_filter(request: admin_pb2.ListAuditEventsRequest) -> AuditFilter:
    return AuditFilter(
        organization=request.organization,
        actor=request.actor,
        action=request.action,
        object=request.object,
        since=to_datetime(request.since, "since") if request.HasField("since") else None,
        until=to_datetime(request.until, "until") if request.HasField("until") else None,
    )


def audit_event(recorded: RecordedEvent) -> admin_pb2.AuditEvent:
    event = recorded.event
    return admin_pb2.AuditEvent(
        sequence=recorded.sequence,
        occurred_at=timestamp(event.occurred_at),
        action=event.kind.value,
        organization=event.organization or "",
        object=event.subject,
        token_id=event.token_id or "",
        actor_principal=event.initiator.principal or "",
        actor_token_id=event.initiator.token_id or "",
        peer=event.initiator.peer,
        request_id=event.initiator.request_id,
        outcome=event.outcome.value,
        details=dict(event.details),
    )
