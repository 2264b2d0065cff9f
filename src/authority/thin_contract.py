"""What the thin server's three parts agree on: the supervisor (thin_server.py), the Envoy
configuration it writes, and the app embedded in Envoy (thin_app.py, api/thin).

Plain constants, importing nothing, so that the supervisor (which only starts Envoy, waits
and drains) runs without the object graph's modules: it would hold their memory for nothing.
"""

from __future__ import annotations

# The service whose methods the thin path serves; tests/unit/test_thin_server.py checks it is
# the protos' (token_authority.proto's TokenAuthority).
SERVICE_NAME = "authority.v1.TokenAuthority"
# The methods that carry the traffic: served in Envoy's process, every other one by grpcio.
HOT_METHODS = ("Validate", "ValidateBatch", "ValidateStream", "RefreshToken")
# The caller's address as Envoy saw it, in a header Envoy overwrites on every request:
# grpcio behind Envoy sees only its private unix socket (api/errors.peer_of).
PEER_HEADER = "x-authority-peer"
# The supervisor's private socket for the grpcio server (in a directory only this user reads).
SOCKET_ENV = "AUTHORITY_THIN_GRPCIO_SOCKET"
# The supervisor's pid: Envoy stops itself when that process is gone (killed without the
# chance to stop it), instead of serving on alone.
SUPERVISOR_ENV = "AUTHORITY_THIN_SUPERVISOR"
# What a request that is not gRPC (not a POST, or another content type) gets, with HTTP 415
# (the gRPC spec's SHOULD): from the app on the hot methods, from Envoy's routes on the rest.
NOT_GRPC_BODY = "not a gRPC request\n"
# gRPC's content types, as Envoy's routes match them (RE2, the whole value). The app applies
# the same rule on the hot methods without a regular expression (api/thin/_grpc._read_head).
GRPC_CONTENT_TYPE_REGEX = "application/grpc([+;].*)?"


def path_of(method: str) -> str:
    """The HTTP/2 :path of a TokenAuthority method."""
    return f"/{SERVICE_NAME}/{method}"
