"""The SQLite ledger's WAL checkpoint runs in a thread after each writer's commit, not inside the commit
(``store._Checkpointer``): what a writer committed reaches the database file itself, the commit leaves
that copy to the thread, and a checkpoint that fails loses nothing and raises nowhere."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from datetime import date
from pathlib import Path

import pytest

from incentive_engine.core.events import RepHired
from incentive_engine.shell import store
from incentive_engine.shell.store import Ledger


def _hires(n: int) -> list[RepHired]:
    return [
        RepHired(type="rep.hired", effective=date(2026, 1, 1), rep_id=f"R{i}", name=f"Rep {i}", role="rep")
        for i in range(n)
    ]


def _rows_in_the_file_alone(path: Path, tmp_path: Path) -> int:
    """The rows of the database file without its write-ahead log (a copy of the file alone)."""
    alone = tmp_path / "alone.db"
    shutil.copyfile(path, alone)
    with sqlite3.connect(alone) as con:
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'ledger_event'").fetchone() is None:
            return 0  # not even the schema reached the file
        return int(con.execute("SELECT count(*) FROM ledger_event").fetchone()[0])


def test_what_a_writer_commits_reaches_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(f"sqlite:///{path}") as ledger:
        ledger.init()
        with ledger.writer() as w:
            w.append(_hires(300))
        store._checkpointer(str(path)).wait()
        # the ledger is still open: SQLite would otherwise checkpoint when its last connection closes
        assert _rows_in_the_file_alone(path, tmp_path) == 300
        assert store._checkpointer(str(path)).error is None


def test_the_commit_leaves_the_checkpoint_to_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(f"sqlite:///{path}") as ledger:
        ledger.init()
        with ledger.engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
    assert pages == store.BACKSTOP_CHECKPOINT_PAGES
    # a URL with options gets no thread: SQLite's own checkpoint keeps its usual threshold there
    with Ledger(f"sqlite:///{path}?timeout=5") as ledger, ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 16384


def test_a_commit_during_a_checkpoint_gets_one_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow_checkpoint(self: store._Checkpointer) -> None:
        calls.append(1)
        started.set()
        release.wait(10)

    monkeypatch.setattr(store._Checkpointer, "_checkpoint", slow_checkpoint)
    checkpointer = store._Checkpointer(str(tmp_path / "any.db"))
    checkpointer.request()
    assert started.wait(10)
    checkpointer.request()  # two commits while the first checkpoint runs: one more run covers both
    checkpointer.request()
    release.set()
    checkpointer.wait()
    assert len(calls) == 2
    checkpointer.request()  # idle again: a new thread
    checkpointer.wait()
    assert len(calls) == 3


def test_a_failed_checkpoint_is_kept_not_raised(tmp_path: Path) -> None:
    checkpointer = store._Checkpointer(str(tmp_path / "no such directory" / "ledger.db"))
    checkpointer.request()
    checkpointer.wait()
    assert checkpointer.error is not None and "unable to open" in checkpointer.error
    assert checkpointer.runs == 0


def test_a_forked_child_gets_its_own_checkpointer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "ledger.db")
    parent = store._checkpointer(path)
    assert store._checkpointer(path) is parent
    monkeypatch.setattr(store.os, "getpid", lambda: parent.pid + 1)  # what a forked child sees
    child = store._checkpointer(path)
    assert child is not parent and child.pid == parent.pid + 1
