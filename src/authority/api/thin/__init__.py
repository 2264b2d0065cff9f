"""A thin gRPC path for the hot TokenAuthority methods (issue 10), as an ASGI app.

An empty call through grpcio.aio costs about 230 us of server CPU, most of it the
framework's per-call Python; the methods that carry the traffic are served here instead, on an
HTTP/2 engine that does the protocol in native code, with the same domain objects, answers and
statuses as the grpcio servicers. Every other method goes to `fallback` (grpcio, in step 2).

    app = build_app(runtime)            # the Runtime server.py built: one Validator for both
"""

from __future__ import annotations

from authority.api.runtime import Runtime
from authority.api.thin._grpc import (
    MAX_MESSAGE,
    READ_AHEAD,
    AsgiApp,
    Code,
    GrpcError,
    Messages,
    Receive,
    Scope,
    Send,
    ThinGrpc,
)
from authority.api.thin._hot import HotMethods, fault_status, status_error
from authority.thin_contract import HOT_METHODS, path_of


def build_app(
    runtime: Runtime,
    fallback: AsgiApp | None = None,
    *,
    max_message: int = MAX_MESSAGE,
    read_ahead: int = READ_AHEAD,
) -> ThinGrpc:
    """The ASGI app serving the hot methods over `runtime`; other paths go to `fallback`, or
    are answered UNIMPLEMENTED without one."""
    hot = HotMethods(runtime)
    return ThinGrpc(
        unary={
            path_of("Validate"): hot.validate,
            path_of("ValidateBatch"): hot.validate_batch,
            path_of("RefreshToken"): hot.refresh_token,
        },
        streams={path_of("ValidateStream"): hot.validate_stream},
        map_error=status_error,
        fallback=fallback,
        observe=hot.observe,
        fault_status=fault_status,
        max_message=max_message,
        read_ahead=read_ahead,
    )


__all__ = [
    "HOT_METHODS",
    "MAX_MESSAGE",
    "READ_AHEAD",
    "AsgiApp",
    "Code",
    "GrpcError",
    "Messages",
    "Receive",
    "Scope",
    "Send",
    "ThinGrpc",
    "build_app",
    "path_of",
    "status_error",
]
