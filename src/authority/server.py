"""Wiring: builds the object graph once, at start, and serves it on a grpc.aio server."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TextIO

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from authority.api.admin import AdminServicer
from authority.api.runtime import Runtime
from authority.api.token_authority import TokenAuthorityServicer
from authority.api.token_authority import add_to_server as add_token_authority
from authority.cache.feed import ChangeFeed
from authority.cache.validator import CacheConfig, Monotonic, Validator
from authority.domain.access import Access
from authority.domain.audit import AuditService, RefusalLimiter
from authority.domain.clock import Clock, system_clock
from authority.domain.events import EventKind, RecordedEvent
from authority.domain.exchange import (
    AccessTokenReader,
    AccessTokens,
    ExchangeLimits,
    FailureLimiter,
)
from authority.domain.installation import Installation, PepperMismatch
from authority.domain.lifecycle import ExpiryAnnouncer
from authority.domain.organizations import OrganizationService
from authority.domain.signing import KeyLifetimes, KeySealer, SigningKeys
from authority.domain.token_format import SecretHasher
from authority.domain.tokens import TokenService
from authority.domain.validation import EntryCompiler, ValidationEntry
from authority.domain.watch import EventWatch
from authority.logs import JsonFormatter
from authority.settings import Settings, SettingsError
from authority.store.database import create_engines, is_sqlite, libpq_url
from authority.store.repository import SqlStore
from authority.v1 import admin_pb2, admin_pb2_grpc, token_authority_pb2

log = logging.getLogger("authority.server")

SERVICE_NAMES = (
    token_authority_pb2.DESCRIPTOR.services_by_name["TokenAuthority"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
)


@dataclass
class Application:
    """The object graph of one server process."""

    settings: Settings
    store: SqlStore
    feed: ChangeFeed
    tokens: TokenService
    organizations: OrganizationService
    installation: Installation
    validator: Validator
    runtime: Runtime
    executor: ThreadPoolExecutor
    audit: AuditService
    expiry: ExpiryAnnouncer
    signing: SigningKeys


def build_application(
    settings: Settings, clock: Clock = system_clock, monotonic: Monotonic = time.monotonic
) -> Application:
    """Everything but the gRPC server; no I/O beyond opening the engines lazily."""
    writer, reader = create_engines(settings.database_url, settings.database_threads)
    store = SqlStore(writer, reader)
    pepper = settings.load_pepper()
    hasher = SecretHasher(pepper)
    access = Access(clock)
    signing = SigningKeys(
        store,
        clock,
        KeySealer(pepper),
        KeyLifetimes(
            access_token_max_ttl=timedelta(seconds=settings.access_token_max_ttl_seconds),
            refresh_window=timedelta(seconds=settings.refresh_window_seconds),
        ),
        access,
    )
    tokens = TokenService(store, clock, hasher, access)
    organizations = OrganizationService(store, clock, access)
    installation = Installation(store, clock, hasher)
    executor = ThreadPoolExecutor(
        max_workers=settings.database_threads, thread_name_prefix="authority-db"
    )

    compile_entry = EntryCompiler()

    async def load(token_id: str) -> ValidationEntry | None:
        loop = asyncio.get_running_loop()
        record = await loop.run_in_executor(executor, store.get_token, token_id)
        return compile_entry(record) if record is not None else None

    limits = ExchangeLimits(
        issuer=settings.issuer,
        max_ttl=timedelta(seconds=settings.access_token_max_ttl_seconds),
        refresh_window=timedelta(seconds=settings.refresh_window_seconds),
    )
    validator = Validator(
        load,
        hasher,
        clock,
        CacheConfig(
            max_entries=settings.cache_max_entries,
            max_staleness=settings.cache_max_staleness_seconds,
            negative_entries=settings.negative_cache_entries,
            negative_ttl=settings.negative_cache_ttl_seconds,
            access_token_entries=settings.access_token_cache_entries,
        ),
        monotonic,
        # The ring in use (replaced whole on rotation): to verify a token the first time, and
        # at each use of a held one to ask whether its key is still published.
        AccessTokenReader(lambda: signing.ring, limits.issuer),
    )
    feed = ChangeFeed(
        store,
        validator,
        poll_seconds=settings.feed_poll_seconds,
        bound_seconds=settings.cache_max_staleness_seconds,
        executor=executor,
        listen_url=None if is_sqlite(settings.database_url) else libpq_url(settings.database_url),
        monotonic=monotonic,
    )
    store.dispatch = feed.committed
    audit = AuditService(
        store, clock, access, settings.audit_retention_days, RefusalLimiter(monotonic=monotonic)
    )
    runtime = Runtime(
        tokens,
        organizations,
        validator,
        executor,
        settings.validate_batch_max,
        audit=audit,
        watch=EventWatch(store, access),
        event_listeners=feed.event_listeners,
        signing=signing,
        access_tokens=AccessTokens(
            validator, lambda: signing.ring, clock, limits, FailureLimiter.default(monotonic)
        ),
    )
    feed.event_listeners.append(_reload_keys_on_rotation(signing, executor))
    expiry = ExpiryAnnouncer(store, clock, timedelta(seconds=settings.expiry_warning_seconds))
    return Application(
        settings,
        store,
        feed,
        tokens,
        organizations,
        installation,
        validator,
        runtime,
        executor,
        audit=audit,
        expiry=expiry,
        signing=signing,
    )


def check_pepper(application: Application) -> None:
    """Refuse to start with a pepper other than the one the database's tokens were hashed
    with (SettingsError, for the CLI to print)."""
    try:
        application.installation.check_pepper()
    except PepperMismatch as error:
        raise SettingsError(str(error)) from None


class RunningServer:
    """A started server: its bound port, its application, and a way to stop it."""

    def __init__(self, server: grpc.aio.Server, port: int, application: Application) -> None:
        self.server = server
        self.port = port
        self.application = application
        # Periodic work of this process (the audit retention), cancelled when it stops.
        self.background: list[asyncio.Task[None]] = []

    async def stop(self, grace: float = 2.0) -> None:
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.server.stop(grace)
        await self.application.feed.stop()
        self.application.executor.shutdown(wait=True)
        self.application.store.dispose()


async def start_server(application: Application, listen: str | None = None) -> RunningServer:
    """Serve TokenAuthority, Admin, health and reflection on `listen` (default
    settings.listen; the thin server's private unix socket behind Envoy)."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(application.executor, check_pepper, application)
    # The installation's first signing key is made by the first server to start (sealing it
    # needs the pepper, which migrations never see); the others load it.
    await loop.run_in_executor(application.executor, application.signing.ensure_current)
    server = grpc.aio.server(
        options=[
            # Several workers of one `serve --workers N` share the port; a lone server must
            # not share it with a stray process, so it fails to bind instead.
            ("grpc.so_reuseport", 1 if application.settings.workers > 1 else 0),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
    )
    add_token_authority(TokenAuthorityServicer(application.runtime), server)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(application.runtime), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    listen = listen or application.settings.listen
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError:  # grpcio's way of saying the bind failed
        port = 0
    if port == 0:
        raise SettingsError(
            f"cannot listen on {listen}: the port is taken or the address is not this host's; "
            "choose another with --listen or AUTHORITY_LISTEN"
        )
    await application.feed.start()
    await server.start()

    async def report(serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING
        if not serving:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in (*SERVICE_NAMES, ""):
            await health_servicer.set(name, status)

    await report(True)
    application.feed.health_listeners.append(lambda serving: _spawn(report(serving)))
    running = RunningServer(server, port, application)
    settings = application.settings
    max_age = timedelta(seconds=settings.signing_key_rotation_seconds)
    # (on or off, every how many seconds, the work, what the log calls it)
    periodic: list[tuple[bool, float, Callable[[], object], str]] = [
        (
            settings.audit_retention_days > 0,
            settings.audit_retention_interval_seconds,
            application.audit.enforce_retention,
            "audit retention: deleted events past the retention",
        ),
        (
            settings.expiry_sweep_seconds > 0,
            settings.expiry_sweep_seconds,
            application.expiry.sweep,
            "expiry sweep: recorded expiries that came due",
        ),
        (
            # No change feed to bring other processes' rotations: reload the keys as often
            # as the cache would re-read a token.
            settings.feed_poll_seconds <= 0,
            settings.cache_max_staleness_seconds,
            application.signing.reload,
            "signing keys: reloaded",
        ),
        (
            settings.signing_key_rotation_seconds > 0,
            min(60.0, max(0.5, settings.signing_key_rotation_seconds / 10)),
            lambda: application.signing.rotate_if_due(max_age),
            "signing keys: rotated the current key (older than the rotation interval)",
        ),
    ]
    for enabled, seconds, work, what in periodic:
        if enabled:
            task = asyncio.create_task(_periodically(application, seconds, work, what))
            running.background.append(task)
    return running


def _reload_keys_on_rotation(
    signing: SigningKeys, executor: ThreadPoolExecutor
) -> Callable[[Sequence[RecordedEvent]], None]:
    """A change-feed listener: a rotation by any process makes this one reload its key set,
    so that every process signs with, and publishes, the same keys."""

    async def reload() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(5):
            try:
                await loop.run_in_executor(executor, signing.reload)
                return
            except Exception as error:
                log.warning(
                    "signing keys: reloading after a rotation failed (%s); retrying",
                    type(error).__name__,
                )
                await asyncio.sleep(1.0)

    def on_events(events: Sequence[RecordedEvent]) -> None:
        if any(recorded.event.kind is EventKind.SIGNING_KEY_ROTATED for recorded in events):
            _spawn(reload())

    return on_events


async def _periodically(
    application: Application, seconds: float, work: Callable[[], object], what: str
) -> None:
    """Run `work` in the database pool at start and then every `seconds`; a failure is logged
    once (only its class: a driver's message may quote the statement's parameters) and tried
    again next time. Every replica runs its own: the work must be safe to race (it is claimed
    or idempotent in the store)."""
    loop = asyncio.get_running_loop()
    failing = False
    while True:
        try:
            done = await loop.run_in_executor(application.executor, work)
            failing = False
            if isinstance(done, int) and done > 0:
                log.info(what, extra={"count": done})
        except Exception as error:
            if not failing:
                log.warning("%s failed (%s); retrying", what, type(error).__name__)
            failing = True
        # (A floor, so that a zero interval cannot turn this into a busy loop on the store.)
        await asyncio.sleep(max(seconds, 0.01))


def _spawn(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


def run_loop(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """Run the server on uvloop (default) or the standard asyncio loop."""
    if event_loop == "uvloop":
        uvloop.run(main)
    elif event_loop == "asyncio":
        asyncio.run(main)
    else:
        raise SettingsError(f"AUTHORITY_EVENT_LOOP={event_loop!r}: use uvloop or asyncio")


STOP_GRACE = 5.0
# Beyond the grace: the feed's listener thread (joined for up to 5 s) and the store's dispose.
STOP_MARGIN = 5.0


async def serve(settings: Settings, parent: int | None = None) -> None:
    """`authority serve`: run until SIGINT/SIGTERM, then drain calls in flight.

    `parent`: the pid of the `serve --workers N` process that started this worker; the worker
    stops if that process is gone (killed without the chance to stop its workers).
    """
    running = await start_server(build_application(settings))
    host = settings.listen.rsplit(":", 1)[0]
    log.info("serving", extra={"listen": f"{host}:{running.port}", "pid": os.getpid()})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if parent is not None:
        _stop_when_orphaned(parent, stop)
    await stop.wait()
    log.info("stopping")
    deadline = StopDeadline(STOP_GRACE + STOP_MARGIN)
    deadline.arm()
    try:
        await running.stop(grace=STOP_GRACE)
    finally:
        deadline.cancel()


class StopDeadline:
    """A process asked to stop must end, even when something in it hangs.

    CI once saw ours alive 10 s after SIGTERM with nothing in flight (the change feed's
    follower had swallowed its cancel: aio.wait_set), and grpcio's aio server is known to hang
    in stop() now and then (grpc/grpc#28999, #40834). An orchestrator would wait out its own
    timeout and then SIGKILL, silently; this ends it sooner and says why:
    after `seconds` it writes one error line and every thread's stack (for the bug report) to
    `stream`, then exits 1. A stop that finishes first cancels it, and `authority serve` then
    exits at once, without the interpreter's teardown (cli._Exit).
    """

    def __init__(
        self,
        seconds: float,
        stream: TextIO | None = None,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        self._seconds = seconds
        self._stream = stream if stream is not None else sys.stderr
        self._exit = exit
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.name = "authority-stop-deadline"

    def arm(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        """The stop ended in time; once this returns, the deadline can no longer fire."""
        self._timer.cancel()
        if self._timer.is_alive():
            self._timer.join()

    def _expire(self) -> None:
        # Straight to the stream: the log's writer thread may be what is stuck.
        record = log.makeRecord(
            log.name,
            logging.ERROR,
            __file__,
            0,
            "stopping took longer than %g s; exiting (threads' stacks follow)",
            (self._seconds,),
            None,
        )
        try:
            self._stream.write(JsonFormatter().format(record) + "\n")
            self._stream.flush()
            faulthandler.dump_traceback(file=self._stream, all_threads=True)
        except (OSError, ValueError):  # a closed or unwritable stderr must not keep it alive
            pass
        self._exit(1)


def _stop_when_orphaned(parent: int, stop: asyncio.Event) -> None:
    """Check twice a second, on the loop, that the supervising process is still our parent."""
    if os.getppid() != parent:
        log.error("the supervising process is gone; stopping", extra={"parent": parent})
        stop.set()
        return
    asyncio.get_running_loop().call_later(0.5, _stop_when_orphaned, parent, stop)
