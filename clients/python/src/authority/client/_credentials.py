"""Credentials for a backend job: an API key exchanged for short-lived access tokens.

The job holds a long-lived key; what it presents is an access token that lives minutes, so a
token seen in a log or a proxy is soon worthless. These objects do the bookkeeping: the first
use exchanges the key; a token within its margin of expiry (the smaller of a minute and a
third of its lifetime) is refreshed; a refresh the server refuses (past `refresh_until`, its
signing key gone) is answered by a new exchange; a key the server refuses raises
`Unauthenticated`. One renewal runs at a time: while the held token is still alive the other
callers keep using it, once it has expired they wait for the renewal.

    credentials = KeyExchangeCredentials("authority:50051", key=os.environ["API_KEY"])
    channel = grpc.secure_channel("storage:443", grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(), credentials.call_credentials()))

The key is sent to the authority only, in ExchangeKey; it is in no repr and no message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Self

import grpc

from authority.client._async_client import AsyncTokenAuthorityClient
from authority.client._client import TokenAuthorityClient
from authority.client._errors import (
    AuthorityClientError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from authority.client._models import AccessToken

# A token is renewed this long before it expires at most (a third of its lifetime if shorter).
MAX_RENEWAL_MARGIN = 60.0
# After a failed renewal, the live token is used without retrying for this long (at most half
# of what it has left), so that an outage of the authority does not slow every call.
RETRY_AFTER_FAILURE = 5.0
# What a refused refresh means: the token is past its window, its signing key is gone, or the
# key's scopes narrowed. The key may still be good: exchange it again.
_REFRESH_REFUSED = (Unauthenticated, PermissionDenied)
# What a refused exchange means: the key itself is no good. A token held from it is dropped.
_KEY_REFUSED = (Unauthenticated, PermissionDenied)


def renewal_margin(lifetime: float) -> float:
    """How long before expiry a token of `lifetime` seconds is renewed."""
    return min(MAX_RENEWAL_MARGIN, max(0.0, lifetime) / 3)


@dataclass(frozen=True, slots=True)
class _Held:
    """A token with its deadlines on the credentials' clock (seconds since the epoch)."""

    token: AccessToken
    renew_at: float
    expires_at: float
    refresh_until: float

    @classmethod
    def of(cls, token: AccessToken, now: float) -> _Held:
        expires_at = token.expires_at.timestamp()
        # No window given: try a refresh anyway, the server says when it is over.
        refresh_until = token.refresh_until.timestamp() if token.refresh_until else math.inf
        return cls(token, expires_at - renewal_margin(expires_at - now), expires_at, refresh_until)

    def fresh(self, now: float) -> bool:
        return now < self.renew_at

    def alive(self, now: float) -> bool:
        return now < self.expires_at

    def refreshable(self, now: float) -> bool:
        return now < self.refresh_until


def _retry_at(error: AuthorityClientError, held: _Held, now: float) -> float:
    """When to try again after a failed renewal while `held` is alive."""
    delay = min(RETRY_AFTER_FAILURE, (held.expires_at - now) / 2)
    if isinstance(error, ResourceExhausted) and error.retry_delay is not None:
        delay = max(delay, error.retry_delay.total_seconds())
    return now + delay


def _check(target: str | None, key: str | None, channel: object, scopes: Sequence[str]) -> str:
    if not key:
        raise TypeError("the API key is required (key=...)")
    if (target is None) == (channel is None):
        raise TypeError("give the authority's target or a channel to it: one of the two")
    if isinstance(scopes, str):
        raise TypeError("scopes must be a sequence of permission strings, not a str")
    return key


class _BearerPlugin(grpc.AuthMetadataPlugin):
    """Adds `authorization: Bearer <access token>` to each call. Runs on a gRPC thread: a
    failure is reported to the call through the callback, never raised there."""

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            value = self._token()
        except Exception as error:
            callback((), error)
            return
        callback((("authorization", f"Bearer {value}"),), None)


class KeyExchangeCredentials:
    """An API key, exchanged for access tokens kept fresh; thread-safe.

    Give the authority's `target` (with `credentials` for TLS) or a `channel` to it (left
    open on `close()`); the channel must not carry these credentials itself. `scopes`,
    `audience` and `ttl` are those of `TokenAuthorityClient.exchange_key`. `clock` is the wall
    clock expiry is judged by.

        with KeyExchangeCredentials("authority:50051", key=api_key) as credentials:
            metadata = (("authorization", f"Bearer {credentials.token()}"),)
    """

    def __init__(
        self,
        target: str | None = None,
        key: str | None = None,
        *,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        scopes: Sequence[str] = (),
        audience: str = "",
        ttl: timedelta | None = None,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = _check(target, key, channel, scopes)
        self._target = target
        self._client = TokenAuthorityClient(
            target or "", channel=channel, credentials=credentials, timeout=timeout
        )
        self._scopes = tuple(scopes)
        self._audience = audience
        self._ttl = ttl
        self._clock = clock
        self._held: _Held | None = None
        self._retry_at = 0.0
        self._renewing = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"KeyExchangeCredentials(target={self._target!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel if these credentials opened it; the held token is forgotten."""
        self._closed = True
        self._held = None
        self._client.close()

    def token(self) -> str:
        """A live access token's value, for `authorization: Bearer ...`."""
        return self.access_token().access_token

    def access_token(self) -> AccessToken:
        """A live access token (its `token_id` is safe to log), renewed when due.

        Raises `Unauthenticated` when the key is refused, and the client error of a failed
        renewal when there is no live token to fall back on.
        """
        if self._closed:
            raise RuntimeError("these credentials are closed")
        held, now = self._held, self._clock()
        if held is not None and held.alive(now) and (held.fresh(now) or now < self._retry_at):
            return held.token
        if held is not None and held.alive(now):
            # Renewal is due but the token still works: whoever renews, the others go on.
            if not self._renewing.acquire(blocking=False):
                return held.token
        else:
            self._renewing.acquire()
        try:
            return self._renew().token
        finally:
            self._renewing.release()

    def call_credentials(self) -> grpc.CallCredentials:
        """gRPC call credentials presenting a live access token on every call (on a secure
        or local channel, as gRPC requires; blocking and `grpc.aio` channels alike). A failed
        renewal fails the call (UNAVAILABLE, the client error's message)."""
        return grpc.metadata_call_credentials(_BearerPlugin(self.token), "KeyExchangeCredentials")

    def _renew(self) -> _Held:
        """Called with `_renewing` held."""
        held, now = self._held, self._clock()
        if held is not None and held.fresh(now):
            return held  # renewed by the caller this one waited for
        try:
            renewed = self._renewed(held, now)
        except _KEY_REFUSED:
            self._held = None
            raise
        except AuthorityClientError as error:
            now = self._clock()
            if held is None or not held.alive(now):
                raise
            self._retry_at = _retry_at(error, held, now)
            return held
        self._held, self._retry_at = renewed, 0.0
        return renewed

    def _renewed(self, held: _Held | None, now: float) -> _Held:
        if held is not None and held.refreshable(now):
            try:
                token = self._client.refresh_token(held.token.access_token)
                return _Held.of(token, self._clock())
            except _REFRESH_REFUSED:
                pass
        token = self._client.exchange_key(
            self._key, scopes=self._scopes, ttl=self._ttl, audience=self._audience
        )
        return _Held.of(token, self._clock())


class _AsyncBearerPlugin(grpc.AuthMetadataPlugin):
    """The bearer plugin for `AsyncKeyExchangeCredentials`: gRPC calls it on a thread of its
    own, the renewal runs on the credentials' event loop, and the callback is answered when
    it is done (the gRPC thread never waits)."""

    def __init__(
        self, credentials: AsyncKeyExchangeCredentials, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._credentials = credentials
        self._loop = loop

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        def answer(future: concurrent.futures.Future[str]) -> None:
            try:
                value = future.result()
            except Exception as error:
                callback((), error)
                return
            callback((("authorization", f"Bearer {value}"),), None)

        try:
            future = asyncio.run_coroutine_threadsafe(self._credentials.token(), self._loop)
        except RuntimeError as error:  # the loop is closed
            callback((), error)
            return
        future.add_done_callback(answer)


class AsyncKeyExchangeCredentials:
    """`KeyExchangeCredentials` for asyncio code: create and use it inside the event loop.

        async with AsyncKeyExchangeCredentials("authority:50051", key=api_key) as credentials:
            token = await credentials.token()

    `channel` is a `grpc.aio.Channel` here; `call_credentials()` works on `grpc.aio` and on
    blocking channels (the renewal runs on this loop).
    """

    def __init__(
        self,
        target: str | None = None,
        key: str | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        scopes: Sequence[str] = (),
        audience: str = "",
        ttl: timedelta | None = None,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = _check(target, key, channel, scopes)
        self._target = target
        self._client = AsyncTokenAuthorityClient(
            target or "", channel=channel, credentials=credentials, timeout=timeout
        )
        self._scopes = tuple(scopes)
        self._audience = audience
        self._ttl = ttl
        self._clock = clock
        self._held: _Held | None = None
        self._retry_at = 0.0
        self._renewing = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"AsyncKeyExchangeCredentials(target={self._target!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel if these credentials opened it; the held token is forgotten."""
        self._closed = True
        self._held = None
        await self._client.close()

    async def token(self) -> str:
        """See `KeyExchangeCredentials.token`."""
        return (await self.access_token()).access_token

    async def access_token(self) -> AccessToken:
        """See `KeyExchangeCredentials.access_token`."""
        if self._closed:
            raise RuntimeError("these credentials are closed")
        held, now = self._held, self._clock()
        # Renewal is due but the token still works: whoever renews, the others go on.
        due = held is None or not (held.fresh(now) or now < self._retry_at)
        if held is not None and held.alive(now) and (not due or self._renewing.locked()):
            return held.token
        async with self._renewing:
            return (await self._renew()).token

    def call_credentials(self) -> grpc.CallCredentials:
        """See `KeyExchangeCredentials.call_credentials`; call it inside the event loop."""
        plugin = _AsyncBearerPlugin(self, asyncio.get_running_loop())
        return grpc.metadata_call_credentials(plugin, "AsyncKeyExchangeCredentials")

    async def _renew(self) -> _Held:
        """Called with `_renewing` held."""
        held, now = self._held, self._clock()
        if held is not None and held.fresh(now):
            return held
        try:
            renewed = await self._renewed(held, now)
        except _KEY_REFUSED:
            self._held = None
            raise
        except AuthorityClientError as error:
            now = self._clock()
            if held is None or not held.alive(now):
                raise
            self._retry_at = _retry_at(error, held, now)
            return held
        self._held, self._retry_at = renewed, 0.0
        return renewed

    async def _renewed(self, held: _Held | None, now: float) -> _Held:
        if held is not None and held.refreshable(now):
            try:
                token = await self._client.refresh_token(held.token.access_token)
                return _Held.of(token, self._clock())
            except _REFRESH_REFUSED:
                pass
        token = await self._client.exchange_key(
            self._key, scopes=self._scopes, ttl=self._ttl, audience=self._audience
        )
        return _Held.of(token, self._clock())
