"""A small typed client for the Token Authority gRPC service.

    from authority.client import TokenAuthorityClient

    with TokenAuthorityClient("127.0.0.1:50051") as client:
        result = client.validate(presented_token, "download")
        if not result.valid:
            refuse(result.reason)

The generated stubs, for anything this client does not cover, are in `authority.v1`.
"""

from authority.client._async_client import AsyncTokenAuthorityClient
from authority.client._client import TokenAuthorityClient
from authority.client._convert import BatchItem
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

__all__ = [
    "AlreadyExists",
    "AsyncTokenAuthorityClient",
    "AuthorityClientError",
    "BatchItem",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "IssuedToken",
    "Membership",
    "NotFound",
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
