"""`authority`: serve, migrate, bootstrap the first administrator, rotate signing keys, export the
audit trail, print usage hints."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from authority import audit_export, logs, operator
from authority.domain.errors import AuthorityError
from authority.settings import SERVERS, Settings, SettingsError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="authority", description="Token Authority: issues, validates and revokes API tokens."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", help="SQLAlchemy URL (env AUTHORITY_DATABASE_URL)")
    common.add_argument("--log-level", help="DEBUG, INFO, WARNING (env AUTHORITY_LOG_LEVEL)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="migrate, then serve gRPC")
    serve.add_argument("--listen", help="host:port (env AUTHORITY_LISTEN, default 127.0.0.1:50051)")
    serve.add_argument("--cache-max-entries", type=int, help="0 disables the Validate cache")
    serve.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the listen address, each with its own cache kept "
        "coherent by the change feed (env AUTHORITY_WORKERS, default 1; a fixed port)",
    )
    serve.add_argument(
        "--server",
        choices=SERVERS,
        help="thin: Envoy in front, the hot methods on the thin path; grpcio: everything on "
        "grpcio, the fallback (env AUTHORITY_SERVER, default thin)",
    )
    # Internal: this process is a worker started by `serve --workers N` (the parent's pid).
    serve.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)

    commands.add_parser("migrate", parents=[common], help="apply database migrations")

    bootstrap = commands.add_parser(
        "bootstrap",
        parents=[common],
        help="create the first global administrator; prints its token once, on the last line",
    )
    bootstrap.add_argument("--name", default="admin", help="principal name (default admin)")
    bootstrap.add_argument("--quiet", action="store_true", help="print only the token")

    break_glass = commands.add_parser(
        "break-glass",
        parents=[common],
        help="on the server host: issue a new token for an existing global administrator "
        "(when every administrator token is lost); logged",
    )
    break_glass.add_argument("--name", default="admin", help="the global administrator")
    break_glass.add_argument("--quiet", action="store_true", help="print only the token")

    keys = commands.add_parser("keys", help="on the server host: the keys that sign access tokens")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    key_commands.add_parser(
        "rotate",
        parents=[common],
        help="make a new signing key current; the previous one stays published until its "
        "tokens have expired (every server follows within a second)",
    )
    key_commands.add_parser(
        "list", parents=[common], help="every signing key: kid, state, created, retired"
    )

    operator.add_commands(commands)
    audit_export.add_command(commands, common)

    hint = commands.add_parser("hint", help="print grpcurl commands to get started")
    hint.add_argument("--listen", default=None)
    hint.add_argument("--token-file", default="var/admin-token")
    hint.add_argument(
        "--replica",
        action="append",
        default=[],
        help="another address of the same service (make run-cluster); repeatable",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env().replace(
            database_url=getattr(args, "database_url", None),
            log_level=getattr(args, "log_level", None),
            listen=getattr(args, "listen", None),
            cache_max_entries=getattr(args, "cache_max_entries", None),
            workers=getattr(args, "workers", None),
            server=getattr(args, "server", None),
        )
        stop_logging = logs.configure(settings.log_level)
        try:
            outcome = _run(args, settings)
        finally:
            stop_logging()
        if isinstance(outcome, (_Exec, _Exit)):
            return outcome.run()
        return outcome
    except (AuthorityError, SettingsError) as error:
        print(f"authority: {error}", file=sys.stderr)
        return 1
    except SQLAlchemyError as error:
        # An unusable database URL or a database that is down: say so in one line.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(f"authority: database: {type(error).__name__}: {first_line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


@dataclass(frozen=True)
class _Exec:
    """Become another program (the thin server's supervisor), once this one's logs are out."""

    argv: list[str]
    env: dict[str, str]

    def run(self) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execve(self.argv[0], self.argv, self.env)  # noqa: S606 - our own argv, no shell
        except OSError as error:
            print(f"authority: cannot start the thin server: {error.strerror}", file=sys.stderr)
        return 1


@dataclass(frozen=True)
class _Exit:
    """End a server that has stopped, without the interpreter's teardown: its calls are drained
    and its store closed, and grpcio's teardown is what can hang (server.StopDeadline)."""

    code: int

    def run(self) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(self.code)


def _run(args: argparse.Namespace, settings: Settings) -> int | _Exec | _Exit:
    from authority.store.database import migrate

    if args.command == "migrate":
        migrate(settings.database_url)
        print(f"database at the newest schema: {_safe_url(settings.database_url)}")
        return 0
    if args.command == "serve":
        from authority import workers
        from authority.server import run_loop, serve
        from authority.thin_server import command

        if args.worker_of is not None:  # the parent migrated and checked the pepper
            if settings.server == "thin":
                return _Exec(*command(settings, parent=args.worker_of))
            run_loop(serve(settings, parent=args.worker_of), settings.event_loop)
            return _Exit(0)
        workers.check(settings)
        migrate(settings.database_url)
        if settings.workers > 1:
            _check_pepper(settings)
            return workers.supervise(settings)
        if settings.server == "thin":
            # Here, so that a wrong pepper is this one line, not Envoy's app failing to start;
            # then this process becomes the supervisor (thin_server.py), shedding what it
            # imported to migrate and check.
            _check_pepper(settings)
            return _Exec(*command(settings))
        run_loop(serve(settings), settings.event_loop)
        return _Exit(0)
    if args.command in ("bootstrap", "break-glass"):
        from authority.server import build_application, check_pepper

        migrate(settings.database_url)
        application = build_application(settings)
        try:
            check_pepper(application)
            if args.command == "bootstrap":
                issued = application.installation.bootstrap(args.name)
                done = f"Created global administrator {args.name!r}"
            else:
                issued = application.installation.break_glass(args.name)
                done = f"Break-glass: issued a new global-administrator token for {args.name!r}"
                logging.getLogger("authority.break_glass").warning(
                    "break-glass: a global-administrator token was issued on the server host",
                    extra={"principal": args.name, "token_id": issued.record.token_id},
                )
        finally:
            application.executor.shutdown()
            application.store.dispose()
        if not args.quiet:
            print(f"{done} (token id {issued.record.token_id}).")
            print("Its token follows. It is shown only this once; keep it secret.")
        print(issued.secret)
        return 0
    if args.command == "keys":
        return _keys(args, settings)
    if args.command == "audit":
        return audit_export.run(args, settings)
    if args.command in ("org", "token", "validate"):
        return operator.run(args, settings.listen)
    if args.command == "hint":
        # Absolute, so that the lines work when pasted in a terminal opened anywhere.
        token_file = Path(args.token_file).absolute()
        if args.replica:
            _print_cluster_hint([settings.listen, *args.replica], token_file)
        else:
            _print_hint(settings.listen, token_file)
        return 0
    raise AssertionError(args.command)


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    """`authority keys rotate|list`, against the database like `bootstrap` (its access is the
    authority); never prints a private key."""
    from authority.domain.signing import KeyView
    from authority.server import build_application, check_pepper
    from authority.store.database import migrate

    migrate(settings.database_url)
    application = build_application(settings)
    try:
        check_pepper(application)
        if args.keys_command == "rotate":
            rotated = application.signing.rotate_on_host()
            logging.getLogger("authority.keys").warning(
                "signing key rotated on the server host",
                extra={"kid": rotated.kid, "retired_kid": rotated.retired_kid or ""},
            )
            print(f"New signing key {rotated.kid} is current.")
            if rotated.retired_kid:
                print(f"Retired {rotated.retired_kid}: published until its tokens have expired.")
            return 0
        views: list[KeyView] = application.signing.views()
    finally:
        application.executor.shutdown()
        application.store.dispose()
    if not views:
        print("No signing key yet: the first server to start makes one.")
    for view in views:
        retired = view.retired_at.isoformat() if view.retired_at else "-"
        until = view.published_until.isoformat() if view.published_until else "-"
        print(
            f"{view.kid}  {view.state.value:<7}  created {view.created_at.isoformat()}  "
            f"retired {retired}  published until {until}"
        )
    return 0


def _check_pepper(settings: Settings) -> None:
    """Once, before workers or the thin server's Envoy start: creates the pepper file if
    there is none (processes racing to create it would read each other's half-written file)
    and refuses a wrong one, in one line."""
    from authority.server import build_application, check_pepper

    application = build_application(settings)
    try:
        check_pepper(application)
    finally:
        application.executor.shutdown()
        application.store.dispose()


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _grpcurl() -> str:
    # The grpcurl installed beside this interpreter (.venv/bin), by its absolute path, so that
    # the lines paste as they are in a fresh terminal, whatever its directory and PATH.
    beside = Path(sys.executable).parent / "grpcurl"
    return shlex.quote(str(beside.absolute())) if beside.exists() else "grpcurl"


def _print_hint(listen: str, token_file: Path) -> None:
    token = f"$(cat {shlex.quote(str(token_file))})"
    grpcurl = _grpcurl()
    print(
        f"""
Token Authority is starting on {listen} (Ctrl-C stops it).
The administrator token is in {token_file}. In another terminal, paste:

  {grpcurl} -plaintext {listen} list
  ORG="acme-$(date +%s)-$RANDOM"   # a new organisation each time you paste these lines
  {grpcurl} -plaintext -H "authorization: Bearer {token}" \\
    -d "{{\\"name\\": \\"$ORG\\", \\"display_name\\": \\"Acme Inc.\\"}}" \\
    {listen} authority.v1.Admin/CreateOrganization
  {grpcurl} -plaintext -H "authorization: Bearer {token}" \\
    -d "{{\\"organization\\": \\"$ORG\\", \\"scopes\\": [\\"download-only\\"]}}" \\
    {listen} authority.v1.TokenAuthority/IssueToken

README.md has the whole session.
""",
        flush=True,
    )


def _print_cluster_hint(addresses: list[str], token_file: Path) -> None:
    """Lines that issue a token through the first replica, validate it on every one, revoke
    it through the second and validate again: REASON_REVOKED everywhere."""
    token = f"$(cat {shlex.quote(str(token_file))})"
    grpcurl = _grpcurl()
    first, revoker = addresses[0], addresses[1 % len(addresses)]
    every = " ".join(addresses)
    validate = (
        f'{grpcurl} -plaintext -d "{{\\"token\\": \\"$SECRET\\"}}" '
        "$ADDR authority.v1.TokenAuthority/Validate"
    )
    extract = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"secret\"])'"
    extract_id = 'python3 -c \'import json,sys; print(json.load(sys.stdin)["token"]["token_id"])\''
    print(
        f"""
Token Authority is starting {len(addresses)} replicas on one database: {", ".join(addresses)}
(Ctrl-C stops them all). The administrator token is in {token_file}.
In another terminal, paste:

  AUTH="authorization: Bearer {token}"
  ORG="acme-$(date +%s)-$RANDOM"   # a new organisation each time you paste these lines
  {grpcurl} -plaintext -H "$AUTH" -d "{{\\"name\\": \\"$ORG\\"}}" \\
    {first} authority.v1.Admin/CreateOrganization
  ISSUED=$({grpcurl} -plaintext -H "$AUTH" -d "{{\\"organization\\": \\"$ORG\\"}}" \\
    {first} authority.v1.TokenAuthority/IssueToken)
  SECRET=$(echo "$ISSUED" | {extract})
  TOKEN_ID=$(echo "$ISSUED" | {extract_id})
  for ADDR in {every}; do  # valid on each (each caches it)
    {validate}
  done
  {grpcurl} -plaintext -H "$AUTH" -d "{{\\"token_id\\": \\"$TOKEN_ID\\"}}" \\
    {revoker} authority.v1.TokenAuthority/RevokeToken
  for ADDR in {every}; do  # REASON_REVOKED on each, within ~100 ms
    {validate}
  done

README.md ("Running several replicas") says what is promised and how it is tested.
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
