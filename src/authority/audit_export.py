"""`authority audit export`: the audit trail as JSON lines, for a SIEM.

Run on the server host against the database (settings from the environment, like `authority
bootstrap`); no server needs to be running. One event per line, oldest first, read a page at a
time so that a long trail never sits in memory. Never a secret, a password or a hash.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from authority.domain.audit import AuditFilter, AuditService, as_json
from authority.domain.clock import system_clock
from authority.settings import Settings, SettingsError


def add_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register `audit export` on the CLI's sub-parsers."""
    audit = commands.add_parser("audit", help="the audit trail").add_subparsers(
        dest="action", required=True
    )
    export = audit.add_parser(
        "export",
        parents=[common],
        help="on the server host: write audit events as JSON lines, oldest first",
    )
    export.add_argument(
        "--since", required=True, help="RFC 3339 time (2026-11-01T00:00:00Z) or an age: 24h, 7d"
    )
    export.add_argument("--until", help="RFC 3339 time or an age (default: now)")
    export.add_argument("--organization", default="", help="only this organisation's events")


def moment(text: str, flag: str, now: datetime) -> datetime:
    """An RFC 3339 time (UTC when it names no offset), or an age before `now` (90m, 24h, 7d)."""
    from authority.operator import parse_duration

    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise SettingsError(
            f"{flag} {text!r}: use an RFC 3339 time (2026-11-01T00:00:00Z) or an age (24h, 7d)"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def run(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout) -> int:
    """Write every matching event to `out`, one JSON object per line."""
    from authority.domain.access import Access
    from authority.store.database import create_engines
    from authority.store.repository import SqlStore

    now = system_clock()
    wanted = AuditFilter(
        organization=args.organization,
        since=moment(args.since, "--since", now),
        until=moment(args.until, "--until", now) if args.until else None,
    )
    store = SqlStore(*create_engines(settings.database_url, 1))
    try:
        audit = AuditService(store, system_clock, Access(system_clock))
        for recorded in audit.export(wanted):
            out.write(json.dumps(as_json(recorded), separators=(",", ":")) + "\n")
        out.flush()
    except BrokenPipeError:
        # The reader stopped (`| head`): not an error of ours. Point stdout at /dev/null so
        # that the interpreter's last flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    finally:
        store.dispose()
    return 0
