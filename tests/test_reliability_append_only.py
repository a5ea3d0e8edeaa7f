"""Append-only, enforced by the database; tampering caught by the hash chain; a read-only auditor role.

- The event log's triggers refuse every UPDATE and DELETE (and TRUNCATE on PostgreSQL), whatever column
  or row is touched, including upserts that would rewrite a row.
- `incentive db grant-auditor ROLE` (PostgreSQL) makes a role that can read the ledger and run the audit
  commands, and that the database refuses INSERT, UPDATE, DELETE, TRUNCATE and DDL.
- An owner who drops the triggers and edits rows is caught by `audit verify` (the hash chain), at the first
  altered position; so is a superuser who bypasses the triggers without dropping them.
- What the chain alone cannot see, said plainly and shown: removing the newest rows, or rewriting a row and
  recomputing every later hash. An exported digest kept elsewhere (`audit export`) catches both.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from incentive_engine.core.canonical import GENESIS_HASH, chain_hash, content_hash, record_text
from incentive_engine.shell import service
from incentive_engine.shell.store import Ledger
from incentive_engine.shell.tables import SQLITE_REPLACE_TRIGGERS

from .cli import incentive, ok
from .reliability import raw, report

COLUMNS = "position, stream_id, stream_version, type, effective, event_id, recorded_at, payload, content_hash, hash"
APPEND_ONLY = "ledger_event is append-only"


def mark(url: str) -> str:
    return "?" if make_url(url).get_backend_name() == "sqlite" else "%s"


def all_rows(url: str) -> list[tuple[Any, ...]]:
    with raw(url) as c:
        return [tuple(r) for r in c.execute(f"SELECT {COLUMNS} FROM ledger_event ORDER BY position")]


@pytest.fixture
def small_ledger(ledger_url: str, tmp_path: Path) -> str:
    """A ledger with reps, contracts, costs, a manual adjustment and two closed cycles (about 120 rows)."""
    events = [
        '{"type":"rep.hired","effective":"2025-12-01","rep_id":"R1","name":"Ann","role":"rep"}',
        '{"type":"rep.hired","effective":"2025-12-01","rep_id":"R2","name":"Bob","role":"rep"}',
    ]
    for k in range(50):
        events.append(
            f'{{"type":"contract.signed","effective":"2026-01-{1 + k % 28:02d}","contract_id":"C{k}",'
            f'"account_id":"A{k}","rep_id":"R{1 + k % 2}","acv":"{120000 + k}.00","currency":"EUR","term_months":24}}'
        )
        events.append(f'{{"type":"service.cost","effective":"2026-02-01","contract_id":"C{k}","amount":"10.00"}}')
    events.append(
        '{"type":"adjustment.recorded","effective":"2026-02-10","event_id":"adj-1","rep_id":"R1","amount":"-50.00",'
        '"currency":"EUR","reason":"correction","approved_by":"CFO"}'
    )
    path = tmp_path / "facts.jsonl"
    path.write_text("\n".join(events) + "\n", encoding="utf-8")
    ok("init", db=ledger_url)
    ok("ingest", str(path), db=ledger_url)
    ok("cycle", "close", "2026-01", db=ledger_url)
    ok("cycle", "close", "2026-02", db=ledger_url)
    return ledger_url


def verify(url: str) -> Any:
    ledger = Ledger(url)
    try:
        return ledger.verify()
    finally:
        ledger.dispose()


# --- the triggers --------------------------------------------------------------------------------------


def write_attempts(url: str, rows: list[tuple[Any, ...]]) -> list[tuple[str, str, tuple[Any, ...]]]:
    """(name, sql, params) of every way to change history through plain SQL that the triggers must refuse."""
    m = mark(url)
    middle = rows[len(rows) // 2]
    attempts: list[tuple[str, str, tuple[Any, ...]]] = []
    for col in COLUMNS.split(", "):
        value: Any = 10**6 if col in ("position", "stream_version") else "x"
        attempts.append(
            (f"update {col}", f"UPDATE ledger_event SET {col} = {m} WHERE position = {m}", (value, middle[0]))
        )
    attempts += [
        ("update every row", "UPDATE ledger_event SET payload = payload", ()),
        ("delete the newest row", f"DELETE FROM ledger_event WHERE position = {m}", (rows[-1][0],)),
        ("delete one row", f"DELETE FROM ledger_event WHERE position = {m}", (middle[0],)),
        ("delete every row", "DELETE FROM ledger_event", ()),
        (
            "upsert over a row",
            f"INSERT INTO ledger_event ({COLUMNS}) VALUES ({', '.join([m] * 10)}) "
            "ON CONFLICT (position) DO UPDATE SET payload = excluded.payload",
            (*middle[:7], '{"forged":true}', *middle[8:]),
        ),
    ]
    if make_url(url).get_backend_name() == "postgresql":
        attempts.append(("truncate", "TRUNCATE ledger_event", ()))
        attempts.append(
            (
                "merge over a row",
                f"MERGE INTO ledger_event t USING (SELECT {m}::bigint AS p) s ON t.position = s.p "
                "WHEN MATCHED THEN UPDATE SET payload = '{}'",
                (middle[0],),
            )
        )
    return attempts


def test_the_database_refuses_every_update_and_delete(small_ledger: str, db_kind: str) -> None:
    url = small_ledger
    before = all_rows(url)
    refused = 0
    with raw(url) as c:
        for _name, sql, params in write_attempts(url, before):
            with pytest.raises(Exception, match=APPEND_ONLY):
                c.execute(sql, params)
            refused += 1
    assert all_rows(url) == before, "a refused statement changed something"
    assert verify(url).ok
    report(f"append-only-triggers/{db_kind}: {refused} UPDATE/DELETE/upsert statements refused, 0 rows changed")


def test_sqlite_insert_or_replace_cannot_rewrite_a_row(ledger_url: str, db_kind: str, small_ledger: str) -> None:
    if db_kind != "sqlite":
        pytest.skip("INSERT OR REPLACE is SQLite's")
    url = small_ledger
    rows = all_rows(url)
    victim = rows[len(rows) // 2]
    forged = (*victim[:7], '{"forged":true}', *victim[8:])
    attempts = [
        f"INSERT OR REPLACE INTO ledger_event ({COLUMNS}) VALUES ({', '.join(['?'] * 10)})",
        f"REPLACE INTO ledger_event ({COLUMNS}) VALUES ({', '.join(['?'] * 10)})",
    ]
    # the same row under a new position but its stream version / event_id: REPLACE would delete the old one
    moved = (rows[-1][0] + 1, *forged[1:])
    refused = 0
    with raw(url) as c:
        for sql in attempts:
            for values in (forged, moved):
                with pytest.raises(sqlite3.DatabaseError, match=APPEND_ONLY):
                    c.execute(sql, values)
                refused += 1
    assert all_rows(url) == rows
    assert verify(url).ok
    report(f"append-only-triggers/sqlite: {refused} INSERT OR REPLACE / REPLACE statements refused, 0 rows changed")


def test_verify_reports_a_dropped_no_replace_trigger(ledger_url: str, db_kind: str, small_ledger: str) -> None:
    if db_kind != "sqlite":
        pytest.skip("the no-replace trigger is SQLite's")
    for name in SQLITE_REPLACE_TRIGGERS:
        with raw(small_ledger) as c:
            saved = c.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
            c.execute(f"DROP TRIGGER {name}")
        report_ = verify(small_ledger)
        assert not report_.ok
        assert name in report_.message
        with raw(small_ledger) as c:
            c.execute(saved)
        assert verify(small_ledger).ok


# --- tampering by an owner who drops the triggers ------------------------------------------------------


@contextlib.contextmanager
def triggers_dropped(url: str) -> Iterator[Any]:
    """Drop the append-only triggers (as the table's owner can), yield a connection, put them back."""
    sqlite = make_url(url).get_backend_name() == "sqlite"
    with raw(url) as c:
        if sqlite:
            saved = [
                r[0]
                for r in c.execute("SELECT sql FROM sqlite_master WHERE type='trigger' AND tbl_name='ledger_event'")
            ]
            for name in c.execute("SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name='ledger_event'"):
                c.execute(f"DROP TRIGGER {name[0]}")
        else:
            names = ("ledger_event_no_update", "ledger_event_no_delete", "ledger_event_no_truncate")
            saved = [
                r[0]
                for r in c.execute(
                    "SELECT pg_get_triggerdef(oid) FROM pg_trigger "
                    "WHERE tgrelid = 'ledger_event'::regclass AND NOT tgisinternal AND tgname = ANY(%s)",
                    (list(names),),
                )
            ]
            for name in names:
                c.execute(f"DROP TRIGGER {name} ON ledger_event")
        try:
            yield c
        finally:
            for sql in saved:
                c.execute(sql)


def restore(c: Any, url: str, rows: list[tuple[Any, ...]]) -> None:
    """Put the original rows back (triggers dropped)."""
    c.execute("DELETE FROM ledger_event")
    m = mark(url)
    for row in rows:
        c.execute(f"INSERT INTO ledger_event ({COLUMNS}) VALUES ({', '.join([m] * 10)})", row)


def rechain(c: Any, url: str, rows: list[tuple[Any, ...]], start: int) -> None:
    """What a careful forger does after editing: recompute the content hash and every chain hash from row
    ``start`` on (positions are 1-based and contiguous), with the published algorithm."""
    m = mark(url)
    prev = GENESIS_HASH if start == 1 else rows[start - 2][9]
    for row in rows[start - 1 :]:
        position, stream_id, version, type_, effective, event_id, recorded_at, payload, _, _ = row
        ch = content_hash(type_, effective, payload)
        prev = chain_hash(
            prev, record_text(position, stream_id, version, type_, effective, event_id, recorded_at, payload)
        )
        c.execute(f"UPDATE ledger_event SET content_hash = {m}, hash = {m} WHERE position = {m}", (ch, prev, position))


def _payload_of(rows: list[tuple[Any, ...]], type_: str) -> tuple[int, str]:
    row = next(r for r in rows if r[3] == type_)
    return row[0], row[7]


def tamperings(url: str, rows: list[tuple[Any, ...]]) -> list[tuple[str, int, Callable[[Any], None]]]:
    """(name, first position verify must report, edit) for edits an owner could make with the triggers gone."""
    m = mark(url)
    signed_at, signed = _payload_of(rows, "contract.signed")
    cycle_at, cycle = _payload_of(rows, "cycle.closed")
    adj_at, adj = _payload_of(rows, "adjustment.recorded")
    n = len(rows)

    def update(position: int, col: str, value: Any) -> Callable[[Any], None]:
        return lambda c: c.execute(f"UPDATE ledger_event SET {col} = {m} WHERE position = {m}", (value, position))

    def edit_and_rehash_row(c: Any) -> None:  # fix that row's own hashes, not the ones after it
        c.execute(
            f"UPDATE ledger_event SET payload = {m} WHERE position = {m}",
            (signed.replace("120000", "990000"), signed_at),
        )
        edited = [r for r in all_rows_of(c, url)]
        row = edited[signed_at - 1]
        prev = rows[signed_at - 2][9]
        h = chain_hash(prev, record_text(*row[:8]))
        c.execute(
            f"UPDATE ledger_event SET content_hash = {m}, hash = {m} WHERE position = {m}",
            (content_hash(row[3], row[4], row[7]), h, signed_at),
        )

    def swap(c: Any) -> None:
        a, b = rows[9], rows[10]
        for src, dst in ((b, a), (a, b)):
            c.execute(
                f"UPDATE ledger_event SET type = {m}, payload = {m}, content_hash = {m} WHERE position = {m}",
                (src[3], src[7], src[8], dst[0]),
            )

    return [
        ("contract ACV raised", signed_at, update(signed_at, "payload", signed.replace("120000", "990000"))),
        (
            "paid amount in a closed cycle changed",
            cycle_at,
            update(cycle_at, "payload", cycle.replace('"amount":"', '"amount":"1')),
        ),
        ("manual adjustment flipped", adj_at, update(adj_at, "payload", adj.replace("-50.00", "50.00"))),
        ("business date moved", 5, update(5, "effective", "2025-01-01")),
        ("recording time changed", 7, update(7, "recorded_at", "2020-01-01T00:00:00.000000Z")),
        ("event_id set", 8, update(8, "event_id", "forged")),
        ("edited row re-hashed on its own", signed_at + 1, edit_and_rehash_row),
        ("middle row removed", 20, lambda c: c.execute(f"DELETE FROM ledger_event WHERE position = {m}", (20,))),
        ("two rows swapped", 10, swap),
        (
            "row appended with a made-up hash",
            n + 1,
            lambda c: c.execute(
                f"INSERT INTO ledger_event ({COLUMNS}) VALUES ({', '.join([m] * 10)})",
                (
                    n + 1,
                    "rep:R9",
                    1,
                    "rep.hired",
                    "2026-03-01",
                    None,
                    rows[-1][6],
                    '{"name":"Ghost","rep_id":"R9","role":"rep"}',
                    "0" * 64,
                    "f" * 64,
                ),
            ),
        ),
    ]


def all_rows_of(c: Any, url: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in c.execute(f"SELECT {COLUMNS} FROM ledger_event ORDER BY position")]


def test_an_owner_who_drops_the_triggers_and_edits_rows_is_caught_by_audit_verify(
    small_ledger: str, db_kind: str
) -> None:
    url = small_ledger
    rows = all_rows(url)
    caught = 0
    cases = tamperings(url, rows)
    with triggers_dropped(url) as c:
        for name, position, edit in cases:
            edit(c)
            result = verify(url)
            assert not result.ok, f"{name}: not caught"
            assert result.first_bad_position == position, f"{name}: {result.message}"
            assert "append-only trigger" in result.message  # the dropped triggers are reported too
            r = incentive("audit", "verify", db=url)
            assert r.code == 1 and f"position {position}: " in r.err, (name, r.err)
            caught += 1
            restore(c, url, rows)
    assert all_rows(url) == rows and verify(url).ok
    report(
        f"append-only-tampering/{db_kind}: {caught} of {len(cases)} edits by an owner who dropped the triggers "
        "caught by audit verify at the first altered position"
    )


def test_a_superuser_bypassing_the_triggers_is_caught_by_the_chain(small_ledger: str, db_kind: str) -> None:
    """PostgreSQL's replica mode skips ordinary triggers without dropping them (superuser only)."""
    if db_kind != "postgres":
        pytest.skip("session_replication_role is PostgreSQL's")
    url = small_ledger
    rows = all_rows(url)
    with raw(url) as c:
        c.execute("SET session_replication_role = replica")
        c.execute("UPDATE ledger_event SET payload = %s WHERE position = 30", ('{"forged":true}',))
    result = verify(url)
    assert not result.ok and result.first_bad_position == 30
    assert "trigger" not in result.message  # the triggers look intact: only the chain sees the edit
    with raw(url) as c:
        c.execute("SET session_replication_role = replica")
        c.execute("UPDATE ledger_event SET payload = %s WHERE position = 30", (rows[29][7],))
    assert verify(url).ok
    report("append-only-superuser/postgres: an edit made in replica mode (triggers skipped) caught by the chain")


# --- what the chain cannot see, and the anchor that does --------------------------------------------------


def anchor(url: str, directory: Path) -> tuple[int, str]:
    """`incentive audit export`: the digest file (event count and head hash) is the anchor kept elsewhere."""
    ok("audit", "export", "--out", str(directory), db=url)
    fields = dict(line.split(" ", 1) for line in (directory / "ledger.digest").read_text().splitlines())
    return int(fields["events"]), fields["head_hash"]


def anchor_holds(url: str, events: int, head_hash: str) -> bool:
    """An auditor's check of an old anchor: the row at its position still carries its hash."""
    with raw(url) as c:
        row = c.execute(f"SELECT hash FROM ledger_event WHERE position = {mark(url)}", (events,)).fetchone()
    return row is not None and row[0] == head_hash


def test_tail_truncation_and_rechaining_pass_verify_but_not_an_exported_anchor(
    small_ledger: str, db_kind: str, tmp_path: Path
) -> None:
    url = small_ledger
    rows = all_rows(url)
    events, head = anchor(url, tmp_path / "anchor")
    assert (events, head) == (len(rows), rows[-1][9]) and anchor_holds(url, events, head)
    found_by_anchor = 0

    with triggers_dropped(url) as c:  # 1. remove the newest rows (the last closed cycle)
        c.execute(f"DELETE FROM ledger_event WHERE position > {mark(url)}", (len(rows) - 2,))
    assert verify(url).ok, "the chain cannot see a removed tail: a prefix of a valid chain is valid"
    assert not anchor_holds(url, events, head)
    found_by_anchor += 1
    with triggers_dropped(url) as c:
        restore(c, url, rows)
    assert verify(url).ok and anchor_holds(url, events, head)

    with triggers_dropped(url) as c:  # 2. rewrite a payment and recompute every later hash
        at, payload = _payload_of(rows, "contract.signed")
        c.execute(
            f"UPDATE ledger_event SET payload = {mark(url)} WHERE position = {mark(url)}",
            (payload.replace("120000", "990000"), at),
        )
        rechain(c, url, all_rows_of(c, url), at)
    assert verify(url).ok, "the chain cannot see a consistent rewrite by someone who can write every row"
    assert not anchor_holds(url, events, head)
    found_by_anchor += 1
    # and the audit commands recompute from the forged rows: only the anchor (or an old export) disagrees
    export = tmp_path / "after"
    assert anchor(url, export)[0] == events
    with triggers_dropped(url) as c:
        restore(c, url, rows)
    assert verify(url).ok and anchor_holds(url, events, head)
    service.forget_projections()
    report(
        f"append-only-anchor/{db_kind}: tail truncation and a full re-chain pass audit verify (documented limit); "
        f"{found_by_anchor} of 2 caught by the exported anchor (audit export digest)"
    )


# --- the auditor role -------------------------------------------------------------------------------------


@pytest.fixture
def roles(db_kind: str, small_ledger: str) -> Iterator[list[str]]:
    """Names of PostgreSQL roles the test creates; dropped afterwards (roles are cluster-wide)."""
    made: list[str] = []
    yield made
    with raw(small_ledger) as c:
        for role in reversed(made):
            if c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                c.execute(f'DROP OWNED BY "{role}"')
                c.execute(f'DROP ROLE "{role}"')


def _role(roles: list[str], what: str) -> str:
    name = f"{what}_{uuid.uuid4().hex[:10]}"
    roles.append(name)
    return name


def auditor_url(url: str, role: str) -> str:
    return make_url(url).set(username=role, password=None).render_as_string(hide_password=False)


def test_grant_auditor_makes_a_role_that_can_only_read(
    db_kind: str, small_ledger: str, roles: list[str], tmp_path: Path
) -> None:
    if db_kind != "postgres":
        r = incentive("db", "grant-auditor", "auditor", db=small_ledger)
        assert r.code == 1 and "grant-auditor needs PostgreSQL" in r.err
        return
    url = small_ledger
    role = _role(roles, "auditor")
    first = incentive("db", "grant-auditor", role, db=url)
    assert first.code == 0 and f"Created role {role}" in first.out, first.err
    again = incentive("db", "grant-auditor", role, "--password", "s3cr'et", db=url)  # idempotent; sets a password
    assert again.code == 0 and f"Updated role {role}" in again.out, again.err
    with raw(url) as c:
        assert c.execute(
            "SELECT rolpassword IS NOT NULL, rolcanlogin FROM pg_authid WHERE rolname = %s", (role,)
        ).fetchone() == (True, True)

    rows = all_rows(url)
    refused = 0
    with raw(url, user=role) as c:
        assert c.execute("SELECT COUNT(*) FROM ledger_event").fetchone()[0] == len(rows)
        writes = [
            *[(sql, params) for _, sql, params in write_attempts(url, rows)],
            (f"INSERT INTO ledger_event ({COLUMNS}) VALUES ({', '.join(['%s'] * 10)})", (len(rows) + 1, *rows[-1][1:])),
            ("UPDATE alembic_version SET version_num = 'x'", ()),
            ("DELETE FROM alembic_version", ()),
            ("DROP TRIGGER ledger_event_no_update ON ledger_event", ()),
            ("ALTER TABLE ledger_event DISABLE TRIGGER USER", ()),
            ("DROP TABLE ledger_event", ()),
            ("CREATE TABLE public.auditor_scratch (i int)", ()),
            ("SET session_replication_role = replica", ()),
        ]
        for sql, params in writes:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql, params)
            refused += 1
    assert all_rows(url) == rows

    # the audit commands work with the auditor's URL; a write through the CLI is refused and changes nothing
    aud = auditor_url(url, role)
    assert "hash chain intact" in ok("audit", "verify", db=aud)
    ok("audit", "reproduce", "--all", db=aud)
    ok("audit", "replay", db=aud)
    late = tmp_path / "late.jsonl"
    late.write_text('{"type":"rep.hired","effective":"2026-03-01","rep_id":"R3","name":"Cy","role":"rep"}\n')
    r = incentive("ingest", str(late), db=aud)
    assert r.code == 1 and "permission denied" in r.err and "Traceback" not in r.err, r.err
    assert all_rows(url) == rows
    service.forget_projections()
    report(
        f"append-only-auditor/postgres: grant-auditor role: SELECT and audit verify/replay/reproduce work; "
        f"{refused} of {len(writes)} write or DDL statements refused by the database (42501), CLI ingest refused"
    )


def test_grant_auditor_takes_away_earlier_write_grants_and_refuses_roles_it_cannot_restrict(
    db_kind: str, small_ledger: str, roles: list[str]
) -> None:
    if db_kind != "postgres":
        pytest.skip("roles are PostgreSQL's")
    url = small_ledger
    had_writes = _role(roles, "former_writer")
    writer_group = _role(roles, "writers")
    member = _role(roles, "member")
    with raw(url) as c:
        c.execute(f'CREATE ROLE "{had_writes}" LOGIN')
        c.execute(f'GRANT INSERT, UPDATE, DELETE, TRUNCATE ON ledger_event TO "{had_writes}"')
        c.execute(f'CREATE ROLE "{writer_group}" NOLOGIN')
        c.execute(f'GRANT INSERT ON ledger_event TO "{writer_group}"')
        c.execute(f'CREATE ROLE "{member}" LOGIN IN ROLE "{writer_group}"')
    assert incentive("db", "grant-auditor", had_writes, db=url).code == 0
    with raw(url, user=had_writes) as c, pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute("TRUNCATE ledger_event")

    r = incentive("db", "grant-auditor", member, db=url)  # would still insert through its group
    assert r.code == 1 and "still has INSERT" in r.err, r.err
    assert incentive("db", "grant-auditor", "postgres", db=url).code == 1  # the connecting (super)user
    assert incentive("db", "grant-auditor", "bad name; DROP TABLE x", db=url).code == 1
