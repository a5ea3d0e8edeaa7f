"""Crash safety: `incentive ingest` of a large file and `incentive cycle close` are killed with SIGKILL at
random (seeded) moments, many times, on SQLite and PostgreSQL.

After every kill the ledger must hold either nothing of the command's work or all of it (never a part),
`audit verify` must pass, and rerunning the command must end with exactly the ledger (positions, streams,
types, payloads; not the recording times or hashes, which carry the clock) and the output of an
uninterrupted run. Kill moments are drawn from a seeded generator: half uniformly over the run (from just
before it takes the writer lock, as the reference run showed, to just after it releases it: the start-up
before touches no database), half a random delay after the test sees the run take the writer lock (the
write transaction of a close lasts only tens of milliseconds). Just before each kill the test looks whether
the command holds the lock, so the counts say how many kills landed inside the write transaction.

Between rounds the harness rewinds the ledger to its starting rows the way an operator restores a backup
(triggers dropped, rows removed, triggers recreated; `audit verify` passes again), so every round starts
from the same state and is compared against one reference run.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from incentive_engine.demo import generate
from incentive_engine.shell import service
from incentive_engine.shell.store import Ledger, rebuild_contract_heads

from .cli import incentive, ok
from .reliability import raw, report

INGEST_KILLS = 25
CLOSE_KILLS = 20
CLOSE_PERIOD = "2027-01"
BIG_CONTRACTS = 1000  # about five events per contract
CHAIN = 0.4  # chance that a kill which left the ledger unchanged is followed by another kill before the rerun
EXE = str(Path(sys.executable).parent / "incentive")
CONTENT_COLUMNS = "position, stream_id, stream_version, type, effective, event_id, payload, content_hash"


# --- the database, seen from outside the engine -------------------------------------------------------


def content(url: str, after: int = 0) -> list[tuple[Any, ...]]:
    """The rows after position ``after`` without their recording time and chain hash (those carry the clock)."""
    mark = "?" if make_url(url).get_backend_name() == "sqlite" else "%s"
    with raw(url) as c:
        sql = f"SELECT {CONTENT_COLUMNS} FROM ledger_event WHERE position > {mark} ORDER BY position"
        return [tuple(r) for r in c.execute(sql, (after,))]


def row_count(url: str) -> int:
    with raw(url) as c:
        return int(c.execute("SELECT COUNT(*) FROM ledger_event").fetchone()[0])


def rewind(url: str, keep: int) -> None:
    """Restore the ledger to its first ``keep`` rows, as restoring a backup would (test harness only)."""
    with raw(url) as c:
        if make_url(url).get_backend_name() == "sqlite":
            triggers = c.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'ledger_event'"
            ).fetchall()
            c.execute("BEGIN IMMEDIATE")
            for name, _ in triggers:
                c.execute(f"DROP TRIGGER {name}")
            c.execute("DELETE FROM ledger_event WHERE position > ?", (keep,))
            for _, sql in triggers:
                c.execute(sql)
            c.execute("COMMIT")
        else:
            with c.transaction():
                c.execute("ALTER TABLE ledger_event DISABLE TRIGGER USER")
                c.execute("DELETE FROM ledger_event WHERE position > %s", (keep,))
                c.execute("ALTER TABLE ledger_event ENABLE TRIGGER USER")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:  # the derived table a backup would carry along
            rebuild_contract_heads(conn)
    finally:
        engine.dispose()


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
    took: float = 0.0


@dataclass
class Timeline:
    """An uninterrupted run as seen from outside: how long it took and when it held the writer lock."""

    returncode: int
    out: str
    took: float
    lock_from: float
    lock_to: float

    def describe(self) -> str:
        return f"{self.took:.1f} s, writer lock held from {self.lock_from:.2f} s to {self.lock_to:.2f} s"

    def lock_span(self) -> float:
        """How long the reference run held the writer lock (at least the probe's resolution)."""
        return max(0.02, self.lock_to - self.lock_from)

    def kill_moment(self, rng: random.Random, scale: float) -> float:
        """A moment from shortly before the run took the writer lock to just after it released it (the
        start-up before, imports and reading the file, touches no database; the exit after is output),
        with the times scaled by how fast runs go now compared with the reference run."""
        low, high = max(0.2, self.lock_from - 0.3), min(self.lock_to + 0.15, 0.97 * self.took)
        return scale * rng.uniform(low, high)


def _start(args: list[str], url: str, tag: str, stdout: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [EXE, "--db", url, *args], stdout=stdout, stderr=subprocess.DEVNULL, env={**os.environ, "PGAPPNAME": tag}
    )


def observe(args: list[str], url: str, probe: Probe, tag: str) -> Timeline:
    """Run ``incentive --db URL ARGS`` to the end as its own process, watching its writer lock."""
    with tempfile.TemporaryFile() as out:
        proc = _start(args, url, tag, stdout=out)
        start = time.monotonic()
        seen: list[float] = []
        while proc.poll() is None:
            if probe.writer_busy(tag):
                seen.append(time.monotonic() - start)
            time.sleep(0.005)
        took = time.monotonic() - start
        probe.wait_gone(tag)
        out.seek(0)
        text = out.read().decode("utf-8")
    assert seen, "the run was never seen holding the writer lock"
    return Timeline(proc.returncode, text, took, seen[0], seen[-1])


def run_and_kill(
    args: list[str], url: str, probe: Probe, tag: str, *, at: float | None = None, after_lock: float | None = None
) -> Outcome:
    """Start ``incentive --db URL ARGS`` as its own process and SIGKILL it either ``at`` seconds after the
    start, or ``after_lock`` seconds after the probe first sees it holding the writer lock (polled every
    2 ms) - unless it has finished by then."""
    proc = _start(args, url, tag)
    start = time.monotonic()
    lock_seen: float | None = None
    try:
        while True:
            if proc.poll() is not None:
                took = time.monotonic() - start
                probe.wait_gone(tag)
                return Outcome(False, returncode=proc.returncode, took=took)
            now = time.monotonic() - start
            if after_lock is not None and lock_seen is None and (probe.writer_busy(tag) or now > 120):
                lock_seen = now
            due = (
                at
                if at is not None
                else (lock_seen + after_lock if lock_seen is not None and after_lock is not None else None)
            )
            if due is not None and now >= due:
                busy = probe.writer_busy(tag)
                proc.kill()
                proc.wait()
                probe.wait_gone(tag)
                return Outcome(True, in_transaction=busy)
            time.sleep(0.002 if due is None else max(0.0, min(due - now, 0.01)))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@dataclass
class Tally:
    kills: int = 0
    timed_from_lock: int = 0
    in_transaction: int = 0
    unchanged: int = 0
    complete: int = 0
    partial: int = 0
    finished_first: int = 0
    reruns_identical: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self, what: str) -> str:
        return (
            f"{what}: {self.kills} kills ({self.kills - self.timed_from_lock} at random moments of the run, "
            f"{self.timed_from_lock} at random moments after the writer lock was seen taken; "
            f"{self.in_transaction} landed inside the write transaction), "
            f"{self.partial} partial states ({self.unchanged} unchanged, {self.complete} complete), "
            f"{self.reruns_identical} reruns identical to the uninterrupted run, audit verify passed after every kill"
            + (f"; {self.finished_first} runs finished before their kill moment" if self.finished_first else "")
        )


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 5,000 valid events (a thousand-contract org over five years) in one 0.75 MB file."""
    path = tmp_path_factory.mktemp("crash") / "big.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for event in generate(3, reps=40, contracts=BIG_CONTRACTS).all_events():
            f.write(json.dumps(event, ensure_ascii=False) + "\n")
    return path


def _verify(ledger: Ledger) -> None:
    result = ledger.verify()
    assert result.ok, result.message


def kill_many_times(
    what: str,
    url: str,
    args: list[str],
    kills: int,
    base: int,
    rerun: Callable[[int], None],
    on_reference: Callable[[Timeline], None] = lambda _: None,
) -> tuple[Tally, Timeline, list[tuple[Any, ...]]]:
    """The loop both tests share. From a ledger of ``base`` rows: one uninterrupted run of ``incentive ARGS``
    (the reference), then rounds of: start the command, SIGKILL it at a random moment, check that the rows it
    added are none or exactly the reference's, `audit verify`; then (usually) ``rerun(added)``, which runs the
    command again and checks its output, and a check that the ledger equals the reference; rewind to ``base``.
    """
    rng = random.Random(what)
    ledger = Ledger(url)
    probe = Probe(url)
    tally = Tally()
    try:
        ref = observe(args, url, probe, f"{what}-ref")
        assert ref.returncode == 0, f"the uninterrupted run failed: {ref.out}"
        on_reference(ref)
        expected = content(url)
        prefix, added_by_ref = expected[:base], expected[base:]
        assert added_by_ref, "the reference run added nothing"
        rewind(url, base)
        _verify(ledger)
        scale = 1.0  # the reference run may have been slowed by a busy machine: learn from faster runs
        for round_ in range(1, 2 * kills + 1):
            if tally.kills >= kills:
                break
            tag = f"{what}-{round_}"
            from_lock = rng.random() < 0.5
            if from_lock:  # the transaction may last only tens of milliseconds: aim at it half of the time
                out = run_and_kill(args, url, probe, tag, after_lock=rng.uniform(0, 1.5 * ref.lock_span()))
            else:
                out = run_and_kill(args, url, probe, tag, at=ref.kill_moment(rng, scale))
            added = content(url, after=base)
            _verify(ledger)
            if not out.killed:  # it finished before its kill moment: a complete, uninterrupted run
                if not from_lock:
                    scale = max(0.3, min(scale, 0.85 * out.took / ref.took))
                tally.finished_first += 1
                assert out.returncode == 0 and added == added_by_ref
                rewind(url, base)
                continue
            tally.kills += 1
            tally.timed_from_lock += from_lock
            tally.in_transaction += out.in_transaction
            if not added:
                tally.unchanged += 1
            elif added == added_by_ref:
                tally.complete += 1
            else:
                tally.partial += 1
                tally.notes.append(
                    f"round {round_}: {len(added)} rows after the kill, the full run adds {len(added_by_ref)}"
                )
            assert added in ([], added_by_ref), f"a kill left {len(added)} of {len(added_by_ref)} rows"
            if not added and rng.random() < CHAIN:
                continue  # kill the next run on this crashed ledger too, before rerunning to the end
            rerun(len(added))
            assert content(url) == prefix + added_by_ref
            _verify(ledger)
            tally.reruns_identical += 1
            rewind(url, base)
    finally:
        probe.close()
        ledger.dispose()
        service.forget_projections()
    return tally, ref, added_by_ref


# --- ingest ----------------------------------------------------------------------------------------


def test_killed_ingest_leaves_nothing_or_everything_and_a_rerun_completes_it(
    db_kind: str, fresh_db_urls: Any, big_file: Path
) -> None:
    url = fresh_db_urls(db_kind)
    ok("init", db=url)
    total = sum(1 for line in big_file.read_text().splitlines() if line.strip())

    def rerun(found: int) -> None:
        again = incentive("ingest", str(big_file), db=url)
        assert again.code == 0, again.err
        assert f"{total - found} appended, {found} already in the ledger" in again.out

    what = f"crash-ingest-{db_kind}"
    tally, ref, added = kill_many_times(what, url, ["ingest", str(big_file)], INGEST_KILLS, 0, rerun)
    assert len(added) == total
    report(tally.line(f"crash-ingest/{db_kind} (a file of {total} events; uninterrupted run {ref.describe()})"))
    assert tally.partial == 0, tally.notes
    assert tally.kills >= INGEST_KILLS // 2, f"only {tally.kills} runs were killed: the machine is too slow"


# --- cycle close ------------------------------------------------------------------------------------


def _cycle_without_status(text: str) -> dict[str, Any]:
    result = json.loads(text)
    result.pop("status")
    return result


def test_killed_cycle_close_closes_once_or_not_at_all_and_a_rerun_completes_it(
    db_kind: str, fresh_db_urls: Any, big_file: Path
) -> None:
    url = fresh_db_urls(db_kind)
    ok("init", db=url)
    ok("ingest", str(big_file), db=url)
    base = row_count(url)
    args = ["cycle", "close", CLOSE_PERIOD, "--format", "json"]
    expected_cycle: dict[str, Any] = {}

    def rerun(found: int) -> None:
        again = incentive(*args, db=url)
        assert again.code == 0, again.err
        assert json.loads(again.out)["status"] == ("already_closed" if found else "closed")
        assert _cycle_without_status(again.out) == expected_cycle

    def keep(ref: Timeline) -> None:  # what the uninterrupted close printed
        assert json.loads(ref.out)["status"] == "closed"
        expected_cycle.update(_cycle_without_status(ref.out))

    what = f"crash-close-{db_kind}"
    tally, ref, added = kill_many_times(what, url, args, CLOSE_KILLS, base, rerun, keep)
    assert [r[3] for r in added] == ["plan.registered", "cycle.closed"]
    assert expected_cycle["lines"], "the reference close should issue lines"
    report(tally.line(f"crash-close/{db_kind} (a ledger of {base} events; uninterrupted close {ref.describe()})"))
    assert tally.partial == 0, tally.notes
    assert tally.kills >= CLOSE_KILLS // 2, f"only {tally.kills} runs were killed: the machine is too slow"
