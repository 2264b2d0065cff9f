"""Wiring for `AUTHORITY_SERVER=thin`: the ASGI app Envoy (pyvoy) runs in its embedded interpreter.

Its lifespan builds the whole server, as `authority serve` does on grpcio: the object graph
(settings from the AUTHORITY_* environment the supervisor passed, thin_server.py), the change
feed and the background work, and the grpcio server with every service, listening on the
private unix socket Envoy sends the non-hot methods to. The hot methods Envoy routes here are
served by the thin layer over the same Runtime, so both paths share one Validator and cache.

pyvoy loads a module attribute and has no app factory; what the lifespan builds is kept in the
ASGI lifespan state (copied into every request's scope), so this module holds nothing mutable:
`app` is a closure over the function that builds the graph.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from authority import logs
from authority.api.thin import build_app
from authority.api.thin._grpc import AsgiApp, Receive, Scope, Send, ThinGrpc
from authority.server import Application, RunningServer, build_application, start_server
from authority.settings import Settings
from authority.thin_contract import SOCKET_ENV, SUPERVISOR_ENV

log = logging.getLogger("authority.server")

_STATE_KEY = "authority.thin"
ORPHAN_CHECK_SECONDS = 0.5
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def embedded_app(build: Callable[[Settings], Application]) -> AsgiApp:
    """The ASGI app over the object graph `build` makes (the tests' passes their clocks)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            thin: ThinGrpc = scope["state"][_STATE_KEY]
            await thin(scope, receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(build, scope, receive, send)

    return app


async def _lifespan(
    build: Callable[[Settings], Application], scope: Scope, receive: Receive, send: Send
) -> None:
    event = await receive()
    if event["type"] != "lifespan.startup":
        return
    settings = Settings.from_env()
    stop_logging = logs.configure(settings.log_level)
    running: RunningServer | None = None
    try:
        application = build(settings)
        # Before grpcio starts: once it answers health, Envoy may send the hot methods here.
        scope["state"][_STATE_KEY] = build_app(application.runtime)
        running = await start_server(application, listen=f"unix:{os.environ[SOCKET_ENV]}")
    except Exception as error:
        # The supervisor checked the settings, pepper and database before starting Envoy;
        # what fails here is logged by class (a driver's message may quote parameters).
        log.error("the thin server could not start (%s)", type(error).__name__)
        if running is not None:
            await running.stop(grace=0)
        await send({"type": "lifespan.startup.failed", "message": type(error).__name__})
        stop_logging()
        return
    await send({"type": "lifespan.startup.complete"})
    supervisor = int(os.environ.get(SUPERVISOR_ENV, "0"))
    # Without a parent-death signal, a check twice a second instead.
    watch = None if _die_with(supervisor) else asyncio.create_task(_stop_when_orphaned(supervisor))
    try:
        await receive()  # lifespan.shutdown: Envoy is stopping
    finally:
        if watch is not None:
            watch.cancel()
        if supervisor > 0 and os.getppid() != supervisor:
            # Orphaned: the supervisor can no longer remove its private directory (best
            # effort: Envoy may exit before this runs, leaving two sockets in it).
            shutil.rmtree(Path(os.environ[SOCKET_ENV]).parent, ignore_errors=True)
        # The supervisor drained the listener before it stopped Envoy: what is still in
        # flight on grpcio gets a short grace.
        with contextlib.suppress(Exception):
            await running.stop(grace=1.0)
        with contextlib.suppress(Exception):
            await send({"type": "lifespan.shutdown.complete"})
        stop_logging()


def _die_with(supervisor: int) -> bool:
    """Envoy gets SIGTERM the moment the supervisor dies (Linux's parent-death signal, set
    here in Envoy's process: no code runs between fork and exec), as a crash would stop a
    grpcio server: a replacement started at once finds the port free. Whether it is set (or
    there is no supervisor to follow)."""
    if supervisor <= 0:
        return True
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != supervisor:  # it died before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)
    return True


async def _stop_when_orphaned(supervisor: int) -> None:
    """Where there is no parent-death signal: SIGTERM to this process (Envoy's) once the
    supervisor is no longer its parent, checked twice a second."""
    while os.getppid() == supervisor:  # noqa: ASYNC110 - a parent's death sets no event
        await asyncio.sleep(ORPHAN_CHECK_SECONDS)
    log.error("the supervising process is gone; stopping", extra={"parent": supervisor})
    os.kill(os.getpid(), signal.SIGTERM)


app = embedded_app(build_application)
