"""The measured phases of the benchmark, each run by ``bench/run.py`` in a fresh process of its own, so
that its peak memory (``ru_maxrss``) and its timings are its own. Each prints one JSON object on its last
line of output.

    python bench/phases.py build    DB_URL DATA_DIR LAST_PERIOD   ingest every month and close it (up to LAST_PERIOD)
    python bench/phases.py close    DB_URL PERIOD                 one monthly close, in a cold process
    python bench/phases.py verify   DB_URL                        Ledger.verify() alone
    python bench/phases.py replay   DB_URL                        the full fold (load_state) alone
    python bench/phases.py floor    DB_URL EMPTY_DB_URL           the ingested rows again, by the driver alone
    python bench/phases.py peer     DB_URL DATA_DIR [BUDGET_S]    the eventsourcing library: append, then read
    python bench/phases.py cli      DB_URL ARGS...                the incentive command (output discarded)
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any


def _rss_mb() -> float:
    """This process's peak resident memory since it started its program (``VmHWM``). Not ``ru_maxrss``:
    Linux carries that across ``exec`` from the parent at ``fork``, so every phase started by the
    benchmark (which holds the generated events: 811 MB at M) reported at least the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover - not Linux


def _done(**figures: Any) -> None:
    figures["rss_mb"] = round(_rss_mb(), 1)
    print(json.dumps(figures))


def build(url: str, data: str, last: str, held: str = "") -> None:
    """The monthly workflow, in one process: ingest the month's CRM export, close the month (the months
    before ``last``). The file of month ``held``, if any, is left for a later phase to ingest."""
    from incentive_engine.shell import service
    from incentive_engine.shell.plans import default_rules_dir, load_plans
    from incentive_engine.shell.store import Ledger

    ledger = Ledger(url)
    ledger.init()
    book = load_plans(default_rules_dir())
    ingest_s, events, closes, lines = 0.0, 0, {}, {}
    ingests: dict[str, tuple[int, float]] = {}  # each month's events and ingest seconds
    files = sorted(p for p in Path(data).glob("*.jsonl") if p.stem != held)
    for path in files:
        t = time.perf_counter()
        (result,) = service.ingest_files(ledger, [path])
        took = time.perf_counter() - t
        ingest_s += took
        if result.problems:
            raise SystemExit(f"{path}: rejected: {result.problems[:3]}")
        events += result.appended
        ingests[path.stem] = (result.appended, round(took, 3))
        if path.stem < last:
            t = time.perf_counter()
            closed = service.close(ledger, book, path.stem)
            closes[path.stem] = round(time.perf_counter() - t, 3)
            lines[path.stem] = len(closed.lines)
    _done(
        events=events,
        ingest_s=round(ingest_s, 2),
        ingest_eps=round(events / ingest_s),
        ingests=ingests,
        closes=closes,
        lines=lines,
    )


def close(url: str, period: str) -> None:
    """One monthly close in a process that has not seen the ledger before (as the CLI runs it)."""
    from incentive_engine.shell import service
    from incentive_engine.shell.plans import default_rules_dir, load_plans
    from incentive_engine.shell.store import Ledger

    ledger = Ledger(url)
    book = load_plans(default_rules_dir())
    t = time.perf_counter()
    result = service.close(ledger, book, period)
    took = time.perf_counter() - t
    _done(
        seconds=round(took, 3),
        status=result.status,
        lines=len(result.lines),
        listed=len(result.evaluations),
        totals=len(result.totals),
    )


def _ready() -> None:
    """When run beside another phase (``BENCH_TOGETHER``): say so once everything is imported, and wait
    for the go, so that both phases' timed work overlaps and neither's start-up is counted (each also
    reports when its timed work ``ended``, on the machine's monotonic clock)."""
    if os.environ.get("BENCH_TOGETHER"):
        print("ready", flush=True)
        sys.stdin.readline()


def verify(url: str) -> None:
    from incentive_engine.shell.store import Ledger

    _ready()
    t = time.perf_counter()
    report = Ledger(url).verify()
    took = time.perf_counter() - t
    ended = time.monotonic()
    if not report.ok:
        raise SystemExit(report.message)
    _done(events=report.events, seconds=round(took, 3), eps=round(report.events / took), ended=ended)


def replay(url: str) -> None:
    from incentive_engine.core.projections import state_digest
    from incentive_engine.shell import service
    from incentive_engine.shell.store import Ledger

    _ready()
    t = time.perf_counter()
    state = service.load_state(Ledger(url))
    took = time.perf_counter() - t
    ended = time.monotonic()
    _done(
        events=state.position, seconds=round(took, 3), eps=round(state.position / took), digest=state_digest(state),
        ended=ended,
    )  # fmt: skip


def floor(url: str, fresh: str) -> None:
    """The database's own floor under the ingest: every row the ledger at ``url`` got from ingested files
    inserted again, in position order, into the empty ledger ``fresh`` (same schema, triggers and
    connection settings), by the driver alone and as the engine's writer does it: one transaction a
    file, SQLite in multi-row INSERTs of the writer's size, PostgreSQL by COPY. Nothing else: no
    reading, validation, rules, deduplication, hashing or projection, and the parameters are built
    before the clock starts. A file's rows are those of one ``recorded_at`` (one append); the closes'
    and plans' appends go in between, untimed, as does SQLite's checkpoint after each commit (the
    engine runs it in a thread beside its next step). What the ingest would reach if everything above
    the database cost nothing."""
    from itertools import chain, groupby

    from incentive_engine.core.events import ENGINE_TYPES
    from incentive_engine.shell.store import Ledger, Writer, utc_now
    from incentive_engine.shell.tables import COLUMNS, TABLE

    source, target = Ledger(url), Ledger(fresh)
    target.init()
    names = ", ".join(COLUMNS)
    kind, recorded = COLUMNS.index("type"), COLUMNS.index("recorded_at")
    timed_rows, timed_s, files = 0, 0.0, 0
    with target.engine.connect() as conn:
        dbapi: Any = conn.connection.dbapi_connection
        sqlite = conn.dialect.name == "sqlite"  # (the pool set its pragmas when it opened the connection)
        writer = Writer(conn, utc_now)  # only for its INSERT statement and rows a statement, not to write
        head, one, step = writer._insert_head, writer._row_values, writer._rows_per_insert
        for _, group in groupby(source.read_rows(), key=lambda row: row[recorded]):
            rows = list(group)
            if sqlite:
                statements = [
                    (head + ", ".join([one] * len(part)), list(chain(*part)))
                    for part in (rows[i : i + step] for i in range(0, len(rows), step))
                ]
            t = time.perf_counter()
            if sqlite:
                dbapi.execute("BEGIN IMMEDIATE")
                for sql, params in statements:
                    dbapi.execute(sql, params)
                dbapi.execute("COMMIT")
            else:
                with dbapi.cursor() as cur, cur.copy(f"COPY {TABLE} ({names}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                dbapi.commit()
            took = time.perf_counter() - t
            if sqlite:
                dbapi.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            if not any(row[kind] in ENGINE_TYPES for row in rows):
                timed_rows, timed_s, files = timed_rows + len(rows), timed_s + took, files + 1
    target.dispose()
    source.dispose()
    _done(rows=timed_rows, files=files, seconds=round(timed_s, 2), eps=round(timed_rows / timed_s))


def peer(url: str, data: str, budget: str = "0") -> None:
    """The same events, appended and read back with the eventsourcing library (its Application, its
    default JSON transcoder, its SQLite/PostgreSQL application recorder): one save per monthly batch (in
    saves of 1,000 events on PostgreSQL),
    as our ingest appends one file per transaction; then every event read back through the notification
    log and mapped to a domain event object, as our replay rebuilds every event. With a ``budget`` (seconds,
    0: none), appending stops after the first batch that ends past it, and what was appended is read back
    (the figures are then rates over part of the data, and say so)."""
    import os
    import uuid
    from datetime import UTC, date, datetime
    from decimal import Decimal

    from eventsourcing.application import Application
    from eventsourcing.domain import DomainEvent
    from eventsourcing.persistence import Transcoding
    from sqlalchemy.engine import make_url

    from incentive_engine.core.events import COST_STREAM

    class Fact(DomainEvent):
        type: str
        effective: date
        event_id: str | None
        fields: dict[str, Any]

    class DateAsISO(Transcoding):
        type = date
        name = "date"

        def encode(self, obj: date) -> str:
            return obj.isoformat()

        def decode(self, data: str) -> date:
            return date.fromisoformat(data)

    class Peer(Application[uuid.UUID]):
        def register_transcodings(self, transcoder: Any) -> None:
            super().register_transcodings(transcoder)
            transcoder.register(DateAsISO())

    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        os.environ.update(PERSISTENCE_MODULE="eventsourcing.sqlite", SQLITE_DBNAME=str(u.database))
    else:
        os.environ.update(
            PERSISTENCE_MODULE="eventsourcing.postgres",
            POSTGRES_DBNAME=str(u.database),
            POSTGRES_HOST=u.host or "127.0.0.1",
            POSTGRES_PORT=str(u.port or 5432),
            POSTGRES_USER=u.username or "postgres",
            POSTGRES_PASSWORD=u.password or "",
        )
    app = Peer()
    money = {"acv", "amount", "acv_delta", "value", "composite"}
    versions: dict[uuid.UUID, int] = {}
    appended = 0
    t = time.perf_counter()
    for path in sorted(Path(data).glob("*.jsonl")):
        batch = []
        for line in path.read_text(encoding="utf-8").splitlines():
            d = json.loads(line)
            # the engine's streams (``core.events.stream_of``): a contract's service costs in one of their own
            if d["type"] == "service.cost":
                stream = COST_STREAM + d["contract_id"]
            elif d["type"].startswith("contract."):
                stream = f"contract:{d['contract_id']}"
            else:
                stream = f"rep:{d['rep_id']}"
            oid = uuid.uuid5(uuid.NAMESPACE_URL, stream)
            versions[oid] = versions.get(oid, 0) + 1
            fields = {
                k: Decimal(v) if k in money else v for k, v in d.items() if k not in ("type", "effective", "event_id")
            }
            batch.append(
                Fact(
                    originator_id=oid, originator_version=versions[oid], timestamp=datetime.now(UTC), type=d["type"],
                    effective=date.fromisoformat(d["effective"]), event_id=d.get("event_id"), fields=fields,
                )
            )  # fmt: skip
        # one save per file, as our ingest appends one file per transaction; on PostgreSQL in saves of
        # 1,000: a save of a whole month (33,000 events at M) stalled for good in psycopg's pipeline
        # (client and server each waiting for the other), which stopped two earlier M runs
        step = 1000 if u.get_backend_name() == "postgresql" else len(batch)
        for i in range(0, len(batch), step):
            app.save(*batch[i : i + step])
        appended += len(batch)
        if float(budget) and time.perf_counter() - t > float(budget):
            break
    append_s = time.perf_counter() - t
    t = time.perf_counter()
    read, start = 0, 1
    while True:
        page = app.recorder.select_notifications(start, 5000)
        if not page:
            break
        for n in page:
            app.mapper.to_domain_event(n)
        read += len(page)
        start = page[-1].id + 1
    read_s = time.perf_counter() - t
    app.close()
    _done(
        events=appended, append_s=round(append_s, 2), append_eps=round(appended / append_s),
        read=read, read_s=round(read_s, 2), read_eps=round(read / read_s),
    )  # fmt: skip


def cli(url: str, *args: str) -> None:
    """The real ``incentive`` command, run in this process (its output discarded) so that its peak memory
    is its own; the caller times the whole process, start-up included."""
    import contextlib

    from incentive_engine.shell.cli import main

    sys.argv = ["incentive", "--db", url, *args]
    code: Any = 0
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    if code not in (0, None):
        raise SystemExit(f"incentive {' '.join(args)} exited with {code}")
    _done()


PHASES = {
    "build": build, "close": close, "verify": verify, "replay": replay, "floor": floor, "peer": peer, "cli": cli,
}  # fmt: skip

if __name__ == "__main__":
    PHASES[sys.argv[1]](*sys.argv[2:])
