"""The asyncio client: the blocking client's validation, token and key-exchange calls on
grpc.aio.

Requests and results go through the same `_convert` functions as the blocking client, so the
two differ only in awaiting the call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self, TypeVar

import grpc

from authority.client import _convert
from authority.client._convert import BatchItem
from authority.client._errors import error_from_rpc
from authority.client._models import (
    AccessToken,
    IssuedToken,
    ScopeProfile,
    Token,
    ValidationResult,
)
from authority.v1 import token_authority_pb2 as pb
from authority.v1 import token_authority_pb2_grpc

Request = TypeVar("Request")
Response = TypeVar("Response")


class AsyncTokenAuthorityClient:
    """An asyncio client of the Token Authority; create it inside the running event loop.

        async with AsyncTokenAuthorityClient("127.0.0.1:50051") as client:
            result = await client.validate(presented, "download")

    Arguments and errors are those of `TokenAuthorityClient`; `channel` is a
    `grpc.aio.Channel` here.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        channel: grpc.aio.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._owns_channel = channel is None
        if channel is None:
            channel = (
                grpc.aio.secure_channel(target, credentials)
                if credentials is not None
                else grpc.aio.insecure_channel(target)
            )
        self._channel = channel
        self._tokens = token_authority_pb2_grpc.TokenAuthorityStub(channel)
        self._bearer = _convert.bearer_metadata(token)
        self._timeout = timeout

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
        """Close the channel if the client opened it."""
        if self._owns_channel:
            await self._channel.close()

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Request, Response],
        request: Request,
        *,
        authenticated: bool = True,
    ) -> Response:
        try:
            return await method(
                request, timeout=self._timeout, metadata=self._bearer if authenticated else None
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error

    async def validate(self, token: str, permission: str = "") -> ValidationResult:
        """See `TokenAuthorityClient.validate`."""
        response = await self._call(
            self._tokens.Validate,
            _convert.validate_request(token, permission),
            authenticated=False,
        )
        return _convert.validation_result(response)

    async def validate_batch(self, items: Iterable[BatchItem]) -> list[ValidationResult]:
        """See `TokenAuthorityClient.validate_batch`."""
        response = await self._call(
            self._tokens.ValidateBatch, _convert.batch_request(items), authenticated=False
        )
        return _convert.validation_results(response)

    async def exchange_key(
        self,
        key: str,
        *,
        scopes: Sequence[str] = (),
        ttl: timedelta | None = None,
        audience: str = "",
    ) -> AccessToken:
        """See `TokenAuthorityClient.exchange_key`."""
        request = _convert.exchange_request(key, scopes, ttl, audience)
        response = await self._call(self._tokens.ExchangeKey, request, authenticated=False)
        return _convert.access_token(response)

    async def refresh_token(self, access_token: str) -> AccessToken:
        """See `TokenAuthorityClient.refresh_token`."""
        request = pb.RefreshTokenRequest(access_token=access_token)
        response = await self._call(self._tokens.RefreshToken, request, authenticated=False)
        return _convert.access_token(response)

    async def signing_keys(self) -> str:
        """See `TokenAuthorityClient.signing_keys`."""
        request = pb.GetSigningKeysRequest()
        response = await self._call(self._tokens.GetSigningKeys, request, authenticated=False)
        return response.jwks_json

    async def issue_token(
        self,
        organization: str,
        label: str,
        *,
        scopes: Sequence[str] = (),
        scope_profile: ScopeProfile | str | None = None,
        subject: str = "",
        description: str = "",
        ttl: timedelta | None = None,
        expires_at: datetime | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> IssuedToken:
        """See `TokenAuthorityClient.issue_token`."""
        request = _convert.issue_request(
            organization,
            label,
            scopes=scopes,
            scope_profile=scope_profile,
            subject=subject,
            description=description,
            ttl=ttl,
            expires_at=expires_at,
            properties=properties,
        )
        return _convert.issued_token(await self._call(self._tokens.IssueToken, request))

    async def get_token(self, token_id: str) -> Token:
        """See `TokenAuthorityClient.get_token`."""
        request = pb.GetTokenRequest(token_id=token_id)
        return _convert.token(await self._call(self._tokens.GetToken, request))

    async def revoke_token(self, token_id: str) -> Token:
        """See `TokenAuthorityClient.revoke_token`."""
        request = pb.RevokeTokenRequest(token_id=token_id)
        return _convert.token(await self._call(self._tokens.RevokeToken, request))
