"""Typed settings: environment variables (AUTHORITY_*), overridable by CLI flags."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE_URL = "sqlite:///var/authority.db"
SERVERS = ("grpcio", "thin")


class SettingsError(ValueError):
    """A setting has a value the service cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable, built once at start and passed to what needs it."""

    listen: str = DEFAULT_LISTEN
    database_url: str = DEFAULT_DATABASE_URL
    log_level: str = "INFO"
    # Hex; when empty, the pepper is read from (or first written to) pepper_file.
    pepper_hex: str = ""
    pepper_file: Path = Path("var/pepper")
    cache_max_entries: int = 100_000
    cache_max_staleness_seconds: float = 30.0
    negative_cache_entries: int = 10_000
    negative_cache_ttl_seconds: float = 5.0
    # Verified access tokens Validate keeps (by their whole value, up to 4 KB each, apart from
    # the key entries: every refresh mints a new one, and they must not crowd the keys out).
    # A miss costs a signature check, never a store read. 0: verify every time.
    access_token_cache_entries: int = 10_000
    validate_batch_max: int = 1000
    # How often each process reads the change log (on PostgreSQL, NOTIFY wakes it at once and
    # this is the safety net, 20 times slower). 0 turns the feed off: other processes' changes
    # are then seen only within the cache staleness bound.
    feed_poll_seconds: float = 0.05
    database_threads: int = 4
    # Audit events older than this are deleted (0 keeps them forever), checked every interval.
    # WatchEvents consumers can resume only within it.
    audit_retention_days: int = 365
    audit_retention_interval_seconds: float = 3600.0
    # `serve`: how many server processes share the listen address (SO_REUSEPORT), each with
    # its own cache kept coherent by the change feed.
    workers: int = 1
    # How often each server records the expiries that came due (token.expired, and
    # token.expiring once a token is within the warning window) in the change log; each is
    # recorded once however many replicas sweep. 0 turns the sweep off; 0 warning: no warning.
    expiry_sweep_seconds: float = 1.0
    expiry_warning_seconds: float = 86400.0
    # Signed access tokens (issue 9): the longest lifetime one may have, and how long after
    # its issue an (even expired) access token may be refreshed. A retired signing key stays
    # published for both together after its retirement: until every token it signed is dead.
    access_token_max_ttl_seconds: int = 900
    # The `iss` of access tokens (and what Validate and RefreshToken require of them).
    issuer: str = "token-authority"
    refresh_window_seconds: int = 86400
    # Rotate the signing key once it is this old (0: only by hand, `authority keys rotate` or
    # Admin/RotateSigningKey). Each process checks every tenth of it (at most every minute).
    signing_key_rotation_seconds: float = 0.0
    # `serve`: "thin" puts Envoy in front, which serves the hot methods (Validate,
    # ValidateBatch, ValidateStream, RefreshToken) on the thin path at a fraction of the CPU
    # and hands the rest to grpcio (thin_server.py, README); "grpcio", the fallback, serves
    # every method on grpcio.aio in one Python process.
    server: str = "thin"
    # uvloop cuts the per-call cost of the gRPC server by about a tenth (see README).
    event_loop: str = "uvloop"

    def __post_init__(self) -> None:
        if self.server not in SERVERS:
            raise SettingsError(f"AUTHORITY_SERVER={self.server!r}: use {' or '.join(SERVERS)}")
        for name, (lowest, highest) in _BOUNDS.items():
            value = getattr(self, name)
            if not lowest <= value <= highest:
                raise SettingsError(
                    f"AUTHORITY_{name.upper()}={value!r} is out of range: "
                    f"use {_shown(lowest)} to {_shown(highest)}"
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read AUTHORITY_<FIELD> for every field, e.g. AUTHORITY_DATABASE_URL."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(f"AUTHORITY_{field.name.upper()}")
            if raw is not None and raw != "":
                values[field.name] = _coerce(field.name, field.type, raw)
        return cls(**values)

    def replace(self, **overrides: Any) -> Settings:
        """A copy with the given fields changed; None values are ignored (unset CLI flags)."""
        return dataclasses.replace(
            self, **{name: value for name, value in overrides.items() if value is not None}
        )

    def load_pepper(self) -> bytes:
        """The HMAC key for token hashes. Created (mode 600) on first use if none is set.

        Every replica sharing a database must use the same pepper: set AUTHORITY_PEPPER_HEX.
        """
        if self.pepper_hex:
            try:
                pepper = bytes.fromhex(self.pepper_hex)
            except ValueError as error:
                raise SettingsError("AUTHORITY_PEPPER_HEX is not hexadecimal") from error
            if len(pepper) < 32:
                raise SettingsError("AUTHORITY_PEPPER_HEX must hold at least 32 bytes")
            return pepper
        path = self.pepper_file
        if not path.exists():
            _create_pepper_file(path)
        try:
            pepper = bytes.fromhex(path.read_text().strip())
        except ValueError as error:
            raise SettingsError(f"{path} is not hexadecimal: fix or remove it") from error
        if len(pepper) < 32:
            raise SettingsError(f"{path} must hold at least 32 bytes of hex")
        return pepper


_DAY = 86_400.0
# What each number may be. Lifetimes and windows are capped so that every time they add up
# to stays a date (a year-10000 expiry is an error, not a token), and the access token's at a
# day: it is meant to be short-lived.
_BOUNDS: dict[str, tuple[float, float]] = {
    "cache_max_entries": (0, 100_000_000),
    "cache_max_staleness_seconds": (0, 365 * _DAY),
    "negative_cache_entries": (0, 100_000_000),
    "negative_cache_ttl_seconds": (0, _DAY),
    "access_token_cache_entries": (0, 100_000_000),
    "validate_batch_max": (1, 100_000),
    "feed_poll_seconds": (0, 3600),
    "database_threads": (1, 1024),
    "audit_retention_days": (0, 100 * 365),
    "audit_retention_interval_seconds": (0.01, 365 * _DAY),
    "workers": (1, 1024),
    "expiry_sweep_seconds": (0, _DAY),
    "expiry_warning_seconds": (0, 365 * _DAY),
    "access_token_max_ttl_seconds": (1, _DAY),
    "refresh_window_seconds": (0, 366 * _DAY),
    "signing_key_rotation_seconds": (0, 10 * 365 * _DAY),
}


def _shown(number: float) -> str:
    return f"{number:,.0f}" if float(number).is_integer() else f"{number:g}"


def _create_pepper_file(path: Path) -> None:
    """Write a new pepper beside `path`, then link it into place: processes starting at once
    (replicas, workers) all end up reading the one that won, never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
        with contextlib.suppress(FileExistsError):  # another process's pepper won
            os.link(draft, path)
    finally:
        draft.unlink()


def _coerce(name: str, kind: Any, raw: str) -> Any:
    kind = kind if isinstance(kind, str) else kind.__name__
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
    except ValueError as error:
        raise SettingsError(f"AUTHORITY_{name.upper()}={raw!r} is not a valid {kind}") from error
    return raw
