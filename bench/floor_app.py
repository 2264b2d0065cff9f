"""`make bench`: the floor of the thin server's engine, an ASGI app that does nothing.

bench/thin.py runs it in the thin server's own Envoy configuration (thin_server.py, with
this app in place of authority.thin_app): every hot call gets an empty message and status OK
without being read, so what a call costs is Envoy, pyvoy's hand-offs between Envoy's worker
thread and the Python threads, and the event loop, and nothing of ours. Its lifespan starts a
grpcio server with health only on the private socket, as the real app starts grpcio, because
the supervisor waits for health SERVING through the port before it says the server is up.
"""

from __future__ import annotations

import os
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from authority.thin_contract import SOCKET_ENV

EMPTY_MESSAGE = b"\x00\x00\x00\x00\x00"  # uncompressed, zero bytes long
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/grpc")],
    "trailers": True,
}
BODY = {"type": "http.response.body", "body": EMPTY_MESSAGE, "more_body": False}
TRAILERS = {"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")]}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    while (await receive()).get("more_body", False):
        pass
    await send(START)
    await send(BODY)
    await send(TRAILERS)


async def _lifespan(receive: Any, send: Any) -> None:
    await receive()  # lifespan.startup
    server = grpc.aio.server()
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(f"unix:{os.environ[SOCKET_ENV]}")
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    await send({"type": "lifespan.startup.complete"})
    await receive()  # lifespan.shutdown
    await server.stop(grace=0)
    await send({"type": "lifespan.shutdown.complete"})
