"""Helpers shared by the reliability test modules: the counts they report, and the database as seen from
outside the engine (a plain driver connection, as an operator's or an insider's SQL prompt sees it)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from typing import Any

import psycopg
from sqlalchemy.engine import make_url


def report(line: str) -> None:
    """Print the counts and append them to $INCENTIVE_RELIABILITY_REPORT (for the release notes)."""
    print(line)
    path = os.environ.get("INCENTIVE_RELIABILITY_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


@contextlib.contextmanager
def raw(url: str, user: str | None = None) -> Iterator[Any]:
    """A plain driver connection in autocommit mode (sqlite3 or psycopg); ``user`` connects as another
    PostgreSQL role. SQLite waits up to 30 s for a lock another process holds."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        conn: Any = sqlite3.connect(str(u.database), isolation_level=None, timeout=30)
    else:
        if user is not None:
            u = u.set(username=user, password=None)
        conn = psycopg.connect(u.set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True)
    try:
        yield conn
    finally:
        conn.close()
