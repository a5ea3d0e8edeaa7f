"""Crash safety: `incentive ingest` of a large file and `incentive cycle close` are killed with SIGKILL at
random (seeded) moments, many times, on SQLite and PostgreSQL.

After every kill the ledger must hold either nothing of the command's work or all of it (never a part),
`audit verify` must pass, and rerunning the command must end with exactly the ledger (positions, streams,
types, payloads; not the recording times or hashes, which carry the clock) and the output of an
uninterrupted run. Just before each kill the test looks whether the command holds the ledger's writer lock,
so the counts say how many kills landed inside the write transaction, not only how many were attempted.

Between rounds the harness rewinds the ledger to its starting rows the way an operator restores a backup
(triggers dropped, rows removed, triggers recreated; `audit verify` passes again), so every round starts
from the same state and is compared against one reference run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from incentive_engine.demo import generate
from incentive_engine.shell import service
from incentive_engine.shell.store import Ledger

from .cli import incentive, ok

INGEST_KILLS = 30
CLOSE_KILLS = 20
CLOSE_PERIOD = "2027-01"
EXE = str(Path(sys.executable).parent / "incentive")
CONTENT_COLUMNS = "position, stream_id, stream_version, type, effective, event_id, payload, content_hash"


def report(line: str) -> None:
    """Print the counts and append them to $INCENTIVE_RELIABILITY_REPORT (for the release notes)."""
    print(line)
    path = os.environ.get("INCENTIVE_RELIABILITY_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


# --- the database, seen from outside the engine -------------------------------------------------------


@contextlib.contextmanager
def raw(url: str) -> Iterator[Any]:
    """A plain driver connection in autocommit mode (sqlite3 or psycopg), as an operator's tool would use."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        conn: Any = sqlite3.connect(str(u.database), isolation_level=None, timeout=30)
    else:
        conn = psycopg.connect(u.set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


def content(url: str) -> list[tuple[Any, ...]]:
    """Every row without its recording time and chain hash (those carry the clock)."""
    with raw(url) as c:
        return [tuple(r) for r in c.execute(f"SELECT {CONTENT_COLUMNS} FROM ledger_event ORDER BY position")]


def row_count(url: str) -> int:
    with raw(url) as c:
        return int(c.execute("SELECT COUNT(*) FROM ledger_event").fetchone()[0])


def rewind(url: str, keep: int) -> None:
    """Restore the ledger to its first ``keep`` rows, as restoring a backup would (test harness only)."""
    with raw(url) as c:
        if make_url(url).get_backend_name() == "sqlite":
            triggers = [
                r[0]
                for r in c.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'ledger_event'")
            ]
            c.execute("BEGIN IMMEDIATE")
            for name in ("ledger_event_no_update", "ledger_event_no_delete"):
                c.execute(f"DROP TRIGGER {name}")
            c.execute("DELETE FROM ledger_event WHERE position > ?", (keep,))
            for sql in triggers:
                c.execute(sql)
            c.execute("COMMIT")
        else:
            with c.transaction():
                c.execute("ALTER TABLE ledger_event DISABLE TRIGGER USER")
                c.execute("DELETE FROM ledger_event WHERE position > %s", (keep,))
                c.execute("ALTER TABLE ledger_event ENABLE TRIGGER USER")


class Probe:
    """Looks at the ledger from outside: is a writer inside its transaction; is a killed client's PostgreSQL
    backend gone (a backend can still be finishing a COMMIT its client sent just before dying)."""

    def __init__(self, url: str) -> None:
        self.sqlite = make_url(url).get_backend_name() == "sqlite"
        self._ctx = raw(url)
        self.conn = self._ctx.__enter__()
        if self.sqlite:
            self.conn.execute("PRAGMA busy_timeout = 0")

    def close(self) -> None:
        self._ctx.__exit__(None, None, None)

    def writer_busy(self, tag: str) -> bool:
        if self.sqlite:  # the writer holds SQLite's write lock (BEGIN IMMEDIATE) for its whole transaction
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return True
            self.conn.execute("ROLLBACK")
            return False
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = %s)",
            (tag,),
        ).fetchone()
        return bool(row[0])

    def wait_gone(self, tag: str, timeout: float = 60.0) -> None:
        if self.sqlite:
            return
        deadline = time.monotonic() + timeout
        while self.conn.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = %s", (tag,)).fetchone()[
            0
        ]:
            assert time.monotonic() < deadline, f"the backend of killed client {tag} did not go away"
            time.sleep(0.01)


@dataclass
class Outcome:
    killed: bool
    in_transaction: bool = False
    returncode: int | None = None


def run_and_kill(args: list[str], url: str, kill_at: float, probe: Probe, tag: str) -> Outcome:
    """Start ``incentive --db URL ARGS`` as its own process and SIGKILL it ``kill_at`` seconds later
    (unless it has finished by then)."""
    proc = subprocess.Popen(
        [EXE, "--db", url, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PGAPPNAME": tag},
    )
    start = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                probe.wait_gone(tag)
                return Outcome(False, returncode=proc.returncode)
            left = kill_at - (time.monotonic() - start)
            if left <= 0:
                busy = probe.writer_busy(tag)
                proc.kill()
                proc.wait()
                probe.wait_gone(tag)
                return Outcome(True, in_transaction=busy)
            time.sleep(min(left, 0.01))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@dataclass
class Tally:
    kills: int = 0
    in_transaction: int = 0
    unchanged: int = 0
    complete: int = 0
    partial: int = 0
    finished_first: int = 0
    reruns_identical: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self, what: str) -> str:
        return (
            f"{what}: {self.kills} kills ({self.in_transaction} inside the write transaction), "
            f"{self.partial} partial states ({self.unchanged} unchanged, {self.complete} complete), "
            f"{self.reruns_identical} reruns identical to the uninterrupted run, audit verify passed after every kill"
            + (f"; {self.finished_first} runs finished before their kill moment" if self.finished_first else "")
        )


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 10,000 valid events (a two-thousand-contract org over five years) in one 1.5 MB file."""
    path = tmp_path_factory.mktemp("crash") / "big.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for event in generate(3, reps=40, contracts=2000).all_events():
            f.write(json.dumps(event, ensure_ascii=False) + "\n")
    return path


def _verify(ledger: Ledger) -> None:
    result = ledger.verify()
    assert result.ok, result.message


# --- ingest ----------------------------------------------------------------------------------------


def test_killed_ingest_leaves_nothing_or_everything_and_a_rerun_completes_it(
    db_kind: str, fresh_db_urls: Any, big_file: Path
) -> None:
    rng = random.Random(f"crash-ingest-{db_kind}")
    url = fresh_db_urls(db_kind)
    ok("init", db=url)
    ledger = Ledger(url)
    probe = Probe(url)
    tally = Tally()
    try:
        # the uninterrupted reference run, as its own process: its duration bounds the kill moments
        started = time.monotonic()
        ref = incentive("ingest", str(big_file), db=url, in_process=False)
        took = time.monotonic() - started
        assert ref.code == 0, ref.err
        expected = content(url)
        total = len(expected)
        assert total > 10_000
        rewind(url, 0)
        _verify(ledger)

        rounds = 0
        while tally.kills < INGEST_KILLS:
            rounds += 1
            assert rounds < INGEST_KILLS * 3, f"too many runs finished before their kill moment ({tally})"
            tag = f"crash-ingest-{db_kind}-{rounds}"
            out = run_and_kill(["ingest", str(big_file)], url, rng.uniform(0.4, took), probe, tag)
            found = row_count(url)
            _verify(ledger)
            if not out.killed:
                tally.finished_first += 1
                assert out.returncode == 0 and found == total
            else:
                tally.kills += 1
                tally.in_transaction += out.in_transaction
                if found == 0:
                    tally.unchanged += 1
                elif found == total:
                    tally.complete += 1
                else:
                    tally.partial += 1
                    tally.notes.append(f"round {rounds}: {found} of {total} events after the kill")
            assert found in (0, total), f"a killed ingest left {found} of {total} events"
            if found == 0 and out.killed and rng.random() < 0.3:
                continue  # kill the next run on this crashed ledger too, before rerunning to the end
            rerun = incentive("ingest", str(big_file), db=url)
            assert rerun.code == 0, rerun.err
            assert f"{total - found} appended, {found} already in the ledger" in rerun.out
            assert content(url) == expected
            _verify(ledger)
            tally.reruns_identical += 1
            rewind(url, 0)
    finally:
        probe.close()
        ledger.dispose()
        service.forget_projections()
    report(tally.line(f"crash-ingest/{db_kind} ({total} events, uninterrupted run {took:.1f} s)"))
    assert tally.partial == 0, tally.notes


# --- cycle close ------------------------------------------------------------------------------------


def _cycle_without_status(text: str) -> dict[str, Any]:
    result = json.loads(text)
    result.pop("status")
    return result


def test_killed_cycle_close_closes_once_or_not_at_all_and_a_rerun_completes_it(
    db_kind: str, fresh_db_urls: Any, big_file: Path
) -> None:
    rng = random.Random(f"crash-close-{db_kind}")
    url = fresh_db_urls(db_kind)
    ok("init", db=url)
    ok("ingest", str(big_file), db=url)
    ledger = Ledger(url)
    probe = Probe(url)
    tally = Tally()
    base = row_count(url)
    try:
        started = time.monotonic()
        ref = incentive("cycle", "close", CLOSE_PERIOD, "--format", "json", db=url, in_process=False)
        took = time.monotonic() - started
        assert ref.code == 0, ref.err
        assert json.loads(ref.out)["status"] == "closed"
        expected_cycle = _cycle_without_status(ref.out)
        assert expected_cycle["lines"], "the reference close should issue lines"
        expected = content(url)
        appended = len(expected) - base  # the plan registration and the cycle itself
        assert [r[3] for r in expected[base:]] == ["plan.registered", "cycle.closed"]
        rewind(url, base)
        _verify(ledger)

        rounds = 0
        while tally.kills < CLOSE_KILLS:
            rounds += 1
            assert rounds < CLOSE_KILLS * 3, f"too many runs finished before their kill moment ({tally})"
            tag = f"crash-close-{db_kind}-{rounds}"
            out = run_and_kill(["cycle", "close", CLOSE_PERIOD], url, rng.uniform(0.4, took), probe, tag)
            now = content(url)
            _verify(ledger)
            added = len(now) - base
            if not out.killed:
                tally.finished_first += 1
                assert out.returncode == 0
            else:
                tally.kills += 1
                tally.in_transaction += out.in_transaction
                if added == 0:
                    tally.unchanged += 1
                elif now == expected:
                    tally.complete += 1
                else:
                    tally.partial += 1
                    tally.notes.append(f"round {rounds}: {added} rows after the kill: {[r[3] for r in now[base:]]}")
            assert added in (0, appended) and now[:base] == expected[:base]
            if added:
                assert now == expected, "a killed close left a different cycle than the uninterrupted one"
            if added == 0 and out.killed and rng.random() < 0.3:
                continue
            rerun = incentive("cycle", "close", CLOSE_PERIOD, "--format", "json", db=url)
            assert rerun.code == 0, rerun.err
            assert json.loads(rerun.out)["status"] == ("already_closed" if added else "closed")
            assert _cycle_without_status(rerun.out) == expected_cycle
            assert content(url) == expected
            _verify(ledger)
            tally.reruns_identical += 1
            rewind(url, base)
    finally:
        probe.close()
        ledger.dispose()
        service.forget_projections()
    report(tally.line(f"crash-close/{db_kind} ({base} events, uninterrupted close {took:.1f} s)"))
    assert tally.partial == 0, tally.notes
