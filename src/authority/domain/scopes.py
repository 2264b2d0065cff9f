"""Scopes are permission strings; a token's scopes are compiled once into a matcher.

Grammar: dotted names such as `download` or `environment.control.StopEnv`; a trailing `.*`
grants everything below a prefix; `*` alone grants everything. A gRPC method name in its
wire form (`/authority.v1.TokenAuthority/IssueToken`) is accepted and normalised to the
dotted form, so `authority.v1.TokenAuthority.*` covers every TokenAuthority method.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from authority.domain.errors import InvalidArgument, shown

UPLOAD = "upload"
DOWNLOAD = "download"
PROFILES: dict[str, tuple[str, ...]] = {
    "all": (DOWNLOAD, UPLOAD),
    "upload-only": (UPLOAD,),
    "download-only": (DOWNLOAD,),
}
MAX_SCOPES = 64
MAX_SCOPE_LENGTH = 200

_SEGMENT = r"[A-Za-z_][A-Za-z0-9_-]*"
_PERMISSION_RE = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
_SCOPE_RE = re.compile(rf"\*|{_SEGMENT}(?:\.{_SEGMENT})*(?:\.\*)?")


def normalize(name: str) -> str:
    """`/pkg.Service/Method` -> `pkg.Service.Method`; anything else unchanged."""
    if name.startswith("/"):
        return name[1:].replace("/", ".")
    return name


def method_permission(full_method: str) -> str:
    """The permission a gRPC method requires of a bearer token."""
    return normalize(full_method)


def is_permission(name: str) -> bool:
    """Whether `name` (already normalised) is a concrete permission (no wildcard)."""
    return len(name) <= MAX_SCOPE_LENGTH and _PERMISSION_RE.fullmatch(name) is not None


def parse_scopes(requested: Iterable[str], profile: str | None) -> tuple[str, ...]:
    """Expand profiles, normalise and validate; sorted and without duplicates.

    Profile names are accepted in `requested` too. Nothing at all means the `all` profile.
    """
    scopes: set[str] = set()
    names = list(requested)
    if profile:
        names.append(profile)
    if not names:
        names.append("all")
    if len(names) > MAX_SCOPES:
        raise InvalidArgument("scopes", f"at most {MAX_SCOPES} scopes per token (got {len(names)})")
    for raw in names:
        name = normalize(raw.strip())
        if name in PROFILES:
            scopes.update(PROFILES[name])
        elif len(name) <= MAX_SCOPE_LENGTH and _SCOPE_RE.fullmatch(name):
            scopes.add(name)
        else:
            raise InvalidArgument(
                "scopes",
                f"{shown(raw)} is not a scope: use a profile (all, upload-only, download-only), "
                "a dotted method name such as environment.control.StopEnv, "
                "a prefix wildcard such as environment.control.*, or *",
            )
    return tuple(sorted(scopes))


@dataclass(frozen=True, slots=True)
class PermissionMatcher:
    """A token's scopes precompiled: exact set + prefix list, so a check parses nothing."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    allow_all: bool

    @classmethod
    def compile(cls, scopes: Iterable[str]) -> PermissionMatcher:
        """Build the matcher from stored (already normalised) scopes."""
        exact: set[str] = set()
        prefixes: list[str] = []
        allow_all = False
        for scope in scopes:
            if scope == "*":
                allow_all = True
            elif scope.endswith(".*"):
                prefixes.append(scope[:-1])  # keep the dot: `a.*` must not match `ab`
            else:
                exact.add(scope)
        return cls(frozenset(exact), tuple(prefixes), allow_all)

    def allows(self, permission: str) -> bool:
        """Whether a concrete, normalised permission is granted."""
        if permission in self.exact or self.allow_all:
            return True
        return any(permission.startswith(prefix) for prefix in self.prefixes)

    def covers(self, scope: str) -> bool:
        """Whether every permission `scope` grants is granted here too (for issuing tokens)."""
        if self.allow_all:
            return True
        if scope == "*":
            return False
        if scope.endswith(".*"):
            prefix = scope[:-1]
            return any(prefix.startswith(mine) for mine in self.prefixes)
        return self.allows(scope)
