"""Page sizes and page tokens (AIP-158); settings from the environment and the pepper."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from authority.domain import pagination
from authority.domain.errors import InvalidArgument, Reason
from authority.settings import Settings, SettingsError

QUERY: list[object] = ["acme", None, False]


def forged(payload: object) -> str:
    """A page token with `payload` inside, encoded the way the service encodes its own."""
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


# -- page sizes -------------------------------------------------------------------------------


def test_page_size_zero_means_the_default() -> None:
    assert pagination.page_size(0) == pagination.DEFAULT_PAGE_SIZE == 50


def test_page_size_above_the_maximum_is_coerced_down() -> None:
    assert pagination.page_size(pagination.MAX_PAGE_SIZE) == pagination.MAX_PAGE_SIZE
    assert pagination.page_size(pagination.MAX_PAGE_SIZE + 1) == pagination.MAX_PAGE_SIZE
    assert pagination.page_size(2**31 - 1) == pagination.MAX_PAGE_SIZE


def test_page_size_within_the_bounds_is_kept() -> None:
    assert pagination.page_size(1) == 1
    assert pagination.page_size(7) == 7


def test_a_negative_page_size_is_refused() -> None:
    with pytest.raises(InvalidArgument) as refused:
        pagination.page_size(-1)
    assert refused.value.field == "page_size"


# -- page tokens ------------------------------------------------------------------------------


def test_an_empty_page_token_means_the_first_page() -> None:
    assert pagination.decode("", QUERY, int) is None


@pytest.mark.parametrize("position", [0, 17, 2**53, "acme", "name with spaces/ü"])
def test_a_page_token_round_trips_its_position(position: int | str) -> None:
    token = pagination.encode(QUERY, position)
    if isinstance(position, int):
        assert pagination.decode(token, list(QUERY), int) == position
    else:
        assert pagination.decode(token, list(QUERY), str) == position


def test_a_page_token_is_url_safe_and_unpadded() -> None:
    token = pagination.encode(["org", "x" * 10], "?&/+")
    assert "=" not in token and "+" not in token and "/" not in token


@pytest.mark.parametrize(
    "other_query",
    [["acme", None, True], ["acme", "alice", False], ["globex", None, False], []],
)
def test_a_page_token_of_another_query_is_refused(other_query: list[object]) -> None:
    token = pagination.encode(QUERY, 17)
    with pytest.raises(InvalidArgument) as refused:
        pagination.decode(token, other_query, int)
    assert refused.value.field == "page_token"


def tampered_tokens() -> list[str]:
    token = pagination.encode(QUERY, 17)
    return [
        "not a token",
        "!!!!",
        token[:-3],
        token[5:],
        token + "AAAA",
        "A",
        base64.urlsafe_b64encode(b"\xff\xfe\x00garbage").decode(),
        forged({"acme": 17}),
        forged(17),
        forged("text"),
        forged([QUERY]),
        forged([QUERY, 17, "extra"]),
        forged([QUERY, 1.5]),
        forged([QUERY, None]),
        forged([QUERY, [17]]),
        forged([QUERY, {"seq": 17}]),
        forged([QUERY, "17"]),  # text where the query's position is a number
        base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode(),  # deeper than json parses
        forged([QUERY, True]),
        "\u00e9t\u00e9" * 4,
    ]


@pytest.mark.parametrize("token", tampered_tokens())
def test_a_tampered_or_garbage_page_token_is_refused(token: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        pagination.decode(token, QUERY, int)
    assert refused.value.field == "page_token"
    assert refused.value.reason is Reason.PAGE_TOKEN_INVALID


@pytest.mark.parametrize("position", [17, "nul\x00inside", "x" * 257])
def test_a_text_position_is_a_short_name(position: int | str) -> None:
    with pytest.raises(InvalidArgument):
        pagination.decode(pagination.encode(QUERY, position), QUERY, str)


# -- settings ---------------------------------------------------------------------------------


def test_settings_default_when_the_environment_is_empty() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings().listen == "127.0.0.1:50051"


def test_settings_coerce_ints_floats_and_paths_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "AUTHORITY_LISTEN": "0.0.0.0:6000",
            "AUTHORITY_DATABASE_URL": "postgresql://db/authority",
            "AUTHORITY_CACHE_MAX_ENTRIES": "12",
            "AUTHORITY_CACHE_MAX_STALENESS_SECONDS": "2.5",
            "AUTHORITY_NEGATIVE_CACHE_TTL_SECONDS": "1",
            "AUTHORITY_PEPPER_FILE": "/tmp/elsewhere/pepper",
            "AUTHORITY_LOG_LEVEL": "DEBUG",
            "UNRELATED": "ignored",
        }
    )
    assert settings.listen == "0.0.0.0:6000"
    assert settings.database_url == "postgresql://db/authority"
    assert settings.cache_max_entries == 12 and type(settings.cache_max_entries) is int
    assert settings.cache_max_staleness_seconds == 2.5
    assert settings.negative_cache_ttl_seconds == 1.0
    assert type(settings.negative_cache_ttl_seconds) is float
    assert settings.pepper_file == Path("/tmp/elsewhere/pepper")
    assert settings.log_level == "DEBUG"


def test_an_empty_variable_keeps_the_default() -> None:
    assert Settings.from_env({"AUTHORITY_CACHE_MAX_ENTRIES": ""}).cache_max_entries == 100_000


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("AUTHORITY_CACHE_MAX_ENTRIES", "lots"),
        ("AUTHORITY_CACHE_MAX_ENTRIES", "1.5"),
        ("AUTHORITY_DATABASE_THREADS", "4x"),
        ("AUTHORITY_CACHE_MAX_STALENESS_SECONDS", "soon"),
    ],
)
def test_a_value_of_the_wrong_type_raises_a_settings_error_naming_the_variable(
    variable: str, raw: str
) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: raw})


def test_replace_ignores_unset_cli_flags() -> None:
    settings = Settings().replace(listen="127.0.0.1:0", database_url=None)
    assert settings.listen == "127.0.0.1:0"
    assert settings.database_url == Settings().database_url


# -- the pepper -------------------------------------------------------------------------------


def test_the_pepper_file_is_created_once_readable_only_by_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "var" / "pepper"
    settings = Settings(pepper_file=path)
    pepper = settings.load_pepper()
    assert len(pepper) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert settings.load_pepper() == pepper
    assert Settings(pepper_file=path).load_pepper() == pepper


def test_an_existing_pepper_file_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "pepper"
    path.write_text("cd" * 32 + "\n")
    assert Settings(pepper_file=path).load_pepper() == bytes.fromhex("cd" * 32)


def test_a_pepper_file_that_is_not_hex_is_a_settings_error(tmp_path: Path) -> None:
    path = tmp_path / "pepper"
    path.write_text("this is not hexadecimal")
    with pytest.raises(SettingsError, match=str(path)):
        Settings(pepper_file=path).load_pepper()


def test_a_short_pepper_file_is_a_settings_error(tmp_path: Path) -> None:
    path = tmp_path / "pepper"
    path.write_text("ab" * 31)
    with pytest.raises(SettingsError, match=str(path)):
        Settings(pepper_file=path).load_pepper()


def test_pepper_hex_takes_precedence_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pepper"
    assert Settings(pepper_hex="ef" * 32, pepper_file=path).load_pepper() == bytes.fromhex(
        "ef" * 32
    )
    assert not path.exists()


@pytest.mark.parametrize(
    ("pepper_hex", "complaint"),
    [
        ("ab" * 31, "at least 32 bytes"),
        ("zz" * 32, "not hexadecimal"),
        ("a" * 65, "not hexadecimal"),
    ],
)
def test_a_short_or_non_hex_pepper_hex_is_refused(pepper_hex: str, complaint: str) -> None:
    with pytest.raises(SettingsError, match=complaint) as refused:
        Settings(pepper_hex=pepper_hex).load_pepper()
    assert "AUTHORITY_PEPPER_HEX" in str(refused.value)
