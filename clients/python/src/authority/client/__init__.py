"""A small typed client for the Token Authority gRPC service.

    from authority.client import TokenAuthorityClient

    with TokenAuthorityClient("127.0.0.1:50051") as client:
        result = client.validate(presented_token, "download")
        if not result.valid:
            refuse(result.reason)

A backend job holding an API key presents short-lived access tokens instead, kept fresh by
`KeyExchangeCredentials` (`.token()`, or `.call_credentials()` for a gRPC channel); a service
checks them without a call per token with `OfflineVerifier` (needs the `verify` extra:
`pip install 'authority-client[verify]'`), which also refuses the tokens of a revoked key
within a second when it watches the key's organisation.

The generated stubs, for anything this client does not cover, are in `authority.v1`.
"""

from authority.client._async_client import AsyncTokenAuthorityClient
from authority.client._client import TokenAuthorityClient
from authority.client._convert import BatchItem
from authority.client._credentials import AsyncKeyExchangeCredentials, KeyExchangeCredentials
from authority.client._errors import (
    AlreadyExists,
    AuthorityClientError,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from authority.client._models import (
    AccessToken,
    IssuedToken,
    Membership,
    Organization,
    Principal,
    PrincipalKind,
    Reason,
    Role,
    ScopeProfile,
    Token,
    ValidationResult,
)
from authority.client._verifier import OfflineVerifier

__all__ = [
    "AccessToken",
    "AlreadyExists",
    "AsyncKeyExchangeCredentials",
    "AsyncTokenAuthorityClient",
    "AuthorityClientError",
    "BatchItem",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "IssuedToken",
    "KeyExchangeCredentials",
    "Membership",
    "NotFound",
    "OfflineVerifier",
    "Organization",
    "PermissionDenied",
    "Principal",
    "PrincipalKind",
    "Reason",
    "ResourceExhausted",
    "Role",
    "ScopeProfile",
    "Token",
    "TokenAuthorityClient",
    "Unauthenticated",
    "Unavailable",
    "ValidationResult",
]
