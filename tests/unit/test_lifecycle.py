"""When an expiry is news: the rules of the expiry sweep, against tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from authority.domain.lifecycle import announces_expiry, warns_of_expiry
from authority.domain.models import TokenRecord

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def token(expires_at: datetime, revoked_at: datetime | None = None) -> TokenRecord:
    return TokenRecord(
        token_id="t" * 16,
        secret_hash=b"",
        organization="acme",
        subject=None,
        label="",
        description="",
        scopes=(),
        created_at=NOW - 10 * HOUR,
        expires_at=expires_at,
        revoked_at=revoked_at,
        created_by="admin",
    )


@pytest.mark.parametrize(
    ("expires_at", "revoked_at", "announced"),
    [
        (NOW - HOUR, None, True),
        # revoked after it expired: it did expire first
        (NOW - HOUR, NOW - HOUR / 2, True),
        # revoked before: already dead, token.revoked said so
        (NOW - HOUR, NOW - 2 * HOUR, False),
    ],
)
def test_an_expiry_is_announced_unless_the_token_was_revoked_first(
    expires_at: datetime, revoked_at: datetime | None, announced: bool
) -> None:
    assert announces_expiry(token(expires_at, revoked_at)) is announced


@pytest.mark.parametrize(
    ("expires_at", "revoked_at", "warned"),
    [
        (NOW + HOUR, None, True),
        (NOW + HOUR, NOW - HOUR, False),  # revoked: nothing to warn of
        (NOW, None, False),  # already expired when the sweep came: token.expired alone
        (NOW - HOUR, None, False),
    ],
)
def test_a_coming_expiry_is_warned_of_only_while_the_token_is_alive(
    expires_at: datetime, revoked_at: datetime | None, warned: bool
) -> None:
    assert warns_of_expiry(token(expires_at, revoked_at), NOW) is warned
