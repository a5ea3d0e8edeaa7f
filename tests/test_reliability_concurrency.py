"""Concurrency: several processes writing the same ledger at once, on SQLite and PostgreSQL.

- Processes ingesting at once (the installed `incentive` command, and worker processes that run the CLI
  many times in a row) never lose, duplicate or interleave a file's events: every file ends up exactly
  once, as one contiguous run of positions in its own order, a rejected file leaves nothing, and the
  ledger is one valid hash chain.
- Several `cycle close` of the same period at once close it exactly once; the others report it already
  closed (exit 0) and show the same cycle.
- A close running while facts are ingested sees a consistent prefix: the file's events are either all
  before the position the cycle records or all after it, the cycle's lines say which, and
  `audit reproduce` recomputes exactly what was issued from that prefix.

Worker processes are started with ``spawn`` (no connection inherited from the test process) and wait at a
barrier before each step, so their commands really start together.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from incentive_engine.core.canonical import canonical_json, content_hash
from incentive_engine.core.events import to_payload
from incentive_engine.core.reading import read_events
from incentive_engine.shell.store import Ledger

from .cli import incentive, ok
from .reliability import report

EXE = str(Path(sys.executable).parent / "incentive")


# --- event files ------------------------------------------------------------------------------------


def org_events(tag: str, reps: int, contracts: int, with_ids: bool) -> list[dict[str, Any]]:
    """A valid, self-contained file: its own reps, their contracts, costs and upsells (ids start with tag)."""
    out: list[dict[str, Any]] = []
    for j in range(reps):
        out.append(
            {"type": "rep.hired", "effective": "2025-12-01", "rep_id": f"{tag}R{j}", "name": f"Rep {j}", "role": "rep"}
        )
    for k in range(contracts):
        cid = f"{tag}C{k}"
        day = f"2026-01-{1 + k % 28:02d}"
        out.append(
            {
                "type": "contract.signed",
                "effective": day,
                "contract_id": cid,
                "account_id": f"{tag}A{k}",
                "rep_id": f"{tag}R{k % reps}",
                "acv": f"{100000 + 10 * k}.00",
                "currency": "USD",
                "term_months": 12,
            }
        )
        out.append({"type": "service.cost", "effective": "2026-02-15", "contract_id": cid, "amount": f"{k % 97}.50"})
        if k % 3 == 0:
            out.append({"type": "contract.expanded", "effective": "2026-03-01", "contract_id": cid, "acv_delta": "500"})
    if with_ids:
        for i, e in enumerate(out):
            e["event_id"] = f"{tag}-{i}"
    return out


def write_jsonl(path: Path, events: list[dict[str, Any]], bad_last_line: bool = False) -> Path:
    lines = [json.dumps(e) for e in events]
    if bad_last_line:
        lines.append('{"type": "contract.signed", "effective": "2026-01-05", "contract_id": "NOPE"}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def file_hashes(path: Path, valid: bool = True) -> list[str]:
    """The content hashes of the file's events, in order (of its readable lines, for an invalid file)."""
    events, problems = read_events(str(path), path.read_bytes())
    assert not problems or not valid, problems
    return [content_hash(e.type, e.effective.isoformat(), canonical_json(to_payload(e))) for _, e in events]


@dataclass
class Placement:
    files: int
    events: int


def check_files_once_and_contiguous(url: str, files: list[Path], rejected: list[Path]) -> Placement:
    """Every file exactly once, as one contiguous run in file order; rejected files absent; chain valid."""
    ledger = Ledger(url)
    try:
        rows = list(ledger.read_rows())
        report_ = ledger.verify()
    finally:
        ledger.dispose()
    assert report_.ok, report_.message
    positions: dict[str, list[int]] = {}
    for row in rows:
        positions.setdefault(row[8], []).append(row[0])
    expected = 0
    for path in files:
        hashes = file_hashes(path)
        expected += len(hashes)
        where = []
        for h in hashes:
            found = positions.get(h, [])
            assert len(found) == 1, f"{path.name}: an event is in the ledger {len(found)} times"
            where.append(found[0])
        first = where[0]
        assert where == list(range(first, first + len(where))), f"{path.name}: its events are not one contiguous run"
    for path in rejected:
        for h in file_hashes(path, valid=False):
            assert h not in positions, f"{path.name} was rejected but some of its events are in the ledger"
    assert len(rows) == expected, f"{len(rows)} rows, expected {expected}"
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    return Placement(len(files), expected)


# --- worker processes ----------------------------------------------------------------------------------


def _worker(url: str, me: int, jobs: list[tuple[float, list[str]]], barrier: Any, results: Any) -> None:
    """Run each job (delay, CLI args) through the real CLI entry point, in step with the other workers."""
    for step, (delay, args) in enumerate(jobs):
        barrier.wait(120)
        if delay:
            time.sleep(delay)
        r = incentive(*args, db=url)
        results.put((step, me, r.code, r.out, r.err))


def run_workers(url: str, jobs: list[list[tuple[float, list[str]]]]) -> dict[int, dict[int, tuple[int, str, str]]]:
    """One process per job list; all lists the same length; returns results[step][worker] = (code, out, err)."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(jobs))
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, i, js, barrier, results)) for i, js in enumerate(jobs)]
    for p in procs:
        p.start()
    out: dict[int, dict[int, tuple[int, str, str]]] = {}
    expected = sum(len(js) for js in jobs)
    try:
        for _ in range(expected):
            step, me, code, stdout, stderr = results.get(timeout=300)
            out.setdefault(step, {})[me] = (code, stdout, stderr)
    finally:
        for p in procs:
            p.join(60)
            if p.exitcode is None:
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return out


# --- ingest ----------------------------------------------------------------------------------------------


def test_processes_ingesting_at_once_never_lose_duplicate_or_interleave(
    db_kind: str, fresh_db_urls: Any, tmp_path: Path
) -> None:
    """Seven `incentive ingest` processes at once: four different files, two of them sent twice, and a
    file with a bad last line (rejected whole)."""
    url = fresh_db_urls(db_kind)
    ok("init", db=url)
    files = [
        write_jsonl(tmp_path / f"org{i}.jsonl", org_events(f"P{i}x", 8, 500, with_ids=i % 2 == 0)) for i in range(4)
    ]
    bad = write_jsonl(tmp_path / "bad.jsonl", org_events("BADx", 4, 300, with_ids=False), bad_last_line=True)
    plan = [*files, files[0], files[1], bad]
    procs = [
        subprocess.Popen(
            [EXE, "--db", url, "ingest", str(p)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for p in plan
    ]
    outcomes = [(p.wait(300), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    for p in procs:
        p.stdout.close()  # type: ignore[union-attr]
        p.stderr.close()  # type: ignore[union-attr]
    codes = [c for c, _, _ in outcomes]
    assert codes == [0, 0, 0, 0, 0, 0, 1], outcomes
    assert "rejected, nothing appended" in outcomes[-1][2]
    # each twice-sent file: one process appended it, the other found it all in the ledger
    for i in (0, 1):
        n = len(file_hashes(files[i]))
        said = sorted(outcomes[i][1].strip().split(": ", 1)[1:] + outcomes[4 + i][1].strip().split(": ", 1)[1:])
        assert said == sorted([f"{n} appended, 0 already in the ledger", f"0 appended, {n} already in the ledger"])
    placed = check_files_once_and_contiguous(url, files, [bad])
    report(
        f"concurrency-ingest-processes/{db_kind}: {len(plan)} `incentive ingest` processes at once "
        f"({placed.files} files, 2 sent twice, 1 invalid): {placed.events} events, 0 lost, 0 duplicated, "
        "0 interleaved, invalid file 0 events, chain valid"
    )


def test_worker_processes_ingesting_many_files_keep_one_chain(db_kind: str, fresh_db_urls: Any, tmp_path: Path) -> None:
    """Four processes, twelve steps each: every step each ingests a file at the same moment; at some steps
    two or more of them send the same file."""
    url = fresh_db_urls(db_kind)
    ok("init", db=url)
    rng = random.Random(f"concurrency-stress-{db_kind}")
    workers, steps = 4, 12
    jobs: list[list[tuple[float, list[str]]]] = [[] for _ in range(workers)]
    distinct: list[Path] = []
    rejected: list[Path] = []
    sends = 0
    for step in range(steps):
        shared = None
        if step % 3 == 1:
            shared = write_jsonl(
                tmp_path / f"shared{step}.jsonl", org_events(f"S{step}x", 3, 40, with_ids=step % 2 == 0)
            )
            distinct.append(shared)
        for w in range(workers):
            if shared is not None and w < 3:
                path = shared
            elif step % 4 == 3 and w == 3:
                path = write_jsonl(
                    tmp_path / f"bad{step}.jsonl", org_events(f"B{step}x", 2, 20, with_ids=False), bad_last_line=True
                )
                rejected.append(path)
            else:
                path = write_jsonl(
                    tmp_path / f"w{w}s{step}.jsonl", org_events(f"W{w}s{step}x", 3, 40, with_ids=(w + step) % 2 == 0)
                )
                distinct.append(path)
            jobs[w].append((rng.uniform(0, 0.02), ["ingest", str(path)]))
            sends += 1
    results = run_workers(url, jobs)
    failures = [
        (step, w, r)
        for step, by in results.items()
        for w, r in by.items()
        if (r[0] != 0) != (Path(jobs[w][step][1][1]) in rejected)
    ]
    assert not failures, failures
    placed = check_files_once_and_contiguous(url, distinct, rejected)
    report(
        f"concurrency-ingest-workers/{db_kind}: {workers} processes x {steps} simultaneous steps = {sends} ingests "
        f"({placed.files} distinct files, {len(rejected)} invalid): {placed.events} events, 0 lost, 0 duplicated, "
        "0 interleaved, chain valid"
    )


# --- cycle close -------------------------------------------------------------------------------------------


@pytest.fixture
def org_ledger(db_kind: str, fresh_db_urls: Any, tmp_path: Path) -> str:
    """A ledger with a small org: reps hired in 2025, contracts signed through 2026."""
    url = fresh_db_urls(db_kind)
    ok("init", db=url)
    ok("ingest", str(write_jsonl(tmp_path / "org.jsonl", org_events("Ox", 10, 300, with_ids=True))), db=url)
    return url


def _cycle_events(url: str, period: str) -> int:
    ledger = Ledger(url)
    try:
        return sum(1 for r in ledger.read() if r.event.type == "cycle.closed" and r.event.period == period)  # type: ignore[attr-defined]
    finally:
        ledger.dispose()


def _without_status(text: str) -> dict[str, Any]:
    result = json.loads(text)
    return {k: v for k, v in result.items() if k != "status"}


def test_simultaneous_closes_of_one_period_close_it_exactly_once(db_kind: str, org_ledger: str) -> None:
    url = org_ledger
    # real `incentive` processes: three closers of 2026-01 at once
    procs = [
        subprocess.Popen(
            [EXE, "--db", url, "cycle", "close", "2026-01", "--format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    statuses = Counter(json.loads(o)["status"] for o, _ in outs)
    assert statuses == Counter({"closed": 1, "already_closed": 2}), statuses
    assert all("already closed" in e for o, e in outs if json.loads(o)["status"] == "already_closed")
    assert len({json.dumps(_without_status(o), sort_keys=True) for o, _ in outs}) == 1
    assert _cycle_events(url, "2026-01") == 1
    rounds, closers = 1, 3
    # then worker processes: four closers per period, eleven periods in a row
    periods = [f"2026-{m:02d}" for m in range(2, 13)]
    rng = random.Random(f"concurrency-close-{db_kind}")
    jobs = [[(rng.uniform(0, 0.02), ["cycle", "close", p, "--format", "json"]) for p in periods] for _ in range(4)]
    results = run_workers(url, jobs)
    for step, period in enumerate(periods):
        by = results[step]
        assert all(code == 0 for code, _, _ in by.values()), by
        statuses = Counter(json.loads(o)["status"] for _, o, _ in by.values())
        assert statuses == Counter({"closed": 1, "already_closed": 3}), (period, statuses)
        assert len({json.dumps(_without_status(o), sort_keys=True) for _, o, _ in by.values()}) == 1, period
        assert _cycle_events(url, period) == 1, period
        rounds += 1
        closers += 4
    verified = Ledger(url).verify()
    assert verified.ok, verified.message
    ok("audit", "reproduce", "--all", db=url)
    report(
        f"concurrency-close/{db_kind}: {rounds} periods each closed by 3-4 processes at once ({closers} closes): "
        f"{rounds} closed exactly once, {closers - rounds} reported already closed, 0 double closes, chain valid, "
        "every cycle reproduces"
    )


def late_contract(period: str, k: int) -> dict[str, Any]:
    """A contract signed mid-``period`` by a rep of the org: its up-front part is due in that period."""
    return {
        "type": "contract.signed",
        "effective": f"{period}-15",
        "contract_id": f"LATE{k}",
        "account_id": f"LATEA{k}",
        "rep_id": "OxR1",
        "acv": "240000.00",
        "currency": "USD",
        "term_months": 12,
    }


def test_a_close_during_an_ingest_sees_a_consistent_prefix_and_records_which(
    db_kind: str, org_ledger: str, tmp_path: Path
) -> None:
    url = org_ledger
    rng = random.Random(f"concurrency-close-ingest-{db_kind}")
    periods = [f"2026-{m:02d}" for m in range(1, 11)]
    closer: list[tuple[float, list[str]]] = []
    ingester: list[tuple[float, list[str]]] = []
    files: list[Path] = []
    for k, period in enumerate(periods):
        events = [late_contract(period, k)] + [
            {"type": "service.cost", "effective": f"{period}-28", "contract_id": f"OxC{i}", "amount": "12.00"}
            for i in range(200)
        ]
        files.append(write_jsonl(tmp_path / f"late{k}.jsonl", events))
        # stagger the two by up to a quarter second either way, so both orders happen
        lag = rng.uniform(-0.25, 0.25)
        closer.append((max(0.0, lag), ["cycle", "close", period, "--format", "json"]))
        ingester.append((max(0.0, -lag), ["ingest", str(files[-1])]))
    results = run_workers(url, [closer, ingester])

    ledger = Ledger(url)
    try:
        rows = list(ledger.read())
        verified = ledger.verify()
    finally:
        ledger.dispose()
    assert verified.ok, verified.message
    cycles = {r.event.period: r for r in rows if r.event.type == "cycle.closed"}  # type: ignore[attr-defined]
    where = {r.event.contract_id: r.position for r in rows if r.event.type == "contract.signed"}  # type: ignore[attr-defined]
    saw = missed = 0
    for k, period in enumerate(periods):
        (c_code, c_out, c_err), (i_code, _, i_err) = results[k][0], results[k][1]
        assert c_code == 0 and i_code == 0, (period, c_err, i_err)
        cycle = cycles[period]
        seen_upto = cycle.event.ledger_position  # type: ignore[attr-defined]
        assert seen_upto == cycle.position - 1 - sum(  # the plan registration may precede the cycle
            1
            for r in rows
            if r.event.type == "plan.registered" and r.position < cycle.position and r.position > seen_upto
        )
        hashes = set(file_hashes(files[k]))
        file_positions = [r.position for r in rows if _hash(r) in hashes]
        assert len(file_positions) == len(hashes)
        before = [p <= seen_upto for p in file_positions]
        assert all(before) or not any(before), f"{period}: the close saw part of the file"
        paid_late = any(x["contract_id"] == f"LATE{k}" for x in json.loads(c_out)["lines"])
        assert paid_late == all(before), f"{period}: the lines do not match the prefix the cycle recorded"
        assert (where[f"LATE{k}"] <= seen_upto) == all(before)
        saw += all(before)
        missed += not all(before)
    ok("audit", "reproduce", "--all", db=url)
    report(
        f"concurrency-close-during-ingest/{db_kind}: {len(periods)} closes racing an ingest: {saw} saw the whole file, "
        f"{missed} saw none of it, 0 saw part; every cycle records its ledger position and reproduces from it"
    )


def _hash(r: Any) -> str:
    e = r.event
    return content_hash(e.type, e.effective.isoformat(), canonical_json(to_payload(e)))


def test_commands_run_in_one_process_leave_no_connection_open(fresh_db_urls: Any) -> None:
    """A worker running commands one after another (as ``_worker`` above does) must not keep a connection
    pool per command: before the CLI closed its ledgers, the workers of the test above held about 80 of
    the server's 100 connections."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    url = fresh_db_urls("postgres")
    ok("init", db=url)
    for _ in range(6):
        ok("audit", "verify", db=url)
        ok("cycle", "preview", "2026-01", db=url)
    name = make_url(url).database
    probe = create_engine(make_url(url).set(database="postgres"), poolclass=NullPool)
    with probe.connect() as conn:
        open_ = conn.exec_driver_sql("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).scalar()
    probe.dispose()
    assert open_ == 0
