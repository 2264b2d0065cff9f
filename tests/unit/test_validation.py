"""The Validate decision, `validation.check`, for every Reason, with a real keyed hash."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta

import pytest

from authority.domain.models import TokenRecord
from authority.domain.token_format import ParsedToken, SecretHasher, new_token
from authority.domain.validation import EntryCompiler, Reason, ValidationEntry, check

HASHER = SecretHasher(b"p" * 32)
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def stored(
    token: ParsedToken,
    scopes: tuple[str, ...] = ("download",),
    expires_at: datetime | None = None,
    revoked_at: datetime | None = None,
    organization: str | None = "acme",
    subject: str | None = "alice",
) -> ValidationEntry:
    """What the store would hold for `token`, compiled the way the cache compiles it."""
    record = TokenRecord(
        token_id=token.token_id,
        secret_hash=HASHER.hash(token),
        organization=organization,
        subject=subject,
        label="ci",
        description="",
        scopes=scopes,
        created_at=NOW - timedelta(days=1),
        expires_at=expires_at,
        revoked_at=revoked_at,
        created_by="alice",
    )
    return ValidationEntry.from_record(record)


def decide(
    entry: ValidationEntry | None, token: ParsedToken, permission: str, at: datetime = NOW
) -> Reason:
    return check(entry, token, permission, at.timestamp(), HASHER).reason


def test_a_live_token_with_the_right_secret_is_valid_and_carries_its_entry() -> None:
    token = new_token()
    entry = stored(token)
    verdict = check(entry, token, "download", NOW.timestamp(), HASHER)
    assert verdict.reason is Reason.OK and verdict.valid
    assert verdict.entry == entry
    assert (verdict.entry.organization, verdict.entry.subject) == ("acme", "alice")


def test_an_id_with_nothing_stored_is_unknown() -> None:
    verdict = check(None, new_token(), "download", NOW.timestamp(), HASHER)
    assert verdict.reason is Reason.UNKNOWN and not verdict.valid
    assert verdict.entry is None


def test_a_wrong_secret_for_a_known_id_is_unknown_and_discloses_nothing() -> None:
    token = new_token()
    guess = new_token(token.token_id)
    verdict = check(stored(token), guess, "download", NOW.timestamp(), HASHER)
    assert verdict.reason is Reason.UNKNOWN
    assert verdict.entry is None


def test_a_hash_made_with_another_pepper_does_not_match() -> None:
    token = new_token()
    entry = stored(token)
    other = SecretHasher(b"q" * 32)
    assert check(entry, token, "", NOW.timestamp(), other).reason is Reason.UNKNOWN


def test_a_wrong_secret_for_a_revoked_id_is_still_unknown() -> None:
    token = new_token()
    entry = stored(token, revoked_at=NOW)
    assert decide(entry, new_token(token.token_id), "download") is Reason.UNKNOWN


def test_a_revoked_token_is_revoked() -> None:
    token = new_token()
    assert decide(stored(token, revoked_at=NOW - timedelta(hours=1)), token, "") is Reason.REVOKED


def test_a_revoked_token_reports_revoked_even_after_it_expired() -> None:
    token = new_token()
    entry = stored(token, expires_at=NOW - timedelta(days=1), revoked_at=NOW - timedelta(days=2))
    assert decide(entry, token, "download") is Reason.REVOKED


def test_a_token_is_expired_exactly_at_its_expiry_second() -> None:
    token = new_token()
    entry = stored(token, expires_at=NOW)
    assert decide(entry, token, "download", at=NOW) is Reason.EXPIRED
    assert decide(entry, token, "", at=NOW) is Reason.EXPIRED


def test_a_token_is_valid_one_microsecond_before_its_expiry() -> None:
    token = new_token()
    entry = stored(token, expires_at=NOW)
    assert decide(entry, token, "download", at=NOW - timedelta(microseconds=1)) is Reason.OK


def test_a_token_stays_expired_after_its_expiry() -> None:
    token = new_token()
    entry = stored(token, expires_at=NOW)
    assert decide(entry, token, "download", at=NOW + timedelta(days=365)) is Reason.EXPIRED


def test_a_token_without_expiry_never_expires() -> None:
    token = new_token()
    entry = stored(token, expires_at=None)
    assert entry.expires_ts == math.inf
    assert decide(entry, token, "download", at=datetime(9999, 1, 1, tzinfo=UTC)) is Reason.OK


def test_a_permission_outside_the_scopes_is_denied() -> None:
    token = new_token()
    entry = stored(token, scopes=("download",))
    assert decide(entry, token, "upload") is Reason.PERMISSION_DENIED
    assert decide(entry, token, "environment.control.StopEnv") is Reason.PERMISSION_DENIED


def test_an_empty_permission_asks_only_whether_the_token_is_alive() -> None:
    token = new_token()
    assert decide(stored(token, scopes=("download",)), token, "") is Reason.OK
    assert decide(stored(token, scopes=("x.*",)), token, "") is Reason.OK


def test_a_method_in_wire_form_is_matched_in_dotted_form() -> None:
    token = new_token()
    entry = stored(token, scopes=("authority.v1.TokenAuthority.*",))
    assert decide(entry, token, "/authority.v1.TokenAuthority/IssueToken") is Reason.OK
    assert decide(entry, token, "/authority.v1.Admin/AddMember") is Reason.PERMISSION_DENIED


def test_a_prefix_scope_grants_below_the_prefix_only() -> None:
    token = new_token()
    entry = stored(token, scopes=("environment.control.*",))
    assert decide(entry, token, "environment.control.StopEnv") is Reason.OK
    assert decide(entry, token, "environment.controlX") is Reason.PERMISSION_DENIED
    assert decide(entry, token, "environment.control") is Reason.PERMISSION_DENIED


@pytest.mark.parametrize(
    "permission", ["not a permission", "a..b", "a.*", "*", "download ", "d\u00f3wnload", "a.b."]
)
def test_a_malformed_permission_is_an_invalid_permission(permission: str) -> None:
    token = new_token()
    entry = stored(token, scopes=("download",))
    assert decide(entry, token, permission) is Reason.INVALID_PERMISSION


@pytest.mark.parametrize(
    ("scopes", "permission"),
    [
        (("*",), "not a permission"),
        (("*",), "a..b"),
        (("environment.control.*",), "environment.control.Stop Env"),
        (("environment.control.*",), "environment.control."),
    ],
)
def test_a_malformed_permission_is_invalid_whatever_the_token_holds(
    scopes: tuple[str, ...], permission: str
) -> None:
    """Whether a permission string is well formed must not depend on the token presented."""
    token = new_token()
    entry = stored(token, scopes=scopes)
    assert decide(entry, token, permission) is Reason.INVALID_PERMISSION


def test_an_unknown_token_is_unknown_whatever_the_permission() -> None:
    assert decide(None, new_token(), "not a permission") is Reason.UNKNOWN


def test_from_record_compiles_what_the_hot_path_reads() -> None:
    token = new_token()
    entry = stored(
        token,
        scopes=("download", "x.*"),
        expires_at=NOW,
        revoked_at=NOW,
        organization=None,
        subject=None,
    )
    assert entry.token_id == token.token_id
    assert entry.secret_hash == HASHER.hash(token)
    assert (entry.organization, entry.subject) == ("", "")
    assert entry.expires_ts == NOW.timestamp()
    assert entry.revoked
    assert entry.matcher.allows("x.y") and entry.matcher.allows("download")


def test_an_entry_never_holds_the_token_value_or_its_secret() -> None:
    token = new_token()
    entry = stored(token)
    secret = token.value[21:-6]
    for field in dataclasses.fields(entry):
        held = repr(getattr(entry, field.name))
        assert token.value not in held and secret not in held, field.name


def test_the_entry_compiler_shares_matchers_and_names_and_decides_like_from_record() -> None:
    compile_entry = EntryCompiler()
    tokens = [new_token() for _ in range(3)]
    records = [
        dataclasses.replace(
            _record_of(stored(token, scopes=("download", "x.*"))),
            organization="".join(["ac", "me"]),  # equal strings, distinct objects
        )
        for token in tokens
    ]

    entries = [compile_entry(record) for record in records]

    assert entries[0].matcher is entries[1].matcher is entries[2].matcher
    assert entries[0].organization is entries[1].organization
    for token, record, entry in zip(tokens, records, entries, strict=True):
        plain = ValidationEntry.from_record(record)
        for permission in ("download", "x.y", "upload", "", "bad permission"):
            assert decide(entry, token, permission) == decide(plain, token, permission)


def _record_of(entry: ValidationEntry) -> TokenRecord:
    return TokenRecord(
        token_id=entry.token_id,
        secret_hash=entry.secret_hash,
        organization=entry.organization or None,
        subject=entry.subject or None,
        label="ci",
        description="",
        scopes=entry.scopes,
        created_at=NOW - timedelta(days=1),
        expires_at=entry.expires_at,
        revoked_at=None,
        created_by="alice",
    )
