"""The blocking client: one channel, typed methods, one exception hierarchy."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
    Membership,
    Organization,
    Principal,
    PrincipalKind,
    Role,
    ScopeProfile,
    Token,
    ValidationResult,
)
from authority.v1 import admin_pb2, admin_pb2_grpc, token_authority_pb2_grpc
from authority.v1 import token_authority_pb2 as pb

Request = TypeVar("Request")
Response = TypeVar("Response")
Item = TypeVar("Item")


class TokenAuthorityClient:
    """A blocking client of the Token Authority.

    `token` is the bearer for management calls (issue, list, revoke, admin); Validate needs
    none and never sends it. Each call fails after `timeout` seconds. Pass `channel` to reuse a
    channel you configured yourself (TLS, interceptors, options); the client then leaves it
    open on `close()`. Otherwise `credentials` selects TLS and no credentials means plaintext.

        with TokenAuthorityClient("127.0.0.1:50051") as client:
            if client.validate(presented, "download").valid:
                ...
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._owns_channel = channel is None
        if channel is None:
            channel = (
                grpc.secure_channel(target, credentials)
                if credentials is not None
                else grpc.insecure_channel(target)
            )
        self._channel = channel
        self._tokens = token_authority_pb2_grpc.TokenAuthorityStub(channel)
        self._admin = admin_pb2_grpc.AdminStub(channel)
        self._bearer = _convert.bearer_metadata(token)
        self._timeout = timeout

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
        """Close the channel if the client opened it."""
        if self._owns_channel:
            self._channel.close()

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[Request, Response],
        request: Request,
        *,
        authenticated: bool = True,
    ) -> Response:
        try:
            return method(
                request, timeout=self._timeout, metadata=self._bearer if authenticated else None
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error

    # -- validation ------------------------------------------------------------------------

    def validate(self, token: str, permission: str = "") -> ValidationResult:
        """Is `token` alive and, when `permission` is given, does it hold it?

        A refusal is an answer (`valid=False` and a `reason`), not an exception; exceptions
        mean the question could not be answered (e.g. `Unavailable`).
        """
        response = self._call(
            self._tokens.Validate,
            _convert.validate_request(token, permission),
            authenticated=False,
        )
        return _convert.validation_result(response)

    def validate_batch(self, items: Iterable[BatchItem]) -> list[ValidationResult]:
        """Validate many tokens in one round trip; one result per item, in order.

        Each item is a token (is it alive?) or a `(token, permission)` pair.
        """
        response = self._call(
            self._tokens.ValidateBatch, _convert.batch_request(items), authenticated=False
        )
        return _convert.validation_results(response)

    # -- key exchange ----------------------------------------------------------------------

    def exchange_key(
        self,
        key: str,
        *,
        scopes: Sequence[str] = (),
        ttl: timedelta | None = None,
        audience: str = "",
    ) -> AccessToken:
        """A short-lived signed access token for the API key `key` (the credential: no bearer).

        `scopes` narrows the key's scopes (never widens them); `ttl` is capped by the server's
        maximum and the key's expiry (None: the maximum); `audience` is the `aud` claim
        (empty: the issuer). A refused key raises `Unauthenticated`; repeated failures
        `ResourceExhausted` with `retry_delay`. For a job, `KeyExchangeCredentials` does this
        and the refreshing.
        """
        request = _convert.exchange_request(key, scopes, ttl, audience)
        response = self._call(self._tokens.ExchangeKey, request, authenticated=False)
        return _convert.access_token(response)

    def refresh_token(self, access_token: str) -> AccessToken:
        """A new access token with the same claims and a new expiry. The one presented may
        have expired; `Unauthenticated` once its key is revoked or expired, or past its
        `refresh_until` (then exchange the key again)."""
        request = pb.RefreshTokenRequest(access_token=access_token)
        response = self._call(self._tokens.RefreshToken, request, authenticated=False)
        return _convert.access_token(response)

    def signing_keys(self) -> str:
        """The published public keys as a JWK set document (`{"keys": [...]}`): what verifies
        access tokens offline (see `OfflineVerifier`)."""
        request = pb.GetSigningKeysRequest()
        return self._call(self._tokens.GetSigningKeys, request, authenticated=False).jwks_json

    # -- tokens ----------------------------------------------------------------------------

    def issue_token(
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
        """Create a token in `organization`; the secret is in the result and nowhere else.

        No scopes and no profile means the `all` profile. Without `ttl` or `expires_at`
        the token never expires. A token can never hold more than the bearer's own token.
        """
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
        return _convert.issued_token(self._call(self._tokens.IssueToken, request))

    def get_token(self, token_id: str) -> Token:
        """One token by id (never its secret)."""
        return _convert.token(
            self._call(self._tokens.GetToken, pb.GetTokenRequest(token_id=token_id))
        )

    def list_tokens(
        self, organization: str, include_revoked: bool = False, *, page_size: int = 0
    ) -> Iterator[Token]:
        """Every token of `organization` the bearer may see, newest first, page after page.

        The first page is fetched now, so that a refusal raises here; the others as the
        iterator advances. `page_size` 0 is the server default.
        """

        def fetch(page_token: str) -> tuple[list[Token], str]:
            response = self._call(
                self._tokens.ListTokens,
                pb.ListTokensRequest(
                    organization=organization,
                    page_size=page_size,
                    page_token=page_token,
                    include_revoked=include_revoked,
                ),
            )
            return [_convert.token(item) for item in response.tokens], response.next_page_token

        return _paginate(fetch)

    def revoke_token(self, token_id: str) -> Token:
        """Revoke at once. Revoking again is fine and keeps the first `revoked_at`."""
        return _convert.token(
            self._call(self._tokens.RevokeToken, pb.RevokeTokenRequest(token_id=token_id))
        )

    # -- administration --------------------------------------------------------------------

    def create_organization(self, name: str, display_name: str = "") -> Organization:
        """Create an organisation (global administrators only); `name` is its slug."""
        request = admin_pb2.CreateOrganizationRequest(name=name, display_name=display_name)
        return _convert.organization(self._call(self._admin.CreateOrganization, request))

    def list_organizations(self, *, page_size: int = 0) -> Iterator[Organization]:
        """Every organisation the bearer may see, page after page."""

        def fetch(page_token: str) -> tuple[list[Organization], str]:
            response = self._call(
                self._admin.ListOrganizations,
                admin_pb2.ListOrganizationsRequest(page_size=page_size, page_token=page_token),
            )
            items = [_convert.organization(item) for item in response.organizations]
            return items, response.next_page_token

        return _paginate(fetch)

    def create_principal(
        self, name: str, kind: PrincipalKind | str = PrincipalKind.USER
    ) -> Principal:
        """Register a user or a service (global administrators only)."""
        request = _convert.create_principal_request(name, kind)
        return _convert.principal(self._call(self._admin.CreatePrincipal, request))

    def add_member(self, organization: str, principal: str, role: Role | str) -> Membership:
        """Add `principal` to `organization` with `role`, or change its role there."""
        request = _convert.add_member_request(organization, principal, role)
        return _convert.membership(self._call(self._admin.AddMember, request))

    def remove_member(self, organization: str, principal: str) -> tuple[str, ...]:
        """Remove a member; returns the ids of its tokens there, revoked with the membership."""
        request = admin_pb2.RemoveMemberRequest(organization=organization, principal=principal)
        return tuple(self._call(self._admin.RemoveMember, request).revoked_token_ids)

    def list_members(self, organization: str) -> list[Membership]:
        """The organisation's members and their roles."""
        request = admin_pb2.ListMembersRequest(organization=organization)
        response = self._call(self._admin.ListMembers, request)
        return [_convert.membership(item) for item in response.members]


def _paginate(fetch: Callable[[str], tuple[list[Item], str]]) -> Iterator[Item]:
    """Fetch the first page at once (errors surface at the call), the rest on demand."""
    items, next_page_token = fetch("")

    def pages() -> Iterator[Item]:
        nonlocal items, next_page_token
        while True:
            yield from items
            if not next_page_token:
                return
            items, next_page_token = fetch(next_page_token)

    return pages()
