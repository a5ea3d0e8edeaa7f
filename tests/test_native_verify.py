"""The native chain checker (``shell/_chain_sqlite.c``) against the Python verifier it stands in for.

``Ledger.verify`` trusts the native pass only when it says every row is good; so what must hold is that it
never says so of a ledger the Python verifier rejects, and that it says so of every ledger the Python
verifier accepts (else it would only cost time). Rows are written straight into the table, hashed by
``core.canonical``, with text the event models would never let through (control characters, quotes,
backslashes, characters outside the BMP, U+2028), so that the JSON escaping is compared where it matters.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from incentive_engine.core.canonical import GENESIS_HASH, canonical_json, chain_hash, content_hash
from incentive_engine.shell import store
from incentive_engine.shell.store import RECORD_TEXT, Ledger

needs_native = pytest.mark.skipif(
    store._chain_sqlite is None and not os.environ.get("CI"), reason="the native checker is not built here"
)


@needs_native
def test_the_native_checker_is_built() -> None:
    # in CI it must be: without it verify silently falls back to the (4-5x slower) Python verifier
    assert store._chain_sqlite is not None, "incentive_engine/shell/_chain_sqlite.c did not build (see setup.py)"


Row = tuple[int, str, int, str, str, str | None, str, str, str, str]


def chained(records: list[tuple[str, str | None, str, str, str, dict[str, str]]]) -> list[Row]:
    """Rows as the writer stores them: positions 1.., consecutive versions per stream, chained hashes."""
    rows: list[Row] = []
    prev, versions = GENESIS_HASH, {}
    for position, (stream, event_id, type_, effective, recorded_at, payload) in enumerate(records, 1):
        event_id = None if event_id is None else f"{event_id}#{position}"  # event ids are unique
        versions[stream] = versions.get(stream, 0) + 1
        text = canonical_json(payload)
        prev = chain_hash(
            prev, RECORD_TEXT(position, stream, versions[stream], type_, effective, event_id, recorded_at, text)
        )
        rows.append(
            (position, stream, versions[stream], type_, effective, event_id, recorded_at, text,
             content_hash(type_, effective, text), prev)
        )  # fmt: skip
    return rows


def ledger_with(blank_sqlite_ledger: Path, where: Path, rows: list[Any]) -> str:
    path = where / f"ledger-{len(os.listdir(where))}.db"
    shutil.copy(blank_sqlite_ledger, path)
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.executemany("INSERT INTO ledger_event VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    finally:
        con.close()
    return str(path)


def both(path: str) -> tuple[tuple[bool, int] | None, tuple[Any, int]]:
    """The native verdict (one thread, and the same ledger split in two threads: they must agree) and
    the Python verifier's (first problem, rows)."""
    native = store._chain_sqlite.verify(path)
    split = store._chain_sqlite.verify(path, 1)  # two halves from 1 row on (2+ rows): positions 1..n/2, the rest
    assert (native is None) == (split is None)
    if native is not None and split is not None:
        assert split[0] == native[0], (native, split)
        if native[0]:
            assert split == native
    con = sqlite3.connect(path)
    try:
        python = store._verify_rows(
            con.execute(f"SELECT {', '.join(store.COLUMNS)} FROM ledger_event ORDER BY position")
        )
    finally:
        con.close()
    return native, python


ODD = '"\\/\b\f\n\r\t\x00\x01\x1f\x7f\u2028\u00e9\u4e2d\U0001f600'
ODD_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(ODD),
        st.characters(codec="utf-8"),
    ),
    min_size=1,
    max_size=12,
)
RECORDS = st.lists(
    st.tuples(
        st.sampled_from(["contract:C1", "rep:R1"]) | ODD_TEXT,
        st.none() | ODD_TEXT,
        st.sampled_from(["service.cost", "rep.hired"]) | ODD_TEXT,
        st.sampled_from(["2026-01-31"]) | ODD_TEXT,
        st.sampled_from(["2026-02-01T00:00:00.000000Z"]) | ODD_TEXT,
        st.dictionaries(ODD_TEXT, ODD_TEXT, max_size=3),
    ),
    min_size=1,
    max_size=8,
)


@needs_native
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=RECORDS)
@example(records=[(ODD, ODD, ODD, ODD, ODD, {ODD: ODD})] * 2)
@example(records=[(c, c, c, c, c, {c: c}) for c in ODD])
def test_both_accept_every_well_chained_ledger(blank_sqlite_ledger: Path, tmp_path: Path, records: list[Any]) -> None:
    rows = chained(records)
    native, (bad, count) = both(ledger_with(blank_sqlite_ledger, tmp_path, rows))
    assert bad is None and count == len(rows)
    assert native == (True, len(rows))


# what a tamperer may change in a row: (column index, new value); each breaks the chain or a rule
EDITS = [
    (1, "contract:other"), (2, 99), (3, "rep.hired2"), (4, "2020-01-01"), (5, "ev-x"), (5, None), (6, "2026"),
    (7, '{"amount":"1"}'), (8, "0" * 64), (9, "f" * 64), (9, "F" * 64), (7, b"{}"), (2, "1"), (0, 1000),
]  # fmt: skip


@needs_native
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=RECORDS, at=st.integers(0, 7), edit=st.sampled_from(EDITS))
def test_the_native_checker_rejects_whatever_the_python_verifier_rejects(
    blank_sqlite_ledger: Path, tmp_path: Path, records: list[Any], at: int, edit: tuple[int, Any]
) -> None:
    rows = [list(r) for r in chained(records)]
    column, value = edit
    row = rows[at % len(rows)]
    if row[column] == value:
        return  # not an edit
    row[column] = value
    try:
        path = ledger_with(blank_sqlite_ledger, tmp_path, rows)
    except sqlite3.IntegrityError:  # the edit collides with a unique key: the table itself refuses it
        assume(False)
    native, (bad, count) = both(path)
    if bad is None:  # the edit left a valid ledger (e.g. the last row's position moved on: still 1..n)
        assert native == (True, count)
    else:
        assert native is not None and native[0] is False


@needs_native
def test_verify_reports_the_same_through_either_path(ledger_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if not ledger_url.startswith("sqlite"):
        pytest.skip("the native checker reads SQLite files")
    path = ledger_url.removeprefix("sqlite:///")
    with Ledger(ledger_url) as led:
        led.init()
    con = sqlite3.connect(path, isolation_level=None)
    rows = chained([("contract:C1", None, "service.cost", "2026-01-31", "t", {"amount": str(i)}) for i in range(9)])
    con.executemany("INSERT INTO ledger_event VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    reports = []
    for native in ("1", "0"):
        monkeypatch.setenv("INCENTIVE_NATIVE", native)
        with Ledger(ledger_url) as led:
            reports.append(led.verify())
    assert reports[0] == reports[1] and reports[0].ok and reports[0].events == 9
    con.execute("DROP TRIGGER ledger_event_no_update")
    con.execute('UPDATE ledger_event SET payload = \'{"amount":"7"}\' WHERE position = 4')
    con.close()
    reports = []
    for native in ("1", "0"):
        monkeypatch.setenv("INCENTIVE_NATIVE", native)
        with Ledger(ledger_url) as led:
            reports.append(led.verify())
    assert reports[0] == reports[1]
    assert (reports[0].ok, reports[0].first_bad_position, reports[0].events) == (False, 4, 3)


# --- PostgreSQL: the chain checked by the server (store._server_verify) --------------------------------

PG_TEXT = ODD_TEXT.filter(lambda t: "\x00" not in t)  # PostgreSQL text cannot hold NUL
PG_RECORDS = st.lists(
    st.tuples(PG_TEXT, st.none() | PG_TEXT, PG_TEXT, PG_TEXT, PG_TEXT, st.dictionaries(PG_TEXT, PG_TEXT, max_size=3)),
    min_size=1,
    max_size=8,
)


@pytest.fixture
def pg_schemas(fresh_db_urls: Any) -> Any:
    """``make(rows) -> connection`` whose search path finds a new ``ledger_event`` table holding ``rows``
    (a schema per example, in one database)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(fresh_db_urls("postgres"), poolclass=NullPool)  # no idle connections kept
    with Ledger(str(engine.url.render_as_string(hide_password=False))) as led:
        led.init()
    made = []

    def make(rows: list[Any]) -> Any:
        name = f"s{len(made)}"
        made.append(name)
        conn = engine.connect()
        conn.exec_driver_sql(f"CREATE SCHEMA {name}")
        conn.exec_driver_sql(f"CREATE TABLE {name}.ledger_event (LIKE public.ledger_event INCLUDING ALL)")
        conn.exec_driver_sql(f"SET search_path TO {name}")
        try:
            conn.exec_driver_sql(
                "INSERT INTO ledger_event VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", [tuple(r) for r in rows]
            )
        except Exception:
            conn.close()
            raise
        conn.commit()
        return conn

    yield make
    engine.dispose()


def both_on_postgres(conn: Any) -> tuple[tuple[bool, int] | None, tuple[Any, int]]:
    server = store._server_verify(conn)
    conn.rollback()
    cur = conn.connection.dbapi_connection.cursor()
    cur.execute(f"SELECT {', '.join(store.COLUMNS)} FROM ledger_event ORDER BY position")
    python = store._verify_rows(cur.fetchall())
    conn.close()
    return server, python


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=PG_RECORDS)
@example(records=[(c, c, c, c, c, {c: c}) for c in ODD if c != "\x00"])
def test_the_server_accepts_every_well_chained_ledger(pg_schemas: Any, records: list[Any]) -> None:
    rows = chained(records)
    server, (bad, count) = both_on_postgres(pg_schemas(rows))
    assert bad is None and count == len(rows)
    assert server == (True, len(rows))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=PG_RECORDS, at=st.integers(0, 7), edit=st.sampled_from([e for e in EDITS if not isinstance(e[1], bytes)])
)
def test_the_server_rejects_whatever_the_python_verifier_rejects(
    pg_schemas: Any, records: list[Any], at: int, edit: tuple[int, Any]
) -> None:
    rows = [list(r) for r in chained(records)]
    column, value = edit
    row = rows[at % len(rows)]
    if column in (0, 2) and isinstance(value, str):
        value = int(value)  # PostgreSQL's integer columns take integers only
    if row[column] == value:
        return
    row[column] = value
    from sqlalchemy.exc import IntegrityError

    try:
        conn = pg_schemas(rows)
    except IntegrityError:
        assume(False)
    server, (bad, count) = both_on_postgres(conn)
    if bad is None:
        assert server == (True, count)
    else:
        assert server is not None and server[0] is False


@needs_native
@pytest.mark.parametrize("version", [3, 5, 0])
def test_two_threads_join_stream_versions_at_the_boundary(
    blank_sqlite_ledger: Path, tmp_path: Path, version: int
) -> None:
    """Split in two, a stream's first version in the second half must follow its last in the first: a
    version that does not (R1 at 1 in the first half, at ``version`` in the second) is refused by both
    verifiers, though each half alone looks consecutive and every hash is right."""
    at = "2026-02-01T00:00:00.000000Z"
    records = [
        ("contract:C1", None, "service.cost", "2026-01-31", at, {"a": "1"}),
        ("rep:R1", None, "rep.hired", "2026-01-31", at, {"b": "2"}),
        ("contract:C1", None, "service.cost", "2026-01-31", at, {"a": "3"}),
        ("rep:R1", None, "rep.hired", "2026-01-31", at, {"b": "4"}),
    ]  # halves: positions 1-2 and 3-4, each holding one row of each stream
    rows = [list(r) for r in chained(records)]
    rows[3][2] = version
    prev = rows[2][9]
    rows[3][9] = chain_hash(prev, RECORD_TEXT(*rows[3][:8]))  # the edited row re-chained: only its version is wrong
    path = ledger_with(blank_sqlite_ledger, tmp_path, [tuple(r) for r in rows])
    native, (bad, _) = both(path)  # (both also checks that the two-thread verdict is the one-thread one)
    assert bad is not None and native is not None and native[0] is False
    assert store._chain_sqlite.verify(path, 1)[0] is False
