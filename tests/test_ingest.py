"""Ingest: every validation rule, all-or-nothing files, idempotent re-ingest, clear errors (both databases)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from incentive_engine.core import reading
from incentive_engine.core.projections import project, state_digest
from incentive_engine.errors import ConcurrencyConflict, EngineError
from incentive_engine.shell import service, store
from incentive_engine.shell.store import AppendPipeline, Ledger, Writer, join_through_interrupts

from .cli import incentive, ok
from .ledgers import WORKED

ERROR_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<field>[^:]+): (?P<reason>.+)$")

HIRES = [
    {"type": "rep.hired", "effective": "2025-12-01", "event_id": "h1", "rep_id": "R1", "name": "Li", "role": "rep"},
    {"type": "rep.hired", "effective": "2025-12-01", "event_id": "h2", "rep_id": "R2", "name": "Chen", "role": "rep"},
]


def signed(cid: str, day: str = "2026-01-15", rep: str = "R1", **kw) -> dict:
    row = {
        "type": "contract.signed",
        "effective": day,
        "event_id": f"s-{cid}",
        "contract_id": cid,
        "account_id": "A" + cid,
        "rep_id": rep,
        "acv": "1000.00",
        "currency": "CNY",
        "term_months": 12,
    }
    return {**row, **kw}


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def head(url: str) -> tuple[int, str]:
    led = Ledger(url)
    try:
        return led.head()
    finally:
        led.dispose()


@pytest.fixture
def db(ledger_url: str) -> str:
    ok("init", db=ledger_url)
    return ledger_url


def test_a_valid_file_is_appended_and_re_ingest_adds_nothing(db, tmp_path):
    f = tmp_path / "facts.jsonl"
    write(
        f,
        [
            *HIRES,
            signed("C1"),
            {"type": "service.cost", "effective": "2026-03-01", "contract_id": "C1", "amount": "10.00"},
        ],
    )
    assert "4 appended, 0 already in the ledger" in ok("ingest", str(f), db=db)
    before = head(db)
    assert "0 appended, 4 already in the ledger" in ok("ingest", str(f), db=db)
    assert head(db) == before


def test_event_id_reused_with_different_content_is_an_error(db, tmp_path):
    ok("ingest", str(write(tmp_path / "a.jsonl", HIRES)), db=db)
    changed = dict(HIRES[0], name="Someone else")
    r = incentive("ingest", str(write(tmp_path / "b.jsonl", [changed])), db=db)
    assert r.code == 1
    assert "b.jsonl:1: event_id: 'h1' is already in the ledger with different content" in r.err


def test_every_error_of_a_rejected_file_is_reported_and_nothing_is_appended(db, tmp_path):
    ok("ingest", str(write(tmp_path / "hires.jsonl", HIRES)), db=db)
    before = head(db)
    rows = [
        signed("C1"),
        "{not json",
        {"type": "contract.signed", "effective": "2026-02-30", "contract_id": "C2"},
        {"type": "made.up", "effective": "2026-01-01"},
        signed("C3", acv="12.345"),
        signed("C4", currency="XXY"),
        signed("C5", rep="R9"),
        {"type": "contract.renewed", "effective": "2026-01-10", "contract_id": "C1", "acv": "5.00", "term_months": 12},
        {"type": "contract.expanded", "effective": "2026-02-01", "contract_id": "C1", "acv_delta": "-1000.00"},
        {"type": "contract.churned", "effective": "2026-03-01", "contract_id": "C1"},
        {"type": "service.cost", "effective": "2026-04-01", "contract_id": "C1", "amount": "1.00"},
        signed("C1", event_id="another-id"),
        {"type": "cycle.closed", "effective": "2026-01-31"},
        {"type": "kpi.measured", "effective": "2026-12-31", "rep_id": "R1", "year": 2026, "kpi": "csat", "value": 7},
    ]
    r = incentive("ingest", str(write(tmp_path / "bad.jsonl", rows)), db=db)
    assert r.code == 1
    errors = [line for line in r.err.splitlines() if ERROR_LINE.match(line)]
    by_line = {}
    for e in errors:
        m = ERROR_LINE.match(e)
        assert m["file"].endswith("bad.jsonl")
        by_line.setdefault(int(m["line"]), []).append((m["field"], m["reason"]))
    assert by_line[2][0][0] == "(json)"
    assert by_line[3][0] == ("effective", "not a calendar date: 2026-02-30")
    assert by_line[4][0] == ("type", "unknown event type 'made.up'")
    assert by_line[5][0][0] == "acv" and "more than 2 decimal digits" in by_line[5][0][1]
    assert by_line[6][0][0] == "currency"
    assert by_line[7][0] == ("rep_id", "unknown rep 'R9' (no rep.hired)")
    assert by_line[8][0] == ("effective", "2026-01-10 is before contract 'C1' was signed on 2026-01-15")
    assert by_line[9][0][0] == "acv_delta" and "would fall to 0.00" in by_line[9][0][1]
    assert by_line[11][0] == ("contract_id", "contract 'C1' churned on 2026-03-01")
    assert by_line[12][0] == ("contract_id", "contract 'C1' is already signed")
    assert by_line[13][0] == ("type", "cycle.closed is written by the engine and cannot be ingested")
    assert by_line[14][0][0] == "value" and "csat must lie in 1..5" in by_line[14][0][1]
    assert head(db) == before


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "(file): no events in the file"),
        (b"\n\n  \n", "(file): no events in the file"),
        (b"\xff\xfe\x00", "(file): not UTF-8 text"),
        (
            b'{"type": "rep.hired", "effective": "2026-01-01", "rep_id": "R1", "name": "A", "role": "rep", "x": 1e999}\n',
            "x: unknown field",
        ),
        (
            b'{"type":"target.set","effective":"2026-01-01","rep_id":"R1","year":2026,"amount":1e400,"currency":"CNY"}\n',
            "amount: number too large",
        ),
        (
            b'{"type":"target.set","effective":"2026-01-01","rep_id":"R1","year":2026,"amount":NaN,"currency":"CNY"}\n',
            "NaN is not a number",
        ),
        (
            b'{"type":"target.set","effective":"2026-01-01","rep_id":"R1","year":2026,"amount":"Infinity","currency":"CNY"}\n',
            "amount: not a finite number",
        ),
        (
            b'{"type":"rep.hired","effective":"2026-01-01","rep_id":"R1","name":"A","role":"rep","rep_id":"R2"}\n',
            "duplicate key 'rep_id'",
        ),
        (
            b'{"type":"rep.hired","effective":"2026-01-01","rep_id":"R1","name":"' + b"x" * 300 + b'","role":"rep"}\n',
            "name: String should have at most 200 characters",
        ),
        (
            b'{"type":"rep.terminated","effective":"2026-01-01","rep_id":"R1","leaver":"ugly"}\n',
            "leaver: Input should be",
        ),
        (
            b'{"type":"contract.signed","effective":"2026-01-01","contract_id":"C1","account_id":"A","rep_id":"R1",'
            b'"acv":"5","currency":"CNY","term_months":121}\n',
            "term_months: Input should be less than or equal to 120",
        ),
        (b'["not an object"]\n', "(json): each line must be a JSON object"),
        (
            b'{"type":"rep.hired","effective":"2026-01-01","rep_id":"R1","name":"A","role":"rep","region":7}\n',
            "region:",
        ),
    ],
)
def test_malformed_input_gets_a_clear_error_and_changes_nothing(content, expected, tmp_path, fresh_db_urls):
    db = fresh_db_urls("sqlite")
    ok("init", db=db)
    before = head(db)
    f = tmp_path / "in.jsonl"
    f.write_bytes(content)
    r = incentive("ingest", str(f), db=db)
    assert r.code == 1, r.out
    assert expected in r.err, r.err
    assert "Traceback" not in r.err
    assert head(db) == before


def test_bom_and_crlf_and_csv_are_read(db, tmp_path):
    jsonl = tmp_path / "hires.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(json.dumps(h).encode() for h in HIRES) + b"\r\n")
    assert "2 appended" in ok("ingest", str(jsonl), db=db)
    csv = tmp_path / "crm.csv"
    csv.write_bytes(
        b"\xef\xbb\xbftype,effective,event_id,contract_id,account_id,rep_id,acv,currency,term_months,amount\r\n"
        b"contract.signed,2026-01-15,s1,C1,A1,R1,1200000.00,CNY,12,\r\n"
        b"service.cost,2026-02-01,,C1,,,,,,500.00\r\n"
    )
    assert "2 appended" in ok("ingest", str(csv), db=db)
    state = project(Ledger(db).read())
    assert state.contracts["C1"].acv0 == 1200000 and state.contracts["C1"].service_costs[0].value == 500


def test_unknown_extension_and_missing_file(db, tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    r = incentive("ingest", str(tmp_path / "x.txt"), str(tmp_path / "missing.jsonl"), db=db)
    assert r.code == 1
    assert "x.txt: (file): unknown file type: use .jsonl or .csv" in r.err
    assert "missing.jsonl: (file): cannot read" in r.err


def test_uninitialised_database_is_a_clear_error(tmp_path):
    r = incentive("ingest", str(WORKED / "01-facts.jsonl"), db=f"sqlite:///{tmp_path / 'none.db'}")
    assert r.code == 1 and "run `incentive init`" in r.err


@st.composite
def file_with_a_bad_line(draw):
    n = draw(st.integers(1, 12))
    rows: list = [*HIRES] + [signed(f"C{i}", day=f"2026-0{1 + i % 9}-1{i % 9}") for i in range(n)]
    bad = draw(
        st.sampled_from(
            [
                "{oops",
                {"type": "contract.signed", "effective": "2026-01-01"},
                signed("C0"),
                signed("Cx", rep="R7"),
                {"type": "contract.churned", "effective": "2026-01-01", "contract_id": "NOPE"},
            ]
        )
    )
    at = draw(st.integers(0, len(rows)))
    rows.insert(at, bad)
    return rows, at


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file_with_a_bad_line())
def test_a_file_is_atomic_under_a_rejected_line_at_any_position(tmp_path_factory, fresh_db_urls, case):
    rows, at = case
    db = fresh_db_urls("sqlite")
    ok("init", db=db)
    f = write(tmp_path_factory.mktemp("atomic") / "f.jsonl", rows)
    r = incentive("ingest", str(f), db=db)
    assert r.code == 1
    assert f":{at + 1}: " in r.err or "C0" in r.err
    assert head(db)[0] == 0


def test_replay_digest_is_identical_however_often_it_runs(db, tmp_path):
    ok("ingest", str(WORKED / "01-facts.jsonl"), db=db)
    ok("cycle", "close", "2026-03", db=db)
    digests = {json.loads(ok("audit", "replay", "--format", "json", db=db))["digest"] for _ in range(3)}
    assert len(digests) == 1
    full = state_digest(project(Ledger(db).read()))
    service.forget_projections()
    assert state_digest(service.load_state(Ledger(db))) == full == digests.pop()


def test_replay_as_of_a_position_and_a_time(db):
    ok("ingest", str(WORKED / "01-facts.jsonl"), db=db)
    ok("ingest", str(WORKED / "02-late-renewal.jsonl"), db=db)
    first = json.loads(ok("audit", "replay", "--as-of-position", "5", "--format", "json", db=db))
    assert first["position"] == 5 and first["contracts"] == 1
    recorded = [r.recorded_at for r in Ledger(db).read()]
    assert recorded[15] < recorded[16]  # one file, one transaction, one recorded time
    at = json.loads(ok("audit", "replay", "--as-of-time", recorded[15], "--format", "json", db=db))
    assert at["position"] == 16
    full = json.loads(ok("audit", "replay", "--format", "json", db=db))
    assert at["digest"] != full["digest"] and full["position"] == 17


# --- the append pipeline (store.AppendPipeline): batches inserted while the next is read and checked -----

COSTS = [
    {"type": "service.cost", "effective": "2026-02-01", "event_id": f"k{i}", "contract_id": "C1", "amount": f"{i}.00"}
    for i in range(1, 3201)  # more rows than one INSERT statement takes (``store._ROWS_PER_INSERT``)
]
UNKNOWN_COST = {"type": "service.cost", "effective": "2026-02-01", "contract_id": "NOPE", "amount": "1.00"}


def _spy_writes(monkeypatch) -> tuple[list[int], threading.Event]:
    """The number of rows each batch's insert wrote, and an event set once one has."""
    written: list[int] = []
    done = threading.Event()
    real = Writer._write

    def write_(self, prepared):
        out = real(self, prepared)
        written.append(len(out))
        done.set()
        return out

    monkeypatch.setattr(Writer, "_write", write_)
    return written, done


def _check_after_an_insert(monkeypatch, done: threading.Event, then=None) -> None:
    """The reference rules run only once the thread has inserted a batch (on a ledger whose reads beside
    the writer see nothing of it), then ``then`` (or the real rules)."""
    real = service.check_batch

    def check(state, events):
        assert done.wait(30)
        return (then or real)(state, events)

    monkeypatch.setattr(service, "check_batch", check)


def _prepared(ledger: Ledger, tmp_path: Path) -> None:
    service.forget_projections()
    (result,) = service.ingest_files(ledger, [write(tmp_path / "base.jsonl", [*HIRES, signed("C1")])])
    assert not result.problems


def test_a_file_rejected_by_a_rule_takes_back_what_was_inserted_beside_the_check(ledger, tmp_path, monkeypatch):
    """The rows go in while the rules run; a line the rules reject (the last one here) must still leave
    the ledger exactly as it was, on both databases."""
    _prepared(ledger, tmp_path)
    before = ledger.head()
    written, done = _spy_writes(monkeypatch)
    if ledger.reads_beside_writer:
        _check_after_an_insert(monkeypatch, done)
    assert len(COSTS) > store._ROWS_PER_INSERT
    (result,) = service.ingest_files(ledger, [write(tmp_path / "f.jsonl", [*COSTS, UNKNOWN_COST])])
    assert [(p.line, p.field) for p in result.problems] == [(len(COSTS) + 1, "contract_id")]
    assert written == [len(COSTS) + 1]  # the insert did run (speculatively) ...
    assert ledger.head() == before  # ... and was rolled back
    assert ledger.verify().ok
    (again,) = service.ingest_files(ledger, [write(tmp_path / "g.jsonl", COSTS)])
    assert (again.appended, again.problems) == (len(COSTS), [])
    assert ledger.head()[0] == before[0] + len(COSTS)


def test_a_failed_insert_beside_the_check_is_raised_unless_the_rules_reject_the_file(ledger, tmp_path, monkeypatch):
    _prepared(ledger, tmp_path)
    before = ledger.head()

    def broken(self, rows):
        raise EngineError("disk full (simulated)")

    monkeypatch.setattr(Writer, "_insert_rows", broken)
    with pytest.raises(EngineError, match="disk full"):
        service.ingest_files(ledger, [write(tmp_path / "f.jsonl", COSTS)])
    assert ledger.head() == before
    (result,) = service.ingest_files(ledger, [write(tmp_path / "g.jsonl", [*COSTS, UNKNOWN_COST])])
    assert [p.field for p in result.problems] == ["contract_id"]  # the file's problem, not the insert's
    assert ledger.head() == before


def test_a_refused_append_is_raised_unless_the_rules_reject_the_file(ledger, tmp_path, monkeypatch):
    """The pipeline refusing a batch (here: as if another writer had taken the keys) stops the sending;
    the rules still run, and their rejections are what the file gets."""
    _prepared(ledger, tmp_path)
    before = ledger.head()

    def refused(self, *args, **kwargs):
        raise ConcurrencyConflict("append refused (simulated)")

    monkeypatch.setattr(AppendPipeline, "send", refused)
    with pytest.raises(ConcurrencyConflict, match="simulated"):
        service.ingest_files(ledger, [write(tmp_path / "f.jsonl", COSTS)])
    (result,) = service.ingest_files(ledger, [write(tmp_path / "g.jsonl", [*COSTS, UNKNOWN_COST])])
    assert [p.field for p in result.problems] == ["contract_id"]
    assert ledger.head() == before


def test_an_error_in_the_check_waits_for_the_insert_and_writes_nothing(ledger, tmp_path, monkeypatch):
    _prepared(ledger, tmp_path)
    before = ledger.head()
    written, done = _spy_writes(monkeypatch)

    def failing(state, events):
        raise RuntimeError("the check failed (simulated)")

    if ledger.reads_beside_writer:
        _check_after_an_insert(monkeypatch, done, failing)
    else:
        monkeypatch.setattr(service, "check_batch", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        service.ingest_files(ledger, [write(tmp_path / "f.jsonl", COSTS)])
    assert written == ([len(COSTS)] if ledger.reads_beside_writer else [])  # joined before the rollback
    assert ledger.head() == before
    assert ledger.verify().ok


def _files_in_batches(tmp_path: Path) -> list[Path]:
    """Files whose duplicates fall in different batches of 3 lines: an event id given twice (same content,
    then different content), a cost without an id stored once and given twice, one given twice and new."""
    twice = {"type": "service.cost", "effective": "2026-02-01", "contract_id": "C1", "amount": "9.00"}
    fresh = {"type": "service.cost", "effective": "2026-02-02", "contract_id": "C1", "amount": "8.00"}
    first = write(tmp_path / "first.jsonl", [COSTS[0], twice])
    second = write(
        tmp_path / "second.jsonl",
        [COSTS[1], twice, COSTS[2], fresh, COSTS[1], twice, COSTS[3], fresh, COSTS[0], COSTS[4]],
    )
    changed = dict(COSTS[2], amount="99.00")
    twice_in_file = dict(COSTS[8], amount="5.55")
    bad = write(
        tmp_path / "bad.jsonl",
        [COSTS[5], COSTS[6], COSTS[7], changed, COSTS[8], COSTS[2], dict(COSTS[1]), twice_in_file],
    )
    return [first, second, bad]


def _ingested_in_batches(size, tmp_path, db_kind, fresh_db_urls, monkeypatch, files) -> tuple[list, str]:
    """Ingest ``files(tmp_path)`` read ``size`` lines a batch into a fresh prepared ledger: each file's
    (appended, skipped, problems), and the digest of the ledger's state after them."""
    url = fresh_db_urls(db_kind)
    monkeypatch.setattr(reading, "BATCH_LINES", size)
    ledger = Ledger(url)
    ledger.init()
    _prepared(ledger, tmp_path)
    results = service.ingest_files(ledger, files(tmp_path))
    state = project(ledger.read())
    ledger.dispose()
    return (
        [(r.appended, r.skipped, [(p.line, p.field, p.reason) for p in r.problems]) for r in results],
        state_digest(state),
    )


def test_a_file_in_batches_is_deduplicated_as_a_whole(tmp_path, db_kind, fresh_db_urls, monkeypatch):
    """Lookups are of the ledger as it was before the file, whatever batch a line falls in: batches of 3
    lines and one batch give the same appends, skips, problems and ledger."""
    outcomes = [
        _ingested_in_batches(size, tmp_path, db_kind, fresh_db_urls, monkeypatch, _files_in_batches)
        for size in (3, 100_000)
    ]
    assert outcomes[0] == outcomes[1]
    (first, second, bad), _ = outcomes[0]
    assert first[:2] == (2, 0)
    # skipped: COSTS[1] the second time, COSTS[0] (stored), and one of the two ``twice`` (stored once);
    # appended: the other ``twice``, both ``fresh`` (none stored), COSTS[1] once, COSTS[2], [3] and [4]
    assert second[:2] == (7, 3)
    assert bad[2] == [
        (4, "event_id", "'k3' is already in the ledger with different content"),
        (8, "event_id", "'k9' is used on line 5 with different content"),  # an earlier batch's line
    ]


def test_ids_given_again_after_a_batch_of_new_events_are_found(tmp_path, db_kind, fresh_db_urls, monkeypatch):
    """A batch of only new events takes the deduplicator's one step (``_Deduplicator.__call__``); the ids
    it gave are still known to the batches after it, and an id given twice within one batch is found."""
    a, b, c = COSTS[10], COSTS[11], COSTS[12]
    rows = [
        a,
        b,
        c,
        dict(a),
        dict(b, amount="7.77"),
        COSTS[13],
        COSTS[14],
        dict(COSTS[14]),
        dict(COSTS[14], amount="1"),
    ]
    outcomes = [
        _ingested_in_batches(
            size, tmp_path, db_kind, fresh_db_urls, monkeypatch, lambda d: [write(d / "again.jsonl", rows)]
        )[0][0]
        for size in (3, 100_000)
    ]
    assert (
        outcomes[0]
        == outcomes[1]
        == (
            0,
            4,
            [
                (5, "event_id", "'k12' is used on line 2 with different content"),
                (9, "event_id", "'k15' is used on line 7 with different content"),
            ],
        )
    )


def test_a_commit_that_fails_drops_the_projection_folded_beside_it(ledger, tmp_path, monkeypatch):
    """The process's projection takes in a file's events while the writer commits them; should the
    commit fail, the projection (ahead of the ledger) is dropped, and the next read folds the ledger."""
    _prepared(ledger, tmp_path)
    service.load_state(ledger)  # held from here on
    folded = []
    real_advance = service._advance
    monkeypatch.setattr(service, "_advance", lambda *a: folded.append(real_advance(*a) or len(a[1])))

    def refuse(self):
        raise OSError("disk full")

    monkeypatch.setattr(store.Connection, "commit", refuse)
    with pytest.raises(OSError, match="disk full"):
        service.ingest_files(ledger, [write(tmp_path / "f.jsonl", COSTS[:5])])
    monkeypatch.undo()
    assert folded == [5]  # the projection did take the five costs in ...
    assert ledger.url not in service._PROJECTIONS  # ... and was dropped with the commit
    assert state_digest(service.load_state(ledger)) == state_digest(project(ledger.read()))


def test_a_ledger_without_a_second_connection_checks_on_the_writers(tmp_path):
    """An in-memory SQLite ledger has one connection: its file's entities are read on the writer's
    before the insert starts (no snapshot beside it); the answers are the same."""
    assert Ledger(f"sqlite:///{tmp_path / 'l.db'}").reads_beside_writer
    memory = Ledger("sqlite://")
    assert not memory.reads_beside_writer
    memory.init()
    _prepared(memory, tmp_path)
    before = memory.head()
    (result,) = service.ingest_files(memory, [write(tmp_path / "f.jsonl", [*COSTS, UNKNOWN_COST])])
    assert [(p.line, p.field) for p in result.problems] == [(len(COSTS) + 1, "contract_id")]
    assert memory.head() == before
    (result,) = service.ingest_files(memory, [write(tmp_path / "g.jsonl", COSTS)])
    assert result.appended == len(COSTS)
    memory.dispose()


def test_the_insert_is_waited_for_through_a_second_interrupt():
    """A Ctrl-C while the insert's thread is joined must not let the writer roll back under it."""
    joins: list[int] = []

    class Inserting:
        def join(self) -> None:
            joins.append(1)
            if len(joins) == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        join_through_interrupts(Inserting())
    assert len(joins) == 2  # waited again after the interrupt, then raised it
