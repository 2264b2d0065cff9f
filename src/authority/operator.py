"""Operator commands of the `authority` CLI: talk to a running server through the client.

Everything prints JSON, one object per line, so that it pipes into jq or a script. The bearer
comes from AUTHORITY_TOKEN or a file: --token-file, else AUTHORITY_TOKEN_FILE, else
var/admin-token (what `make run` writes, relative to the working directory); never from a flag,
so that it stays out of shell history and process listings. These commands are clients: they
take no server settings (--database-url, --log-level).

`token exchange` and `token refresh` are a job's commands: they take no bearer, but the key (or
the access token) in the same way, from AUTHORITY_KEY (AUTHORITY_ACCESS_TOKEN), else a file
(--key-file, AUTHORITY_KEY_FILE; --access-token-file, AUTHORITY_ACCESS_TOKEN_FILE), else one
line of standard input; and print the access token alone on standard output, for
`ACCESS=$(authority token exchange ...)`, its id and expiry on standard error (or all of it as
one JSON object with --json).
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

from authority.client import AccessToken, AuthorityClientError, TokenAuthorityClient

_DURATION_RE = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DEFAULT_TOKEN_FILE = Path("var/admin-token")  # what `make run` writes
_JSON_HELP = "print one JSON object (access_token, token_id, expires_at, refresh_until)"


def add_commands(commands: Any) -> None:
    """Register `org`, `token` and `validate` on the CLI's sub-parsers (client flags only)."""
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--target", help="server host:port (default: AUTHORITY_LISTEN)")
    remote = argparse.ArgumentParser(add_help=False, parents=[server])
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
    exchange = token.add_parser(
        "exchange",
        parents=[server],
        help="exchange an API key for a short-lived access token, printed alone on stdout",
    )
    exchange.add_argument(
        "--key-file",
        help="file holding the API key (default: AUTHORITY_KEY_FILE, else one line of standard "
        "input); AUTHORITY_KEY, when set, is used instead",
    )
    exchange.add_argument(
        "--scope",
        action="append",
        default=[],
        help="a subset of the key's scopes; repeatable (default: all of the key's)",
    )
    exchange.add_argument(
        "--ttl", help="lifetime such as 90s, 10m (default and cap: the server's maximum)"
    )
    exchange.add_argument("--audience", default="", help="the aud claim (default: the issuer)")
    exchange.add_argument("--json", action="store_true", help=_JSON_HELP)
    refresh = token.add_parser(
        "refresh",
        parents=[server],
        help="a new access token for one that may have expired, printed alone on stdout",
    )
    refresh.add_argument(
        "--access-token-file",
        help="file holding the access token (default: AUTHORITY_ACCESS_TOKEN_FILE, else one "
        "line of standard input); AUTHORITY_ACCESS_TOKEN, when set, is used instead",
    )
    refresh.add_argument("--json", action="store_true", help=_JSON_HELP)

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
        if args.command == "token" and args.action in ("exchange", "refresh"):
            with TokenAuthorityClient(target) as client:
                _show_access_token(_access_token(client, args), args.json)
            return 0
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


def _access_token(client: TokenAuthorityClient, args: argparse.Namespace) -> AccessToken:
    """ExchangeKey or RefreshToken, with the secret read from where the job keeps it."""
    if args.action == "exchange":
        key = _secret("key", "AUTHORITY_KEY", "--key-file", args.key_file)
        return client.exchange_key(
            key,
            scopes=args.scope,
            ttl=parse_duration(args.ttl) if args.ttl else None,
            audience=args.audience,
        )
    presented = _secret(
        "access token", "AUTHORITY_ACCESS_TOKEN", "--access-token-file", args.access_token_file
    )
    return client.refresh_token(presented)


def _secret(what: str, variable: str, flag: str, path: str | None) -> str:
    """A key or access token: from `variable`, else the file named by `flag` (or by
    `variable`_FILE), else one line of standard input; never from argv."""
    value = os.environ.get(variable, "").strip()
    if value:
        return value
    where = path or os.environ.get(f"{variable}_FILE", "").strip()
    if where:
        try:
            value = Path(where).read_text().strip()
        except OSError as error:
            raise ValueError(f"cannot read the {what} ({error.strerror}: {where})") from error
    elif not sys.stdin.isatty():
        value = sys.stdin.readline().strip()
    if not value:
        raise ValueError(
            f"no {what}: set {variable}, pass {flag} (or set {variable}_FILE), "
            "or write it on standard input"
        )
    return value


def _show_access_token(issued: AccessToken, as_json: bool) -> None:
    """The token alone on stdout (for `$(...)`), what is safe to log on stderr; or one JSON
    object on stdout."""
    if as_json:
        _emit([issued])
        return
    print(issued.access_token)
    refreshable = issued.refresh_until.isoformat() if issued.refresh_until else "-"
    print(
        f"access token {issued.token_id}: expires {issued.expires_at.isoformat()}, "
        f"refreshable until {refreshable}",
        file=sys.stderr,
    )


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
