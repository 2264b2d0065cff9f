"""The token value `tka_<id>_<secret><checksum>`: its shape, its parser and its keyed hash."""

from __future__ import annotations

import hmac
import re
import zlib

import pytest

from authority.domain import token_format
from authority.domain.token_format import (
    ALPHABET,
    PREFIX,
    SCANNER_REGEX,
    TOKEN_LENGTH,
    ParsedToken,
    SecretHasher,
    is_token_id,
    new_token,
    parse_token,
)

PEPPER = bytes(range(32))
OTHER_PEPPER = bytes(range(1, 33))
SECRET_START = len(PREFIX) + token_format.ID_LENGTH + 1
CHECKSUM_START = TOKEN_LENGTH - token_format.CHECKSUM_LENGTH


def with_checksum(body: str) -> str:
    """`body` plus the documented checksum: 6 base62 digits of CRC32 over it."""
    number, digits = zlib.crc32(body.encode()), ""
    for _ in range(token_format.CHECKSUM_LENGTH):
        number, rest = divmod(number, 62)
        digits = ALPHABET[rest] + digits
    return body + digits


def other_character(character: str) -> str:
    """A different character of the token alphabet."""
    return "1" if character == "0" else "0"


def secret_number(value: str) -> int:
    secret = value[SECRET_START:CHECKSUM_START]
    number = 0
    for character in secret:
        number = number * 62 + ALPHABET.index(character)
    return number


# -- shape ------------------------------------------------------------------------------------


def test_a_new_token_has_the_documented_shape() -> None:
    token = new_token()
    assert token.value.startswith("tka_")
    assert len(token.value) == TOKEN_LENGTH == 4 + 16 + 1 + 43 + 6
    assert re.fullmatch(SCANNER_REGEX, token.value)
    assert token.value[4:20] == token.token_id
    assert token.value[20] == "_"


def test_the_scanner_regex_finds_a_token_inside_surrounding_text() -> None:
    token = new_token()
    leaked = f'config = {{"auth": "{token.value}"}}\nexport TOKEN={token.value} # oops'
    assert re.findall(SCANNER_REGEX, leaked) == [token.value, token.value]


def test_the_scanner_regex_ignores_a_token_glued_to_more_alphanumerics() -> None:
    token = new_token()
    assert re.search(SCANNER_REGEX, "x" + token.value) is None
    assert re.search(SCANNER_REGEX, token.value + "x") is None


def test_the_checksum_is_crc32_over_everything_before_it_in_base62() -> None:
    token = new_token()
    assert with_checksum(token.value[:CHECKSUM_START]) == token.value


def test_new_token_keeps_a_given_token_id() -> None:
    token = new_token("ABCDEFGHijklmnop")
    assert token.token_id == "ABCDEFGHijklmnop"
    assert parse_token(token.value) == token


def test_token_ids_and_secrets_are_distinct_across_many_tokens() -> None:
    tokens = [new_token() for _ in range(2000)]
    assert len({token.token_id for token in tokens}) == len(tokens)
    assert len({token.value[SECRET_START:CHECKSUM_START] for token in tokens}) == len(tokens)


def test_the_secret_carries_256_random_bits() -> None:
    assert 62**token_format.SECRET_LENGTH >= 2**256
    numbers = [secret_number(new_token().value) for _ in range(300)]
    assert all(number < 2**256 for number in numbers)
    # With 256 uniform bits, 300 draws all below 2**248 happen with probability 2**-2400.
    assert max(number.bit_length() for number in numbers) > 248


def test_every_id_character_stands_for_exactly_four_byte_values_and_the_rest_are_dropped() -> None:
    # No modulo bias: 248 of the 256 byte values map, 4 to each of the 62 characters.
    mapped = token_format.base62_from_bytes(bytes(range(256)))

    assert len(mapped) == 248
    assert {mapped.count(character) for character in ALPHABET} == {4}
    assert token_format.base62_from_bytes(bytes([62, 63, 126, 127, 190, 191, 254, 255])) == ""


def test_a_new_token_id_is_16_base62_characters_and_ids_vary_in_every_position() -> None:
    ids = [token_format.new_token_id() for _ in range(2000)]

    assert all(is_token_id(token_id) for token_id in ids)
    assert len(set(ids)) == len(ids)
    # 2000 draws of one position using at most 40 of the 62 characters: under 10**-360.
    assert all(len({token_id[i] for token_id in ids}) > 40 for i in range(16))


def test_is_token_id_accepts_only_16_alphanumerics() -> None:
    assert is_token_id(new_token().token_id)
    assert not is_token_id("")
    assert not is_token_id("A" * 15)
    assert not is_token_id("A" * 17)
    assert not is_token_id("AAAAAAAA-AAAAAAA")
    assert not is_token_id("AAAAAAAAAAAAAAA\u0430")


# -- parsing ----------------------------------------------------------------------------------


def test_parse_token_accepts_every_token_new_token_makes() -> None:
    for _ in range(500):
        token = new_token()
        assert parse_token(token.value) == ParsedToken(token.token_id, token.value)


def test_one_changed_character_fails_the_checksum_wherever_it_is() -> None:
    value = new_token().value
    for position in range(len(PREFIX), TOKEN_LENGTH):
        if value[position] == "_":
            continue
        changed = value[:position] + other_character(value[position]) + value[position + 1 :]
        assert parse_token(changed) is None, position


def test_every_substitute_for_one_secret_character_fails_the_checksum() -> None:
    value = new_token().value
    position = SECRET_START + 10
    for replacement in ALPHABET.replace(value[position], ""):
        assert parse_token(value[:position] + replacement + value[position + 1 :]) is None


def test_swapping_two_adjacent_characters_fails_the_checksum() -> None:
    value = new_token().value
    swapped = 0
    for position in range(SECRET_START, TOKEN_LENGTH - 1):
        first, second = value[position], value[position + 1]
        if first != second:
            swapped += 1
            changed = value[:position] + second + first + value[position + 2 :]
            assert parse_token(changed) is None, position
    assert swapped > 10


@pytest.mark.parametrize("prefix", ["tkb_", "TKA_", "tka-", "ghp_", "xtka"])
def test_a_wrong_prefix_is_refused_even_with_a_correct_checksum(prefix: str) -> None:
    value = new_token().value
    forged = with_checksum(prefix + value[len(PREFIX) : CHECKSUM_START])
    assert len(forged) == TOKEN_LENGTH
    assert parse_token(forged) is None


def test_a_missing_separator_is_refused_even_with_a_correct_checksum() -> None:
    value = new_token().value
    forged = with_checksum(value[: SECRET_START - 1] + "A" + value[SECRET_START:CHECKSUM_START])
    assert parse_token(forged) is None


def test_a_right_length_tka_value_with_a_bad_alphabet_is_refused() -> None:
    for body in [
        "tka_" + "-" * 16 + "_" + "+" * 43,
        "tka_" + "A" * 16 + "_" + "/" * 43,
        "tka_" + "A" * 15 + "=" + "_" + "B" * 43,
        "tka_" + "A" * 16 + "_" + "B" * 42 + ".",
    ]:
        candidate = with_checksum(body)
        assert len(candidate) == TOKEN_LENGTH
        assert parse_token(candidate) is None, candidate


def hostile_values() -> list[tuple[str, str]]:
    value = new_token().value
    middle = TOKEN_LENGTH // 2
    return [
        ("empty", ""),
        ("prefix only", "tka_"),
        ("one short", value[:-1]),
        ("one long", value + "0"),
        ("truncated checksum", value[:CHECKSUM_START]),
        ("doubled", value + value),
        ("leading space", " " + value),
        ("trailing space", value + " "),
        ("trailing newline", value + "\n"),
        ("space inside, same length", value[:middle] + " " + value[middle + 1 :]),
        ("tab inside, same length", value[:middle] + "\t" + value[middle + 1 :]),
        ("trailing NUL, same length", value[:-1] + "\x00"),
        ("NUL appended", value + "\x00"),
        ("NUL inside", value[:middle] + "\x00" + value[middle:]),
        ("all NULs", "\x00" * TOKEN_LENGTH),
        ("cyrillic a", value[:middle] + "\u0430" + value[middle + 1 :]),
        ("fullwidth zero", value[:middle] + "\uff10" + value[middle + 1 :]),
        ("arabic-indic digit", value[:middle] + "\u0661" + value[middle + 1 :]),
        ("kelvin sign", value[:middle] + "\u212a" + value[middle + 1 :]),
        ("fullwidth prefix", "\uff54\uff4b\uff41_" + value[4:]),
        ("zero width space", value[:middle] + "\u200b" + value[middle + 1 :]),
        ("emoji", "\U0001f511" * TOKEN_LENGTH),
        ("lone surrogate", value[:-1] + "\ud800"),
        ("upper-cased", value.upper()),
        ("one megabyte", "tka_" + "A" * 1_000_000),
        ("one megabyte of tokens", value * (1_000_000 // TOKEN_LENGTH)),
    ]


HOSTILE = hostile_values()


# Ids are the case names: the values hold random tokens, and xdist workers must agree on ids.
@pytest.mark.parametrize(("case", "value"), HOSTILE, ids=[case for case, _ in HOSTILE])
def test_hostile_input_is_refused_without_an_exception(case: str, value: str) -> None:
    assert parse_token(value) is None, case


# -- hashing ----------------------------------------------------------------------------------


def test_the_hasher_refuses_a_pepper_shorter_than_32_bytes() -> None:
    for pepper in [b"", b"x", bytes(31)]:
        with pytest.raises(ValueError, match="32 bytes"):
            SecretHasher(pepper)
    SecretHasher(bytes(32))


def test_the_hash_is_a_256_bit_digest_and_never_the_value() -> None:
    token = new_token()
    digest = SecretHasher(PEPPER).hash(token)
    assert len(digest) == 32
    assert token.value.encode() not in digest
    assert token.value[SECRET_START:CHECKSUM_START].encode() not in digest


def test_the_hash_is_stable_for_one_pepper_and_differs_with_another() -> None:
    token = new_token()
    assert SecretHasher(PEPPER).hash(token) == SecretHasher(PEPPER).hash(token)
    assert SecretHasher(PEPPER).hash(token) != SecretHasher(OTHER_PEPPER).hash(token)


def test_the_hash_depends_on_the_secret_not_only_on_the_id() -> None:
    hasher = SecretHasher(PEPPER)
    first = new_token()
    second = new_token(first.token_id)
    assert first.token_id == second.token_id
    assert hasher.hash(first) != hasher.hash(second)


def test_the_hash_covers_the_whole_value() -> None:
    hasher = SecretHasher(PEPPER)
    token = new_token()
    for position in (5, SECRET_START, TOKEN_LENGTH - 1):
        value = token.value[:position] + other_character(token.value[position])
        changed = ParsedToken(token.token_id, value + token.value[position + 1 :])
        assert hasher.hash(changed) != hasher.hash(token), position


def test_matches_is_true_only_for_the_token_that_was_hashed() -> None:
    hasher = SecretHasher(PEPPER)
    token = new_token()
    stored = hasher.hash(token)
    assert hasher.matches(token, stored)
    assert not hasher.matches(new_token(token.token_id), stored)
    assert not hasher.matches(new_token(), stored)
    assert not SecretHasher(OTHER_PEPPER).matches(token, stored)


def test_matches_is_false_for_a_truncated_or_empty_stored_hash() -> None:
    hasher = SecretHasher(PEPPER)
    token = new_token()
    stored = hasher.hash(token)
    assert not hasher.matches(token, stored[:-1])
    assert not hasher.matches(token, stored + b"\x00")
    assert not hasher.matches(token, b"")


@pytest.mark.parametrize("pepper_length", [32, 63, 64, 65, 200])
def test_the_hash_is_exactly_hmac_sha256_whatever_the_pepper_length(pepper_length: int) -> None:
    pepper = bytes(range(256))[:pepper_length]
    hasher = SecretHasher(pepper)
    for _ in range(20):
        token = new_token()
        expected = hmac.digest(pepper, token.value.encode("ascii"), "sha256")
        assert hasher.hash(token) == expected
