"""What both servicers share: authentication and running domain calls off the event loop."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import grpc

from authority.api.errors import ScopeMissing, peer_of
from authority.cache.feed import EventListener
from authority.cache.validator import Validator
from authority.domain.access import caller_from_entry
from authority.domain.audit import AuditService, Refusal
from authority.domain.errors import PermissionDenied, Unauthenticated
from authority.domain.errors import Reason as ErrorReason
from authority.domain.exchange import AccessTokens
from authority.domain.organizations import OrganizationService
from authority.domain.policy import Caller
from authority.domain.signing import SigningKeys
from authority.domain.tokens import TokenService
from authority.domain.validation import Reason
from authority.domain.watch import EventWatch

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger("authority.audit")
# How long a refused call waits at most for its audit row (a store that hangs must not hold
# the refusal's answer; the row may still be written afterwards).
REFUSAL_RECORD_TIMEOUT = 2.0

_REFUSALS = {
    Reason.MALFORMED: (
        "the bearer token is malformed: expected a tka_... token",
        ErrorReason.TOKEN_MALFORMED,
    ),
    Reason.UNKNOWN: ("the bearer token is not known to this service", ErrorReason.TOKEN_UNKNOWN),
    Reason.EXPIRED: (
        "the bearer token has expired: ask for a new one",
        ErrorReason.TOKEN_EXPIRED,
    ),
    Reason.REVOKED: (
        "the bearer token was revoked: ask for a new one",
        ErrorReason.TOKEN_REVOKED,
    ),
}


class Runtime:
    """Built once by server.py and handed to every servicer."""

    def __init__(
        self,
        tokens: TokenService,
        organizations: OrganizationService,
        validator: Validator,
        executor: ThreadPoolExecutor,
        batch_max: int,
        audit: AuditService,
        *,
        watch: EventWatch,
        event_listeners: list[EventListener],
        signing: SigningKeys,
        access_tokens: AccessTokens,
    ) -> None:
        self.tokens = tokens
        self.organizations = organizations
        self.validator = validator
        self.executor = executor
        self.batch_max = batch_max
        self.audit = audit
        self.watch = watch
        # The change feed's: called on the loop with every batch of events this process
        # applies (WatchEvents streams wake on them).
        self.event_listeners = event_listeners
        self.signing = signing
        self.access_tokens = access_tokens

    async def run(self, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run blocking domain/store code in the bounded database thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, functools.partial(function, *args, **kwargs)
        )

    async def authenticate(
        self, context: grpc.aio.ServicerContext[Any, Any], permission: str, request_id: str = ""
    ) -> Caller:
        """The caller behind `authorization: Bearer <token>`, checked for the called method.

        Uses the same Validator as Validate, so a revoked bearer stops working at once.
        """
        value = ""
        for key, item in context.invocation_metadata() or ():
            if key == "authorization":
                value = item if isinstance(item, str) else item.decode("ascii", "replace")
                break
        scheme, _, credential = value.partition(" ")
        if not value:
            raise Unauthenticated(
                "missing credentials: send metadata `authorization: Bearer <token>`"
            )
        if scheme.lower() != "bearer" or not credential.strip():
            raise Unauthenticated("the authorization metadata must read `Bearer <token>`")
        verdict = await self.validator.validate(credential.strip(), permission)
        if verdict.entry is not None and verdict.entry.parent:
            # Access tokens are for Validate (and the services behind it); management calls
            # act on the store, under the key's own row lock: they take the key itself.
            raise Unauthenticated(
                "management calls take an API key (tka_...), not an access token",
                ErrorReason.TOKEN_MALFORMED,
            )
        if verdict.reason is Reason.PERMISSION_DENIED and verdict.entry is not None:
            raise ScopeMissing(
                f"the bearer token's scopes do not allow {permission}",
                caller_from_entry(verdict.entry, peer_of(context), request_id),
            )
        if verdict.reason is Reason.PERMISSION_DENIED:
            raise PermissionDenied(
                f"the bearer token's scopes do not allow {permission}", ErrorReason.SCOPE_MISSING
            )
        if not verdict.valid or verdict.entry is None:
            message, reason = _REFUSALS.get(
                verdict.reason, ("the bearer token is not valid", ErrorReason.TOKEN_UNKNOWN)
            )
            raise Unauthenticated(message, reason)
        return caller_from_entry(verdict.entry, peer_of(context), request_id)

    async def record_refusal(self, refusal: Refusal) -> None:
        """Put a refused management call in the audit trail, in a unit of work of its own,
        unless its organisation's allowance is spent. Never fails, and waits for a hanging
        store at most REFUSAL_RECORD_TIMEOUT: the refusal is answered whatever happens here."""
        try:
            event = self.audit.admit(refusal)
            if event is not None:
                async with asyncio.timeout(REFUSAL_RECORD_TIMEOUT):
                    await self.run(self.audit.record, event)
        except Exception as error:
            # Only the class: a driver's message may quote the statement's parameters.
            log.warning(
                "audit: a refused call was not recorded (%s)",
                type(error).__name__,
                extra={"rpc_method": refusal.method, "request_id": refusal.initiator.request_id},
            )
