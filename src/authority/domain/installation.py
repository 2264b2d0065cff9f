"""The installation: its first administrator, the break-glass way back in, and the pepper check.

These run on the server host, from the CLI, with nothing but database access: that access is
the proof of authority, as it is for any operator who could edit the tables by hand.
"""

from __future__ import annotations

from authority.domain.clock import Clock
from authority.domain.errors import AlreadyExists, FailedPrecondition, NotFound, Reason, shown
from authority.domain.events import SYSTEM, Event, EventKind
from authority.domain.models import Principal, PrincipalKind, TokenRecord, check_principal_name
from authority.domain.ports import Store, Transaction
from authority.domain.token_format import SecretHasher, new_token
from authority.domain.tokens import IssuedToken, issued_event

PEPPER_FACT = "pepper_fingerprint"


class PepperMismatch(Exception):
    """This process's pepper is not the one the database's tokens were hashed with."""


class Installation:
    """Installation-wide use cases, each one unit of work under the global lock."""

    def __init__(self, store: Store, clock: Clock, hasher: SecretHasher) -> None:
        self._store = store
        self._clock = clock
        self._hasher = hasher

    def _global_token(
        self, tx: Transaction, name: str, label: str, description: str
    ) -> IssuedToken:
        token = new_token()
        record = TokenRecord(
            token_id=token.token_id,
            secret_hash=self._hasher.hash(token),
            organization=None,
            subject=name,
            label=label,
            description=description,
            scopes=("*",),
            created_at=self._clock(),
            expires_at=None,
            revoked_at=None,
            created_by=label,
        )
        tx.add_token(record)
        tx.record(issued_event(record, SYSTEM))
        return IssuedToken(record=record, secret=token.value)

    def bootstrap(self, name: str) -> IssuedToken:
        """Create the first global administrator and its all-powerful token, once."""
        check_principal_name(name, "name")

        def work(tx: Transaction) -> IssuedToken:
            tx.lock_global()
            if tx.any_global_admin():
                raise FailedPrecondition(
                    "a global administrator already exists; ask one for a token, or run "
                    "`authority break-glass` on the server host if every token is lost",
                    Reason.ALREADY_BOOTSTRAPPED,
                )
            if tx.get_principal(name) is not None:
                raise AlreadyExists(f"principal {shown(name)} already exists")
            principal = Principal(name, PrincipalKind.USER, True, self._clock())
            tx.add_principal(principal)
            tx.record(
                Event(
                    EventKind.PRINCIPAL_CREATED,
                    principal.created_at,
                    SYSTEM,
                    None,
                    name,
                    details={"kind": principal.kind.value, "global_admin": "true"},
                )
            )
            return self._global_token(tx, name, "bootstrap", "first global administrator")

        return self._store.run(work)

    def break_glass(self, name: str) -> IssuedToken:
        """A new global token for the existing global administrator `name`.

        For operators locked out (every administrator token lost or revoked). The caller logs
        that it happened; the token is recorded with `created_by` = `break-glass`.
        """
        check_principal_name(name, "name")

        def work(tx: Transaction) -> IssuedToken:
            tx.lock_global()
            principal = tx.get_principal(name)
            if principal is None or not principal.global_admin:
                raise NotFound(
                    f"{shown(name)} is not a global administrator of this installation "
                    "(see `authority bootstrap` for a new installation)",
                    Reason.PRINCIPAL_NOT_FOUND,
                )
            return self._global_token(
                tx, name, "break-glass", "issued on the server host by `authority break-glass`"
            )

        return self._store.run(work)

    def check_pepper(self) -> None:
        """Record the pepper's fingerprint on first use; refuse a pepper that differs.

        A replica with another pepper would hash every presented token differently and answer
        UNKNOWN for all of them while reporting SERVING: refusing to start is the kinder failure.
        """
        mine = self._hasher.fingerprint()

        def work(tx: Transaction) -> str:
            stored = tx.get_fact(PEPPER_FACT)
            if stored is None:
                tx.add_fact(PEPPER_FACT, mine)
                return mine
            return stored

        try:
            stored = self._store.run(work)
        except AlreadyExists:  # another process recorded it a moment ago: compare with that
            stored = self._store.run(work)
        if stored != mine:
            raise PepperMismatch(
                f"this process's pepper (fingerprint {mine[:12]}) is not the one this database "
                f"was first used with (fingerprint {stored[:12]}): every token would be "
                "refused. Set AUTHORITY_PEPPER_HEX (or AUTHORITY_PEPPER_FILE) to the pepper "
                "the other replicas use"
            )
