"""Operator commands of the `authority` CLI: talk to a running server through the client.

Everything prints JSON, one object per line, so that it pipes into jq or a script. The bearer
comes from AUTHORITY_TOKEN or a file: --token-file, else AUTHORITY_TOKEN_FILE, else
var/admin-token (what `make run` writes, relative to the working directory); never from a flag,
so that it stays out of shell history and process listings. These commands are clients: they
take no server settings (--database-url, --log-level).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from authority.client import AuthorityClientError, TokenAuthorityClient

_DURATION_RE = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DEFAULT_TOKEN_FILE = Path("var/admin-token")  # what `make run` writes


def add_commands(commands: Any) -> None:
    """Register `org`, `token` and `validate` on the CLI's sub-parsers (client flags only)."""
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--target", help="server host:port (default: AUTHORITY_LISTEN)")
    remote.add_argument(
        "--token-file",
        help="bearer token file (default: AUTHORITY_TOKEN_FILE, else var/admin-token); "
        "AUTHORITY_TOKEN, when set, is used instead",
    )

    org = commands.add_parser("org", help="organisations").add_subparsers(
        dest="action", required=True
    )
    create = org.add_parser("create", parents=[remote], help="create an organisation")
    create.add_argument("name")
    create.add_argument("--display-name", default="")
    org.add_parser("list", parents=[remote], help="list organisations")

    token = commands.add_parser("token", help="tokens").add_subparsers(dest="action", required=True)
    issue = token.add_parser("issue", parents=[remote], help="issue a token; prints it once")
    issue.add_argument("--org", required=True, help="organisation name")
    issue.add_argument("--label", required=True)
    issue.add_argument("--description", default="")
    issue.add_argument("--subject", default="", help="principal the token acts for")
    issue.add_argument(
        "--scope", action="append", default=[], help="profile or permission; repeatable"
    )
    issue.add_argument("--ttl", help="lifetime such as 3600s, 30m, 12h, 30d, 2w")
    issue.add_argument("--property", action="append", default=[], help="key=value; repeatable")
    listing = token.add_parser("list", parents=[remote], help="list an organisation's tokens")
    listing.add_argument("--org", required=True)
    listing.add_argument("--include-revoked", action="store_true")
    get = token.add_parser("get", parents=[remote], help="show one token")
    get.add_argument("token_id")
    revoke = token.add_parser("revoke", parents=[remote], help="revoke a token at once")
    revoke.add_argument("token_id")

    validate = commands.add_parser(
        "validate", parents=[remote], help="validate a token read from standard input"
    )
    validate.add_argument("--permission", default="")


def run(args: argparse.Namespace, listen: str) -> int:
    """Run one operator command; refusals print `authority: CODE: message` and return 1."""
    target = args.target or listen
    try:
        if args.command == "validate":
            presented = sys.stdin.readline().strip()
            with TokenAuthorityClient(target) as client:
                result = client.validate(presented, args.permission)
            answer = _plain(result)
            if result.valid:
                del answer["reason"]  # a valid answer has no reason (REASON_UNSPECIFIED)
            _emit([answer])
            return 0 if result.valid else 2
        with TokenAuthorityClient(target, token=_bearer(_token_file(args.token_file))) as client:
            _emit(_dispatch(client, args))
        return 0
    except AuthorityClientError as error:
        print(f"authority: {error.code.name}: {error.message}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"authority: {error}", file=sys.stderr)
        return 1


def _dispatch(client: TokenAuthorityClient, args: argparse.Namespace) -> Iterable[object]:
    match args.command, args.action:
        case "org", "create":
            return [client.create_organization(args.name, args.display_name)]
        case "org", "list":
            return client.list_organizations()
        case "token", "issue":
            issued = client.issue_token(
                args.org,
                args.label,
                scopes=args.scope,
                subject=args.subject,
                description=args.description,
                ttl=parse_duration(args.ttl) if args.ttl else None,
                properties=dict(_pair(item) for item in args.property),
            )
            return [{"token": issued.token, "secret": issued.secret}]
        case "token", "list":
            return client.list_tokens(args.org, include_revoked=args.include_revoked)
        case "token", "get":
            return [client.get_token(args.token_id)]
        case "token", "revoke":
            return [client.revoke_token(args.token_id)]
    raise AssertionError((args.command, args.action))


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `12h`, `30d`, `2w`, or combinations such as `1d12h`."""
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"--ttl {text!r}: use a number and a unit (s, m, h, d, w), e.g. 30d")
    return timedelta(seconds=sum(int(number) * _UNITS[unit] for number, unit in parts))


def _pair(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise ValueError(f"--property {text!r}: use key=value")
    return key, value


def _token_file(flag: str | None) -> Path:
    return Path(flag or os.environ.get("AUTHORITY_TOKEN_FILE", "").strip() or DEFAULT_TOKEN_FILE)


def _bearer(token_file: Path) -> str:
    token = os.environ.get("AUTHORITY_TOKEN", "").strip()
    if token:
        return token
    try:
        return token_file.read_text().strip()
    except OSError as error:
        raise ValueError(
            f"no bearer token: set AUTHORITY_TOKEN or pass --token-file (or set "
            f"AUTHORITY_TOKEN_FILE) ({error.strerror}: {token_file})"
        ) from error


def _emit(items: Iterable[object]) -> None:
    for item in items:
        print(json.dumps(_plain(item), sort_keys=True))


def _plain(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    return value
