"""`authority serve --workers N`: N server processes on one address, started and watched here.

Each worker is an `authority serve` process of its own (`python -m authority serve` with the
internal flag WORKER_FLAG), with its own Validate cache, kept coherent with the others' by the
change feed; the kernel spreads incoming connections among them (SO_REUSEPORT). This parent
migrates once, creates the pepper file once, starts the workers, forwards SIGINT/SIGTERM to
them and exits when they have exited. It restarts none: a worker that dies is logged, the
others are stopped, and the command exits non-zero, so that the process manager above it
(systemd, Kubernetes, a shell) sees the failure instead of a half-sized service.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from types import FrameType

from authority.settings import Settings, SettingsError

log = logging.getLogger("authority.workers")

WORKER_FLAG = "--worker-of"
# How long workers have to drain their calls after SIGTERM before they are killed.
STOP_GRACE_SECONDS = 15.0
POLL_SECONDS = 0.1
_CLEAN_EXITS = (0, 130, -signal.SIGTERM, -signal.SIGINT)


def check(settings: Settings) -> None:
    """Refuse, before anything starts, a worker count or listen address that cannot work."""
    if settings.workers < 1:
        raise SettingsError(f"--workers {settings.workers}: use 1 or more")
    if settings.workers == 1:
        return
    host, _, port = settings.listen.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        raise SettingsError(
            f"--workers {settings.workers} needs a fixed port in the listen address, not "
            f"{settings.listen!r}: with port 0 each worker would bind a random port of its own"
        )
    _refuse_taken(host.strip("[]") or None, int(port), settings.listen)


def _refuse_taken(host: str | None, port: int, listen: str) -> None:
    """SO_REUSEPORT would let the workers share a port another server already listens on
    (another `--workers` instance of this user), splitting its traffic silently: refuse."""
    if errno.EADDRINUSE in bind_errors(host, port, listen):
        raise SettingsError(
            f"cannot listen on {listen}: the address is in use (is another server running there?)"
        )


def bind_errors(host: str | None, port: int, listen: str) -> set[int]:
    """The errnos a server binding host:port would meet, one probe per address it resolves
    to, bound as grpcio and Envoy bind (SO_REUSEADDR: a port with connections in TIME_WAIT is
    free, a listener's is not)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise SettingsError(f"cannot listen on {listen}: {error.strerror}") from None
    errors: set[int] = set()
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno is not None:
                    errors.add(error.errno)
    return errors


def worker_environment(settings: Settings) -> dict[str, str]:
    """This environment with every setting as resolved here (CLI flags included), so that
    each worker runs with exactly the parent's settings."""
    environment = dict(os.environ)
    for field in dataclasses.fields(settings):
        environment[f"AUTHORITY_{field.name.upper()}"] = str(getattr(settings, field.name))
    return environment


def supervise(settings: Settings) -> int:
    """Run `settings.workers` workers until a signal stops them (0) or one of them dies (1).

    The caller has migrated the database and checked the pepper (which creates its file).
    """
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()  # nothing else here: the main loop logs and forwards

    previous = {
        signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    command = [sys.executable, "-m", "authority", "serve", WORKER_FLAG, str(os.getpid())]
    environment = worker_environment(settings)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(settings.workers):
            if stop.is_set():
                break
            # This interpreter and this package, with arguments of our own making.
            workers.append(subprocess.Popen(command, env=environment))  # noqa: S603
        log.info(
            "workers started",
            extra={"listen": settings.listen, "pids": [worker.pid for worker in workers]},
        )
        failed = _watch(workers, stop)
        if not failed:
            log.info("stopping workers")
    finally:
        _stop_all(workers)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if failed:
        return 1
    unclean = [worker for worker in workers if worker.returncode not in _CLEAN_EXITS]
    for worker in unclean:
        log.error("worker stopped uncleanly", extra={"pid": worker.pid, "code": worker.returncode})
    return 1 if unclean else 0


def _watch(workers: list[subprocess.Popen[bytes]], stop: threading.Event) -> bool:
    """Wait until a stop is requested (False) or a worker exits on its own (True)."""
    while not stop.wait(POLL_SECONDS):
        dead = [worker for worker in workers if worker.poll() is not None]
        if dead:
            for worker in dead:
                log.error(
                    "worker exited; stopping the others (workers are not restarted)",
                    extra={"pid": worker.pid, "code": worker.returncode},
                )
            return True
    return False


def _stop_all(workers: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every worker still running, SIGKILL to any still there after the grace."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for worker in workers:
        try:
            worker.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker did not stop in time; killing it", extra={"pid": worker.pid})
            worker.kill()
            worker.wait()
