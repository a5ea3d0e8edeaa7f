"""Shared fixtures: a fresh, empty ledger database per test, on SQLite and (when configured) PostgreSQL.

- ``db_kind``: ``"sqlite"`` or ``"postgres"``; tests that use it (or ``ledger_url``/``ledger``) run on both.
  PostgreSQL runs when ``INCENTIVE_TEST_PG`` holds a server URL such as
  ``postgresql+psycopg://postgres@127.0.0.1:5432/test``; unset, those cases are skipped; set but the
  server unreachable, they fail (a CI that silently skipped PostgreSQL would prove nothing).
- ``fresh_db_urls``: a factory ``make(kind) -> url`` for as many fresh databases as a test needs (e.g. CLI
  tests that run subprocesses); each PostgreSQL one is a new uniquely named database, dropped afterwards
  (tests run in parallel under pytest-xdist).
- ``ledger_url``: one fresh, *uninitialised* database URL of kind ``db_kind``.
- ``ledger``: an initialised ``Ledger`` on ``ledger_url``.
- ``blank_sqlite_ledger``: the file of an initialised, empty SQLite ledger, one per test module, for tests
  that copy it and write rows of their own (cheaper than migrating a new file per example).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

from incentive_engine.shell.store import Ledger

PG_ENV = "INCENTIVE_TEST_PG"
PG_URL = os.environ.get(PG_ENV, "").strip() or None
DB_KINDS = ("sqlite", "postgres")

FreshDbUrls = Callable[[str], str]


@pytest.fixture(scope="session")
def _pg_admin() -> Iterator[Engine | None]:
    """An AUTOCOMMIT engine on the test server (CREATE/DROP DATABASE cannot run in a transaction)."""
    if PG_URL is None:
        yield None
        return
    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 10})
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def fresh_db_urls(_pg_admin: Engine | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreshDbUrls]:
    """``make(kind)`` returns the URL of a new, empty database (``kind``: ``sqlite`` or ``postgres``)."""
    created: list[str] = []
    sqlite_dir: list[Path] = []

    def make(kind: str) -> str:
        if kind == "sqlite":
            if not sqlite_dir:
                sqlite_dir.append(tmp_path_factory.mktemp("ledger"))
            return f"sqlite:///{sqlite_dir[0] / f'ledger-{uuid.uuid4().hex[:8]}.db'}"
        if kind != "postgres":
            raise ValueError(f"unknown database kind {kind!r}; use one of {DB_KINDS}")
        if _pg_admin is None:
            pytest.skip(f"{PG_ENV} is not set")
        name = f"incentive_t_{uuid.uuid4().hex}"
        try:
            with _pg_admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        except DBAPIError as exc:
            pytest.fail(f"{PG_ENV} is set but the PostgreSQL server is unusable: {exc.orig}")
        created.append(name)
        return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)

    yield make

    if _pg_admin is not None and created:
        with _pg_admin.connect() as conn:
            for name in created:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param(
            "postgres", id="postgres", marks=pytest.mark.skipif(PG_URL is None, reason=f"{PG_ENV} is not set")
        ),
    ]
)
def db_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ledger_url(db_kind: str, fresh_db_urls: FreshDbUrls) -> str:
    """A fresh database with no schema yet."""
    return fresh_db_urls(db_kind)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """An initialised, empty ledger."""
    led = Ledger(ledger_url)
    led.init()
    try:
        yield led
    finally:
        led.dispose()


def module_pg_database(request: pytest.FixtureRequest, admin: Engine | None) -> str:
    """A fresh PostgreSQL database for a module-scoped fixture (dropped when the module is done)."""
    if admin is None:
        pytest.skip(f"{PG_ENV} is not set")
    name = f"incentive_m_{uuid.uuid4().hex}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except DBAPIError as exc:
        pytest.fail(f"{PG_ENV} is set but the PostgreSQL server is unusable: {exc.orig}")

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    request.addfinalizer(drop)
    assert PG_URL is not None
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def blank_sqlite_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("blank") / "ledger.db"
    with Ledger(f"sqlite:///{path}") as led:
        led.init()
    return path
