"""The `gateway` command: migrate, serve, demo, create-token, rotate-keys, routes, audit verify."""

from __future__ import annotations

import argparse
import asyncio
import sys
from uuid import UUID

from gateway.logs import setup_logging
from gateway.settings import ConfigError, Settings


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from db.migrate import migrate
    from db.roles import RoleSetupNeeded

    settings.require("migrate_database_url")
    try:
        applied = asyncio.run(migrate(settings.migrate_database_url, app_role=settings.db_role))
    except RoleSetupNeeded as exc:
        print("This login may not create roles. Have a superuser (or a role with CREATEROLE) run:\n\n"
              + "\n".join(exc.statements) + "\n\nthen run `gateway migrate` again.", file=sys.stderr)
        return 2
    print("\n".join(f"applied {name}" for name in applied) or "database is up to date")
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.serve import serve

    return serve(settings, host=args.host or settings.host, port=args.port or settings.port,
                 workers=args.workers or settings.workers)


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _create_token(args: argparse.Namespace, settings: Settings) -> int:
    from auth.jwt import issue_token

    if not settings.jwt_secret:
        raise ConfigError("Config 'GATEWAY_JWT_SECRET' is missing, and has no default.")
    roles = ["platform_admin"] if args.platform_admin else None
    print(issue_token(settings.jwt_secret, args.user_id, roles=roles, lifetime_seconds=args.ttl,
                      issuer=settings.jwt_issuer, audience=settings.jwt_audience))
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from gateway.dev.demo import run_demo

    return run_demo(Path(args.data_dir).resolve(), args.host, args.port)


def _rotate_keys(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.admin import rotate_keys

    settings.require("database_url", "encryption_keys")
    return rotate_keys(settings)


def _routes(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.admin import print_routes

    settings.require("database_url")
    return print_routes(settings)


def _audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.audit import verify

    settings.require("migrate_database_url")
    return verify(settings, space_id=args.space, marketplace=args.marketplace)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Plugin Gateway: registry API and plugin proxy.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = commands.add_parser("migrate", help="apply pending database migrations, then exit")
    migrate.set_defaults(run=_migrate)

    serve = commands.add_parser("serve", help="run the API and proxy server")
    serve.add_argument("--host", help="listen address (default: GATEWAY_HOST)")
    serve.add_argument("--port", type=int, help="listen port (default: GATEWAY_PORT)")
    serve.add_argument("--workers", type=_positive_int, metavar="N",
                       help="worker processes under gunicorn's arbiter (default: GATEWAY_WORKERS). SIGHUP "
                            "checks the code and settings on disk, then replaces the workers; SIGTERM drains "
                            "them (GATEWAY_DRAIN_SECONDS) and exits")
    serve.set_defaults(run=_serve)

    demo = commands.add_parser(
        "demo", help="run a development gateway: local PostgreSQL if needed, keys, migrations, demo rows")
    demo.add_argument("--data-dir", default=".data", help="where keys and the local database live (default .data)")
    demo.add_argument("--host", help="listen address (default: GATEWAY_HOST)")
    demo.add_argument("--port", type=int, help="listen port (default: GATEWAY_PORT)")
    demo.set_defaults(run=_demo)

    rotate = commands.add_parser(
        "rotate-keys", help="re-encrypt every stored credential under the first key of GATEWAY_ENCRYPTION_KEYS "
                            "(safe to re-run and to interrupt)")
    rotate.set_defaults(run=_rotate_keys)

    routes = commands.add_parser("routes", help="print the live route table, as a gateway would build it now")
    routes.set_defaults(run=_routes)

    audit = commands.add_parser("audit", help="the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="AUDIT_COMMAND")
    verify = audit_commands.add_parser(
        "verify", help="recompute the audit log's hash chains (as GATEWAY_MIGRATE_DATABASE_URL): exit 0 with the "
                       "rows checked, 1 naming the first row that does not match")
    which = verify.add_mutually_exclusive_group()
    which.add_argument("--space", type=UUID, metavar="ID", help="only this space's chain (default: every chain)")
    which.add_argument("--marketplace", action="store_true", help="only the marketplace's chain")
    verify.set_defaults(run=_audit_verify)

    token = commands.add_parser("create-token", help="print a development JWT for a user (HS256)")
    token.add_argument("user_id", type=UUID, help="the users.id the token names")
    token.add_argument("--platform-admin", action="store_true", help="add the platform_admin role")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    token.set_defaults(run=_create_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()  # JSON lines on stderr, secrets redacted (gateway/logs.py)
    # A bare exception class: importing it runs nothing of the development services.
    from gateway.dev.errors import DevServiceError

    try:
        return int(args.run(args, Settings.from_env()))
    except (ConfigError, DevServiceError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
