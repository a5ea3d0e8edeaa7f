"""`incentive db ...`: database administration (roles for auditors, the derived contract heads).

``incentive db grant-auditor ROLE`` gives an auditor a PostgreSQL role that can read the ledger and nothing
else: it can run ``incentive audit verify|replay|reproduce|export`` against the production database, and
the database itself refuses every INSERT, UPDATE, DELETE or TRUNCATE it attempts (on top of the append-only
triggers, which refuse UPDATE and DELETE to everyone). SQLite has no roles: anyone who can open the file can
write it, so there the command refuses with a clear message.

What the command does, in one transaction, idempotently:

1. refuse unless the ledger is on PostgreSQL and at the head migration;
2. refuse a role that could not be made read-only: the connecting user itself, a superuser, the owner of
   the ledger table, or a role that would still hold a write privilege through a role it belongs to;
3. create the role if it does not exist (``LOGIN`` by default, ``--nologin`` for a group role that people
   are then made members of; ``--password`` or ``$INCENTIVE_AUDITOR_PASSWORD`` sets its password);
4. revoke every privilege the role holds on the tables, sequences and functions of the ledger's schema,
   then grant ``CONNECT`` on the database, ``USAGE`` on the schema and ``SELECT`` on the ledger tables
   (``ledger_event`` and Alembic's ``alembic_version``, which ``audit verify`` checks);
5. check the result with ``has_table_privilege``: SELECT granted, no write privilege left.

Run it again after ``incentive init`` adds tables in a later migration: the grants are recomputed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

import typer
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from ..errors import EngineError
from .tables import TABLE

db_app = typer.Typer(no_args_is_help=True, help="Database administration.")

# The tables an auditor reads: the event log, and the migration marker that `audit verify` checks.
AUDITOR_TABLES: tuple[str, ...] = (TABLE, "alembic_version")
WRITE_PRIVILEGES: tuple[str, ...] = ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
_ROLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
NEEDS_POSTGRES = "grant-auditor needs PostgreSQL: SQLite has no roles (anyone who can open the file can write it)"
# Serialises concurrent grant-auditor runs (CREATE ROLE would otherwise race on the role's name).
_GRANT_LOCK = 0x1D5E_2A0B_7C41_93E7


def _quote_literal(value: str) -> str:
    """A SQL string literal (``standard_conforming_strings`` is checked to be on before this is used)."""
    if "\x00" in value:
        raise EngineError("the password cannot contain a NUL character")
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class AuditorGrant:
    """What ``grant_auditor`` did."""

    role: str
    created: bool
    database: str
    schema: str
    tables: tuple[str, ...]


def grant_auditor(conn: Connection, role: str, *, password: str | None = None, login: bool = True) -> AuditorGrant:
    """Make ``role`` a read-only reader of the ledger on ``conn``'s PostgreSQL database, inside the caller's
    transaction (nothing is left half-done if any step is refused)."""
    if conn.dialect.name != "postgresql":
        raise EngineError(NEEDS_POSTGRES)
    if not _ROLE_NAME.match(role):
        raise EngineError(f"role name {role!r}: use 1-63 letters, digits and _ (not starting with a digit)")
    if password is not None and conn.exec_driver_sql("SHOW standard_conforming_strings").scalar() != "on":
        raise EngineError("standard_conforming_strings is off on this server: set the password with ALTER ROLE")
    q = conn.dialect.identifier_preparer.quote_identifier
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _GRANT_LOCK})

    row = conn.execute(
        text(
            "SELECT n.nspname, pg_get_userbyid(c.relowner), current_user, current_database() "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(:t)"
        ),
        {"t": TABLE},
    ).first()
    if row is None:
        raise EngineError(f"there is no {TABLE} table on this database: run `incentive init` first")
    schema, owner, me, database = (str(x) for x in row)
    if role == me:
        raise EngineError(f"{role!r} is the role this command connects as: an auditor needs a role of its own")
    if role == owner:
        raise EngineError(f"{role!r} owns the ledger table: an owner can always write it; pick another role")

    existing = conn.execute(
        text("SELECT rolsuper, rolbypassrls, rolcreaterole FROM pg_roles WHERE rolname = :r"), {"r": role}
    ).first()
    created = existing is None
    attributes = f"{'LOGIN' if login else 'NOLOGIN'} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
    secret = f" PASSWORD {_quote_literal(password)}" if password is not None else ""
    if created:
        conn.exec_driver_sql(f"CREATE ROLE {q(role)} {attributes}{secret}")
    else:
        superuser, bypassrls, createrole = existing
        if superuser or bypassrls or createrole:
            what = "a superuser" if superuser else "a role with BYPASSRLS" if bypassrls else "a role with CREATEROLE"
            raise EngineError(f"{role!r} is {what}: it cannot be made read-only; pick another role")
        conn.exec_driver_sql(f"ALTER ROLE {q(role)} {'LOGIN' if login else 'NOLOGIN'}{secret}")
    member_of_owner = conn.execute(text("SELECT pg_has_role(:r, :o, 'MEMBER')"), {"r": role, "o": owner}).scalar()
    if member_of_owner:
        raise EngineError(f"{role!r} is a member of {owner!r}, the ledger's owner: it could write; pick another role")

    s = q(schema)
    for kind in ("TABLES", "SEQUENCES", "FUNCTIONS"):
        conn.exec_driver_sql(f"REVOKE ALL ON ALL {kind} IN SCHEMA {s} FROM {q(role)}")
    conn.exec_driver_sql(f"REVOKE CREATE ON SCHEMA {s} FROM {q(role)}")
    conn.exec_driver_sql(f"REVOKE CREATE, TEMPORARY ON DATABASE {q(database)} FROM {q(role)}")
    conn.exec_driver_sql(f"GRANT CONNECT ON DATABASE {q(database)} TO {q(role)}")
    conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {s} TO {q(role)}")
    tables = [
        t for t in AUDITOR_TABLES if conn.execute(text("SELECT to_regclass(:t)"), {"t": f"{schema}.{t}"}).scalar()
    ]
    conn.exec_driver_sql(f"GRANT SELECT ON {', '.join(f'{s}.{q(t)}' for t in tables)} TO {q(role)}")

    # Check the outcome as the server sees it (membership in other roles, grants to PUBLIC included).
    problems = []
    for t in tables:
        name = f"{schema}.{t}"
        if not conn.execute(text("SELECT has_table_privilege(:r, :t, 'SELECT')"), {"r": role, "t": name}).scalar():
            problems.append(f"cannot SELECT {name}")
        for priv in WRITE_PRIVILEGES:
            granted = conn.execute(
                text("SELECT has_table_privilege(:r, :t, :p)"), {"r": role, "t": name, "p": priv}
            ).scalar()
            if granted:
                problems.append(f"still has {priv} on {name} (through PUBLIC or a role it belongs to)")
    if problems:
        raise EngineError(f"{role!r} could not be made a read-only auditor: " + "; ".join(problems))
    return AuditorGrant(role, created, database, schema, tuple(tables))


@db_app.command("grant-auditor")
def grant_auditor_command(
    ctx: typer.Context,
    role: Annotated[str, typer.Argument(help="the PostgreSQL role to create or restrict")],
    password: Annotated[
        str | None,
        typer.Option(
            "--password",
            envvar="INCENTIVE_AUDITOR_PASSWORD",
            help="the role's password (prefer $INCENTIVE_AUDITOR_PASSWORD: a command line is visible to others)",
            show_default=False,
        ),
    ] = None,
    nologin: Annotated[bool, typer.Option("--nologin", help="a group role (NOLOGIN) instead of a login role")] = False,
) -> None:
    """Create (if needed) a PostgreSQL role that can read the ledger and nothing else (PostgreSQL only)."""
    from . import render

    ledger = ctx.obj.ledger
    if ledger.dialect != "postgresql":
        raise EngineError(NEEDS_POSTGRES)
    ledger.check_schema()
    try:
        with ledger.engine.begin() as conn:
            done = grant_auditor(conn, role, password=password, login=not nologin)
    except DBAPIError as exc:
        first = str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc)
        raise EngineError(
            f"grant-auditor failed (the connecting role needs CREATEROLE and to own the ledger): {first}"
        ) from None
    verb = "Created" if done.created else "Updated"
    render.out.print(
        f"{verb} role {role}: CONNECT on {done.database}, USAGE on schema {done.schema}, "
        f"SELECT on {', '.join(done.tables)}; "
        "no INSERT, UPDATE, DELETE or TRUNCATE.",
        highlight=False,
        markup=False,
    )


@db_app.command("rebuild-heads")
def rebuild_heads_command(ctx: typer.Context) -> None:
    """Refill the contract heads (derived data the ingest's rules read) from the events, under the writer's
    lock: after restoring the ledger table without them. Both databases."""
    from . import render
    from .store import rebuild_contract_heads

    ledger = ctx.obj.ledger
    with ledger.writer() as w:
        rows = rebuild_contract_heads(w.conn)
    render.out.print(f"Rebuilt contract_head from the events: {rows} contracts.", highlight=False, markup=False)
