"""Guards on security choices that a refactor could otherwise drop without any test noticing.

- Token ids and secrets come from `secrets` (the OS CSPRNG), never from `random`.
- The stored hash is compared in constant time (`hmac.compare_digest`).
- ruff's S311 (non-cryptographic `random`) stays on for the service and the client.
"""

from __future__ import annotations

import ast
import hmac
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from authority.domain import token_format
from authority.domain.token_format import (
    ALPHABET,
    ID_LENGTH,
    SecretHasher,
    new_token,
    parse_token,
)

REPOSITORY = Path(__file__).resolve().parents[2]
GUARDED = [REPOSITORY / "src" / "authority", REPOSITORY / "clients/python/src/authority/client"]
RUFF = Path(sys.executable).parent / "ruff"


def _modules() -> list[Path]:
    modules = sorted(path for root in GUARDED for path in root.rglob("*.py"))
    assert len(modules) > 20, modules  # the walk found the code, not an empty directory
    return modules


def _imported(module: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text(), str(module))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_module_of_the_service_or_the_client_imports_random() -> None:
    offenders = {
        str(module.relative_to(REPOSITORY)): sorted(imported)
        for module in _modules()
        if (imported := {name for name in _imported(module) if name.split(".")[0] == "random"})
    }

    assert offenders == {}


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[Any]:
    """Wrap secrets.<name> so that calls through it are recorded (and still random)."""
    calls: list[Any] = []
    real: Callable[..., Any] = getattr(secrets, name)

    def counted(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(secrets, name, counted)
    return calls


def test_new_token_draws_its_secret_and_its_id_from_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token_bytes = _counting(monkeypatch, "token_bytes")

    token = new_token()

    assert parse_token(token.value) == token
    # The id (16 of 24 bytes kept: rejection sampling), then 256 bits for the secret.
    assert token_bytes == [(ID_LENGTH + 8,), (32,)]


def test_the_secret_and_id_are_exactly_what_secrets_returned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With `secrets` pinned, the token is pinned: nothing else feeds it.
    monkeypatch.setattr(secrets, "token_bytes", lambda size: b"\x00" * size)

    first, second = new_token(), new_token()

    assert first == second
    assert first.token_id == ALPHABET[0] * ID_LENGTH
    _, _, secret_and_checksum = first.value.split("_")
    assert secret_and_checksum[: token_format.SECRET_LENGTH] == "0" * token_format.SECRET_LENGTH


def test_the_hasher_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    hasher = SecretHasher(b"p" * 32)
    token, other = new_token(), new_token()
    stored = hasher.hash(token)
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)

    assert hasher.matches(token, stored) is True
    assert hasher.matches(other, stored) is False
    assert calls == [(stored, stored), (hasher.hash(other), stored)]


@pytest.mark.parametrize(
    "path", ["src/authority/domain/example.py", "clients/python/src/authority/client/example.py"]
)
def test_ruff_flags_non_cryptographic_random_in_the_service_and_the_client(path: str) -> None:
    code = 'import random\n\nTOKEN_ID = "".join(random.choice("ab") for _ in range(16))\n'

    completed = subprocess.run(
        [str(RUFF), "check", "--no-cache", "--stdin-filename", path, "-"],
        cwd=REPOSITORY,
        input=code,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "S311" in completed.stdout
