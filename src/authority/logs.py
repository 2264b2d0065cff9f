"""Structured logs: one JSON object per line, with the fields callers attach via `extra`."""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from authority.settings import SettingsError

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update((key, value) for key, value in record.__dict__.items() if key not in _STANDARD)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def configure(level: str) -> Callable[[], None]:
    """Send JSON lines to stderr at `level` (DEBUG shows one line per Validate).

    Records go through a queue to a writer thread, so that the event loop never blocks on
    stderr. Returns the function that flushes and stops that thread.
    """
    if level.upper() not in LEVELS:
        raise SettingsError(f"log level {level!r}: use one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, handler)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    root.setLevel(level.upper())
    # Migration chatter is not operational news.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    listener.start()
    return listener.stop
