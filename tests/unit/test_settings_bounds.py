"""Every number a setting holds has a range; a value outside it stops the service at start
with the setting's name and the range, before anything could overflow (a refresh window that
reached past the year 9999 once made ExchangeKey fail with INTERNAL)."""

from __future__ import annotations

import pytest

from authority.settings import Settings, SettingsError


@pytest.mark.parametrize(
    ("variable", "value", "named_range"),
    [
        ("AUTHORITY_REFRESH_WINDOW_SECONDS", "300000000000", "use 0 to 31,622,400"),
        ("AUTHORITY_ACCESS_TOKEN_MAX_TTL_SECONDS", "0", "use 1 to 86,400"),
        ("AUTHORITY_ACCESS_TOKEN_MAX_TTL_SECONDS", "604800", "use 1 to 86,400"),
        ("AUTHORITY_CACHE_MAX_ENTRIES", "-1", "use 0 to 100,000,000"),
        ("AUTHORITY_WORKERS", "0", "use 1 to 1,024"),
        ("AUTHORITY_FEED_POLL_SECONDS", "-0.05", "use 0 to 3,600"),
        ("AUTHORITY_EXPIRY_WARNING_SECONDS", "1e300", "use 0 to 31,536,000"),
    ],
)
def test_a_number_out_of_its_range_is_refused_with_the_setting_and_the_range(
    variable: str, value: str, named_range: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: value})

    message = str(refused.value)
    assert message.startswith(f"{variable}=") and " is out of range: " in message, message
    assert message.endswith(named_range), message


def test_the_defaults_and_the_edges_of_each_range_are_accepted() -> None:
    Settings()
    Settings.from_env(
        {
            "AUTHORITY_REFRESH_WINDOW_SECONDS": "31622400",
            "AUTHORITY_ACCESS_TOKEN_MAX_TTL_SECONDS": "1",
            "AUTHORITY_FEED_POLL_SECONDS": "0",
            "AUTHORITY_CACHE_MAX_ENTRIES": "0",
            "AUTHORITY_WORKERS": "1024",
        }
    )


def test_replace_is_held_to_the_same_ranges() -> None:
    with pytest.raises(SettingsError, match="AUTHORITY_WORKERS"):
        Settings().replace(workers=0)


def test_the_thin_server_is_the_default_and_grpcio_the_one_setting_fallback() -> None:
    assert Settings().server == "thin"
    assert Settings.from_env({"AUTHORITY_SERVER": "grpcio"}).server == "grpcio"
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"AUTHORITY_SERVER": "envoy"})
    assert str(refused.value) == "AUTHORITY_SERVER='envoy': use grpcio or thin"
