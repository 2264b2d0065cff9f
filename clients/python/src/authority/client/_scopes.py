"""Whether a token's scopes grant a permission, as the service decides it (for offline checks).

The grammar is the service's: dotted names (`download`, `environment.control.StopEnv`), a
trailing `.*` granting everything below a prefix, `*` granting everything; a gRPC method in
its wire form (`/pkg.Service/Method`) is the dotted name `pkg.Service.Method`. A token's scopes
are already normalised by the service; a permission asked about is not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_SCOPE_LENGTH = 200
_SEGMENT = r"[A-Za-z_][A-Za-z0-9_-]*"
_PERMISSION_RE = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")


def normalize(name: str) -> str:
    """`/pkg.Service/Method` -> `pkg.Service.Method`; anything else unchanged."""
    if name.startswith("/"):
        return name[1:].replace("/", ".")
    return name


def is_permission(name: str) -> bool:
    """Whether `name` (normalised) is a concrete permission: no wildcard, well formed."""
    return len(name) <= MAX_SCOPE_LENGTH and _PERMISSION_RE.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class ScopeMatcher:
    """A token's scopes compiled once: the exact names, the `prefix.` of each `prefix.*`."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    allow_all: bool

    @classmethod
    def compile(cls, scopes: Iterable[str]) -> ScopeMatcher:
        exact: set[str] = set()
        prefixes: list[str] = []
        allow_all = False
        for scope in scopes:
            if scope == "*":
                allow_all = True
            elif scope.endswith(".*"):
                prefixes.append(scope[:-1])  # keep the dot: `a.*` must not grant `ab`
            else:
                exact.add(scope)
        return cls(frozenset(exact), tuple(prefixes), allow_all)

    def allows(self, permission: str) -> bool:
        """Whether a concrete, normalised permission is granted."""
        if self.allow_all or permission in self.exact:
            return True
        return any(permission.startswith(prefix) for prefix in self.prefixes)
