"""The database roles of the gateway, and the check that `gateway serve` does not run as the owner.

- the app role (GATEWAY_DB_ROLE, default `gateway_app`): NOLOGIN, no superuser, no BYPASSRLS,
  owning nothing; every query of `gateway serve` runs as it (the connection's startup `role`
  setting, see `connect_settings`), so row-level security applies to every one of them;
- the owners of the cross-space SECURITY DEFINER functions, each with only the policies its
  functions need (migrations/20250101000900_roles_and_row_security.sql): `gateway_reader`
  (loader and API-key cache), `gateway_bookkeeper` (last-used touches, installation_count),
  `gateway_rotator` (rotate-keys), `gateway_auditor` (the audit log's triggers and verifier),
  `gateway_courier` (the webhook outbox's triggers and delivery workers, migration 1200).

`gateway migrate` creates the roles that are missing before the migrations run (they name them)
and grants the app role its privileges after. Where the migrating login may not create roles,
it stops and prints the statements for someone who may.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

DEFINER_OWNERS = ("gateway_reader", "gateway_bookkeeper", "gateway_rotator", "gateway_auditor", "gateway_courier")

# Tables the app role reads and writes (row-level security decides which rows).
READ_WRITE = ("service_registry", "service_api_routes", "service_ui_components", "service_installations",
              "infrastructure_instances", "instance_services", "service_management_assignments",
              "api_keys", "service_maintainers")
# The host platform's: read only. The audit log: insert (by its triggers) and read, never more.
READ_ONLY = ("users", "spaces", "space_members")
APPEND_ONLY = ("audit_log",)
# The gateway's own tables the app role only reads (row-level security decides which rows): the
# webhook outbox is written by its definer functions only.
OWN_READ_ONLY = ("webhook_deliveries",)

CROSS_SPACE_FUNCTIONS = (
    "gateway_live_routes()", "gateway_live_installations()", "gateway_routes_fingerprint()",
    "gateway_live_api_keys()", "gateway_api_keys_by_id(uuid[])", "gateway_api_key_by_hash(bytea)",
    "gateway_api_keys_fingerprint()", "gateway_touch_api_keys(uuid[], timestamptz)",
    "gateway_lock_service(uuid, text)", "gateway_record_health(uuid[], text[], timestamptz)",
    "gateway_service_health(uuid)", "gateway_live_assignments()", "gateway_touch_assignments(uuid[], timestamptz)",
    "gateway_sealed_batch(text, text, uuid, integer)", "gateway_reseal(text, uuid, jsonb, jsonb)",
    "gateway_webhook_claim(integer, integer, text[], integer[], double precision)",
    "gateway_webhook_record(uuid, uuid, text, integer, text, double precision)",
    "gateway_webhook_redeliver(uuid, uuid)",
)


class RoleSetupNeeded(Exception):
    """The migrating login may not create roles: `statements` are what to run instead."""

    def __init__(self, statements: list[str]) -> None:
        super().__init__("\n".join(statements))
        self.statements = statements


class UnsafeRole(Exception):
    """`gateway serve` would run its queries as a role that row-level security does not hold."""


def create_role_statement(name: str) -> str:
    return f"CREATE ROLE {name} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"


async def ensure_roles(conn: asyncpg.Connection, app_role: str) -> list[str]:
    """Create the missing roles; the names created. RoleSetupNeeded when not allowed to."""
    wanted = (app_role, *DEFINER_OWNERS)
    existing = {r["rolname"] for r in await conn.fetch(
        "SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[])", list(wanted))}
    missing = [name for name in wanted if name not in existing]
    me = await conn.fetchrow("SELECT current_user AS login, rolsuper, rolcreaterole FROM pg_roles "
                             "WHERE rolname = current_user")
    # A migrating login that is not a superuser hands the definer functions to their owners, so
    # it must be a member of each (ALTER FUNCTION ... OWNER TO needs that).
    not_member = [] if me["rolsuper"] else [
        name for name in DEFINER_OWNERS
        if name in missing or not await conn.fetchval("SELECT pg_has_role(current_user, $1, 'MEMBER')", name)]
    if not missing and not not_member:
        return []
    if not (me["rolsuper"] or me["rolcreaterole"]):
        statements = [create_role_statement(name) + ";" for name in missing]
        statements += [f"GRANT {name} TO {me['login']};" for name in not_member]
        raise RoleSetupNeeded(statements)
    for name in missing:
        await conn.execute(create_role_statement(name))
    for name in not_member:
        await conn.execute(f"GRANT {name} TO {me['login']}")
    return missing


def grant_statements(app_role: str, present: set[str]) -> list[str]:
    """What the app role may do: the privileges the gateway uses, on the tables that exist."""
    statements = [f"GRANT USAGE ON SCHEMA public TO {app_role}"]
    rw = ", ".join(f"public.{t}" for t in READ_WRITE if t in present)
    statements.append(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {rw} TO {app_role}")
    ro = ", ".join(f"public.{t}" for t in READ_ONLY if t in present)
    statements.append(f"GRANT SELECT ON {ro} TO {app_role}")
    statements.append(f"GRANT SELECT ON public.schema_migrations TO {app_role}")  # /readyz: pending migrations
    for table in APPEND_ONLY:
        if table in present:
            statements.append(f"GRANT SELECT, INSERT ON public.{table} TO {app_role}")
    statements += [f"GRANT SELECT ON public.{table} TO {app_role}" for table in OWN_READ_ONLY if table in present]
    statements.append(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {app_role}")
    statements += [f"GRANT EXECUTE ON FUNCTION public.{f} TO {app_role}" for f in CROSS_SPACE_FUNCTIONS]
    return statements


async def grant_app_role(conn: asyncpg.Connection, app_role: str) -> None:
    present = {r["relname"] for r in await conn.fetch(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'")}
    async with conn.transaction():
        for statement in grant_statements(app_role, present):
            await conn.execute(statement)


def connect_settings(app_role: str) -> dict[str, str]:
    """Startup parameters that make every query of a connection run as the app role. RESET ALL
    (what the pool runs when a connection is returned) goes back to it, not to the login."""
    return {"role": app_role}


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the gateway's queries run as, and who logged in (what /readyz shows)."""

    login: str
    role: str
    login_privileged: bool  # a superuser, BYPASSRLS or owner login: development only


IDENTITY = """
SELECT session_user AS login, current_user AS role,
       r.rolsuper AS role_super, r.rolbypassrls AS role_bypass,
       l.rolsuper OR l.rolbypassrls AS login_bypass,
       EXISTS (SELECT 1 FROM pg_class c
               WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY($1::text[])
                 AND pg_has_role(current_user, c.relowner, 'USAGE')) AS role_owns,
       EXISTS (SELECT 1 FROM pg_class c
               WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY($1::text[])
                 AND pg_has_role(session_user, c.relowner, 'USAGE')) AS login_owns
FROM pg_roles r, pg_roles l
WHERE r.rolname = current_user AND l.rolname = session_user
"""


async def check_identity(conn: asyncpg.Connection, app_role: str) -> Identity:
    """Raise UnsafeRole when the connection's queries would not be held by row-level security."""
    row = await conn.fetchrow(IDENTITY, list(READ_WRITE))
    if row is None:  # current_user is not a role in pg_roles: cannot happen, but never pass
        raise UnsafeRole("the connection's role could not be read")
    role = row["role"]
    if row["role_super"]:
        raise UnsafeRole(f"queries would run as the superuser {role!r}, which row-level security does not hold")
    if row["role_bypass"]:
        raise UnsafeRole(f"queries would run as {role!r}, which has BYPASSRLS")
    if row["role_owns"]:
        raise UnsafeRole(f"queries would run as {role!r}, which owns the gateway's tables (or is a member of their owner)")
    if role != app_role:
        raise UnsafeRole(f"queries run as {role!r}, not as GATEWAY_DB_ROLE {app_role!r}")
    return Identity(row["login"], role, bool(row["login_bypass"] or row["login_owns"]))
