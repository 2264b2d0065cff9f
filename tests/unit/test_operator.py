"""The operator CLI's own parsing (durations), without a server."""

from __future__ import annotations

from datetime import timedelta

import pytest

from authority.operator import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("12h", 43200),
        ("30d", 2592000),
        ("2w", 1209600),
        ("1d12h", 129600),
    ],
)
def test_durations_read_as_operators_write_them(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "3", "d", "1x", "1d 2h", "-1d", "1.5h"])
def test_durations_without_a_unit_or_with_junk_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--ttl"):
        parse_duration(text)
