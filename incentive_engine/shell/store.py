"""The ledger store: an append-only, hash-chained event log on SQLite or PostgreSQL, through one code path.

Shape of the store:

- one table, ``ledger_event`` (``shell.tables``), created only by the Alembic migrations in
  ``ledger_migrations/``; the database itself refuses UPDATE and DELETE (triggers);
- one writer at a time, across processes: ``with ledger.writer() as w:`` holds SQLite's write lock
  (``BEGIN IMMEDIATE``) or a PostgreSQL transaction-scoped advisory lock, so positions are assigned as
  head + 1 and the hash chain is extended by exactly one writer; everything inside sees one consistent
  prefix of the log, commits on normal exit and rolls back on an exception;
- optimistic concurrency per stream comes from the schema (UNIQUE(stream_id, stream_version)) and from
  ``expected_versions``; either way a stale writer gets ``ConcurrencyConflict`` and nothing is written;
- ``verify()`` recomputes the chain from position 1 with the helpers of ``core.canonical``, so an
  auditor's own few lines of code recompute the same hashes.

Rows are read and written with plain SQLAlchemy Core / driver statements (tuples, one executemany),
never ORM objects: appending and verifying run at tens to hundreds of thousands of rows per second.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import sqlite3
import threading
import types
import typing
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache, partial
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlparse

from sqlalchemy import bindparam, create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import StaticPool

from ..core.canonical import GENESIS_HASH, chain_hash, content_hash, record_text
from ..core.events import (
    COST_STREAM,
    ENGINE_TYPES,
    EVENT_CLASSES,
    LEGACY_COST_STREAM,
    Event,
    from_stored,
    payload_json,
    stream_of,
)
from ..core.projections import CONTRACT_LISTS, ClosedCycle, Contract, Fact, LedgerState, Projector, Recorded, Renewal
from ..errors import ConcurrencyConflict, EngineError, LedgerNotInitialised
from .tables import (
    COLUMNS,
    CONTRACT_HEAD_TABLE,
    PG_TRIGGER_FUNCTION,
    PG_TRUNCATE_TRIGGER,
    SQLITE_REPLACE_TRIGGERS,
    TABLE,
    TRIGGERS,
)

if TYPE_CHECKING:
    from alembic.config import Config

try:  # the native chain checker (setup.py); optional: without it the Python verifier does the work
    from . import _chain_sqlite
except ImportError:  # pragma: no cover - only where the C part did not build
    _chain_sqlite = None
try:  # the native reader of contracts' costs, expansions, renewals (setup.py); optional: else read in Python
    from . import _contract_facts_sqlite
except ImportError:  # pragma: no cover - only where the C part did not build
    _contract_facts_sqlite = None

__all__ = [
    "AppendPipeline",
    "Ledger",
    "PreparedAppend",
    "VerifyReport",
    "Writer",
    "alembic_config",
    "driver_rows",
    "fact_views",
    "fold_sorted",
    "head_revision",
    "migrations_dir",
    "rebuild_contract_heads",
    "refresh_statistics",
    "rows_where",
    "stream_rows",
    "utc_now",
]

# The key of the PostgreSQL advisory lock that serialises writers: any constant works as long as every
# writer (and `init`) uses the same one.
PG_WRITER_LOCK = 0x1D5E_2A0B_7C41_93E6
READ_BATCH = 5000  # rows per fetch when streaming reads
IN_CHUNK = 500  # values per IN (...) list
LOCK_TIMEOUT_MS = 30_000  # how long a writer waits for the lock (SQLite busy_timeout, PostgreSQL lock_timeout)
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc_now() -> str:
    """The current UTC time as the ledger writes it: ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    return datetime.now(UTC).strftime(TIMESTAMP_FORMAT)


# --- migrations ---------------------------------------------------------------------------------


def _editable_root() -> Path | None:
    """The project directory of an editable install, from the distribution's ``direct_url.json``."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        raw = distribution("incentive-engine").read_text("direct_url.json")
    except (ImportError, PackageNotFoundError):  # pragma: no cover - not installed at all
        return None
    if not raw:
        return None
    try:
        url = urlparse(json.loads(raw).get("url", ""))
    except (ValueError, AttributeError):
        return None
    return Path(unquote(url.path)) if url.scheme == "file" else None


def migrations_dir() -> Path:
    """The ``ledger_migrations`` directory: ``$INCENTIVE_MIGRATIONS`` if set, else next to the
    ``incentive_engine`` package (a checkout or an editable install), else the editable install's
    project directory."""
    candidates: list[Path] = []
    if env := os.environ.get("INCENTIVE_MIGRATIONS"):
        candidates.append(Path(env))
    candidates.append(Path(__file__).resolve().parents[2] / "ledger_migrations")
    if (root := _editable_root()) is not None:
        candidates.append(root / "ledger_migrations")
    for candidate in candidates:
        if (candidate / "env.py").is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise EngineError(f"the ledger migrations were not found (looked in {looked}); set INCENTIVE_MIGRATIONS")


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic configuration built in code (there is no alembic.ini). Pass an open ``connection`` to
    run migrations inside the caller's transaction, or a ``url``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


# The schema revision this code reads and writes: the head of ``ledger_migrations`` (a test checks the
# two agree). A command compares the database's with it in one query; Alembic, a fifth of a second of
# imports, is loaded only to migrate or to explain a mismatch.
SCHEMA_REVISION = "0007"


@cache
def head_revision() -> str:
    """The revision the migration scripts lead to (``SCHEMA_REVISION``, read from the scripts)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the repository always has migrations
        raise EngineError("the ledger migrations have no head revision")
    return head


# --- engines ------------------------------------------------------------------------------------


def _make_engine(url: str) -> Engine:
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        memory = u.database in (None, "", ":memory:")
        # where a thread checkpoints after each writer (``_Checkpointer``), SQLite's own checkpoint in the
        # COMMIT stays only as a backstop
        autocheckpoint = BACKSTOP_CHECKPOINT_PAGES if _sqlite_file(u) is not None else 16384
        engine = (
            create_engine(u, poolclass=StaticPool, hide_parameters=True)
            if memory
            # LIFO: the connection returned last is handed out next. SQLite drops a connection's page
            # cache when another connection changed the file since it last read; a FIFO pool handed the
            # next ingest's writer the connection that had only read (inside the previous writer's
            # block), so every index page came from the OS again (version lookups of two M files: 8-9
            # against 3.3-4.6 us per event)
            else create_engine(u, hide_parameters=True, pool_use_lifo=True)
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
            # The driver must not open transactions behind our back: we emit BEGIN ourselves (below),
            # so a writer can ask for BEGIN IMMEDIATE (the database-wide write lock) up front.
            dbapi_connection.isolation_level = None
            cur = dbapi_connection.cursor()
            cur.execute(f"PRAGMA busy_timeout = {LOCK_TIMEOUT_MS}")
            if not memory:
                cur.execute("PRAGMA journal_mode = WAL")  # readers never block the writer, nor it them
            cur.execute("PRAGMA synchronous = FULL")  # pay data: every commit reaches the disk
            cur.execute("PRAGMA foreign_keys = ON")
            cur.execute("PRAGMA cache_size = -65536")  # up to 64 MiB of pages: big appends touch many index pages
            cur.execute(f"PRAGMA wal_autocheckpoint = {autocheckpoint}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("sqlite_begin") == "immediate"
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    if backend == "postgresql":
        return create_engine(u, hide_parameters=True)  # pay data stays out of error messages and logs
    raise EngineError(f"the ledger runs on SQLite or PostgreSQL, not {backend!r} ({u.render_as_string()})")


def _sqlite_file(url: str | URL) -> str | None:
    """The file of an SQLite file ledger named by a plain URL (no query options); else None."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:") or u.query:
        return None
    return str(u.database)


# --- the WAL checkpoint, beside the work ---------------------------------------------------------------
#
# SQLite's automatic checkpoint runs inside the COMMIT that takes the write-ahead log past its threshold:
# the committing writer copies the log into the database file and syncs it before COMMIT returns. The
# transaction is durable before that (the log is synced first); the copy is upkeep. Here a thread does it
# after every writer's commit, beside whatever the process does next (the close after an ingest, the next
# file's parsing), on its own connection, as SQLite's documentation suggests for applications that want
# commits short. A process waits for its checkpoints before it exits (``atexit``), and ``Ledger.dispose``
# waits for them, so every command still leaves the log copied into the file.

BACKSTOP_CHECKPOINT_PAGES = 262_144  # SQLite's own checkpoint only past 1 GiB of log (4 KiB pages)


class _Checkpointer:
    """One per database file and process: ``request`` after a commit starts a thread that runs
    ``PRAGMA wal_checkpoint(PASSIVE)`` (it blocks neither readers nor writers and waits for neither),
    and runs it once more if another commit asked meanwhile."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()
        self.runs = 0
        self.error: str | None = None  # the last failure (the log stays whole: nothing is lost)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._again = False

    def request(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._again = True
                return
            self._thread = threading.Thread(target=self._run, name="ledger-wal-checkpoint", daemon=True)
            self._thread.start()

    def wait(self) -> None:
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            self._checkpoint()
            with self._lock:
                if not self._again:
                    self._thread = None
                    return
                self._again = False

    def _checkpoint(self) -> None:
        try:
            con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                con.execute("PRAGMA synchronous = FULL")  # the file is synced, as the writer's checkpoint did
                con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.runs += 1
            finally:
                con.close()
        except sqlite3.Error as exc:
            self.error = str(exc)


_CHECKPOINTERS: dict[str, _Checkpointer] = {}
_CHECKPOINTERS_LOCK = threading.Lock()


def _checkpointer(path: str) -> _Checkpointer:
    key = os.path.abspath(path)
    with _CHECKPOINTERS_LOCK:
        found = _CHECKPOINTERS.get(key)
        if found is None or found.pid != os.getpid():  # a forked child has not its parent's thread
            found = _CHECKPOINTERS[key] = _Checkpointer(path)
        return found


@atexit.register
def _finish_checkpoints() -> None:
    for checkpointer in list(_CHECKPOINTERS.values()):
        if checkpointer.pid == os.getpid():
            checkpointer.wait()


def _placeholders(engine: Engine | Connection, n: int) -> str:
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    return ", ".join([mark] * n)


# --- the record text, fast ---------------------------------------------------------------------

_encode_str = json.encoder.encode_basestring  # what json.dumps(..., ensure_ascii=False) uses for a str


def _record_text_fast(
    position: int,
    stream_id: str,
    stream_version: int,
    type_: str,
    effective: str,
    event_id: str | None,
    recorded_at: str,
    payload_json: str,
) -> str:
    """``core.canonical.record_text``, byte for byte, without building two dicts and two JSON encoders
    per row (7x faster). Used only if it agrees with ``record_text`` on the samples below."""
    return (
        '{"effective":' + _encode_str(effective)
        + ',"event_id":' + ("null" if event_id is None else _encode_str(event_id))
        + ',"payload":' + payload_json
        + ',"position":' + str(position)
        + ',"recorded_at":' + _encode_str(recorded_at)
        + ',"stream_id":' + _encode_str(stream_id)
        + ',"stream_version":' + str(stream_version)
        + ',"type":' + _encode_str(type_)
        + "}"
    )  # fmt: skip


_RECORD_SAMPLES: tuple[tuple[Any, ...], ...] = (
    (1, "rep:R1", 1, "rep.hired", "2026-01-01", None, "2026-01-01T00:00:00.000000Z", "{}"),
    (
        9_876_543_210, 'contract:C"1\\', 42, "contract.signed", "2026-12-31",
        'ev \u00e9\u4e2d\U0001f600 "q"\t\x01\u2028', "2026-12-31T23:59:59.999999Z", '{"acv":"1.00","note":"\u00e9"}',
    ),
)  # fmt: skip


def _pick_record_text() -> Callable[..., str]:
    """The fast encoder if it reproduces ``record_text`` exactly, else ``record_text`` itself: the
    chain's encoding is defined in one place (``core.canonical``) and never silently forked."""
    if all(_record_text_fast(*s) == record_text(*s) for s in _RECORD_SAMPLES):
        return _record_text_fast
    return record_text  # pragma: no cover - only if core.canonical changes its encoding


RECORD_TEXT = _pick_record_text()


def chain_hashes(prev: str, rows: Sequence[tuple[Any, ...]]) -> list[str]:
    """The chain hash of each row after ``prev``: ``chain_hash(prev, record_text(*row[:8]))``, each from the
    one before. Rows start with the eight record fields in ``record_text``'s order (more items are ignored).
    In C where the chain checker is built (``_chain_sqlite.chain``: the record text the checker rebuilds
    from stored rows, without a Python string per row); the same hashes in Python otherwise (a test compares)."""
    if _chain_sqlite is not None and os.environ.get("INCENTIVE_NATIVE") != "0":
        hashes: list[str] = _chain_sqlite.chain(prev, rows)
        return hashes
    out = []
    for row in rows:
        prev = chain_hash(prev, RECORD_TEXT(*row[:8]))
        out.append(prev)
    return out


def content_hashes(types: Sequence[str], effectives: Sequence[str], payloads: Sequence[str]) -> list[str]:
    """``core.canonical.content_hash`` of each (type, effective date, canonical payload), for a batch: in C
    where the chain checker is built (``_chain_sqlite.content_hashes``: 0.60 instead of 1.18 us a hash
    of a service cost), the same hashes in Python otherwise (a test compares)."""
    native = getattr(_chain_sqlite, "content_hashes", None)  # None: not built, or built before it had this
    if native is not None and os.environ.get("INCENTIVE_NATIVE") != "0":
        hashes: list[str] = native(types, effectives, payloads)
        return hashes
    return [content_hash(t, e, p) for t, e, p in zip(types, effectives, payloads, strict=True)]


_batch_content_hashes = content_hashes  # for ``Writer.prepare``, whose keyword argument has the same name


# --- reading rows back into events --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of ``Ledger.verify``: ``events`` rows verified good (all of them when ``ok``)."""

    ok: bool
    events: int
    first_bad_position: int | None
    message: str


def _converter(annotation: Any) -> tuple[bool, Callable[[Any], Any] | None]:
    """How the fast path turns a JSON value back into a field value: (supported, converter or None)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            return False, None
        annotation = args[0]
        while typing.get_origin(annotation) is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if annotation is Decimal:
        return True, Decimal
    if annotation is date:
        return True, _day
    if annotation in (str, int) or origin is typing.Literal:
        return True, None
    if origin is tuple:
        return True, tuple
    if origin is dict:
        return True, None
    return False, None


_DAYS: dict[str, date] = {}  # ISO text -> date, for _day


def _day(text: str) -> date:
    """``date.fromisoformat``, memoised: a ledger has a few thousand distinct dates over millions of
    facts, so a replay parses each once (and its state shares one object per date)."""
    day = _DAYS.get(text)
    if day is None:
        day = _DAYS[text] = date.fromisoformat(text)
    return day


@dataclass(frozen=True, slots=True)
class _FastPlan:
    """How the fast path rebuilds one event type: its class, and ``values``, which turns a decoded payload
    into the event's typed field values (one call per row: this runs for every event of a replay)."""

    cls: type[Event]
    values: Callable[[str, str | None, Any], dict[str, Any] | None]


def _values_builder(
    type_: str, template: dict[str, Any], allowed: frozenset[str], required: frozenset[str], converters: tuple[Any, ...]
) -> Callable[[str, str | None, Any], dict[str, Any] | None]:
    def values(effective: str, event_id: str | None, data: Any) -> dict[str, Any] | None:
        """An event's typed field values from its decoded payload, in model order (``dict.update`` keeps
        the template's order), defaults for absent fields; None unless the payload is an object with
        every required key and no unknown one (then validation must say what is wrong)."""
        if type(data) is not dict:
            return None
        keys = data.keys()
        if not (keys <= allowed and required <= keys):
            return None
        out = {"type": type_, "effective": _day(effective), "event_id": event_id, **template}
        out.update(data)
        for name, conv in converters:
            value = data.get(name)
            if value is not None:  # defaults stay as the model declares them
                out[name] = conv(value)
        return out

    return values


def _fast_plan(type_: str) -> _FastPlan | None:
    """Per event type: the plan above, built from the model's fields (in model order, with their defaults;
    which are required; the converters of those that need one: Decimals, dates, tuples); None when a field
    has a shape the fast path does not know (then that type always goes through ``from_stored``)."""
    cls = EVENT_CLASSES.get(type_)
    if cls is None:
        return None
    template: dict[str, Any] = {}
    required: set[str] = set()
    converters: list[tuple[str, Callable[[Any], Any]]] = []
    for name, info in cls.model_fields.items():
        if name in ("type", "effective", "event_id"):
            continue
        supported, conv = _converter(info.annotation)
        if not supported or info.default_factory is not None:
            return None
        if info.is_required():
            required.add(name)
            template[name] = None
        else:
            template[name] = info.default
        if conv is not None:
            converters.append((name, conv))
    return _FastPlan(cls, _values_builder(type_, template, frozenset(template), frozenset(required), tuple(converters)))


_PLANS: dict[str, _FastPlan | None] = {t: _fast_plan(t) for t in EVENT_CLASSES}


_set = object.__setattr__
# rows per multi-row INSERT on SQLite: 30,000 bound values, under SQLite's default limit of 32,766 (a
# lower limit compiled in lowers it: ``Writer.__init__``). Few statements matter where a thread inserts
# beside the ingest's Python (``AppendPipeline``): after each one it waits for the GIL, up to Python's
# switch interval (5 ms). Two M months' files: 500 rows a statement kept the ingest waiting 0.64-0.70 s
# at the end for the thread; 3,000, 0.001-0.08 s
_ROWS_PER_INSERT = 3000
# The C scanner behind json.loads, called directly: a stored payload is canonical JSON (no whitespace
# around it), so json.loads' own whitespace checks are skipped; anything else falls back to json.loads.
_scan_once = json.JSONDecoder().scan_once


def _loads(payload: str) -> Any:
    try:
        value, end = _scan_once(payload, 0)
    except StopIteration:
        return json.loads(payload)
    return value if end == len(payload) else json.loads(payload)


def _rebuild_trusted(type_: str, effective: str, event_id: str | None, payload: str) -> Event:
    """The fast path: build the frozen event without re-validating it (for rows the caller trusts, e.g.
    just verified). Produces an event equal to ``from_stored``'s; unknown shapes fall back to it."""
    plan = _PLANS.get(type_)
    data = _loads(payload)
    values = plan.values(effective, event_id, data) if plan is not None else None
    if plan is None or values is None:  # a missing or unknown key: let validation say so
        return from_stored(type_, effective, event_id, data)
    fields_set = set(data)
    fields_set.add("type")
    fields_set.add("effective")
    if event_id is not None:
        fields_set.add("event_id")
    obj = plan.cls.__new__(plan.cls)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", fields_set)
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


class _Values:
    """A bag of an event's typed field values, for ``Projector.apply_values``."""


# business facts only: the engine's own events need their ``Recorded`` (``Projector.apply``)
_FOLD_PLANS = {t: plan for t, plan in _PLANS.items() if t not in ENGINE_TYPES and plan is not None}


_SERVICE_COST_KEYS = frozenset(("contract_id", "amount"))


def fold_rows(rows: Iterable[Any], projector: Projector) -> None:
    """Fold stored rows (``_READ_COLUMNS``) into ``projector`` on the trusted fast path (``_fold``)."""
    engine_columns: dict[int, tuple[str, int, str]] = {}

    def lean() -> Iterator[tuple[Any, ...]]:
        for position, stream_id, stream_version, type_, effective, event_id, recorded_at, payload in rows:
            if type_ in ENGINE_TYPES:
                engine_columns[position] = (stream_id, stream_version, recorded_at)
            yield position, type_, effective, event_id, payload

    _fold(lean(), projector, engine_columns.__getitem__)


def _fold(rows: Iterable[Any], projector: Projector, engine_columns: Callable[[int], tuple[str, int, str]]) -> None:
    """Fold stored rows given as ``_FOLD_COLUMNS`` into ``projector`` on the trusted fast path, without
    building event objects for business facts: each row's fields, typed as ``_rebuild_trusted`` types
    them, go straight to the projection's handlers. The engine's own events (a few in a ledger) also need
    their stream, version and recording time: ``engine_columns`` gives them by position. Any row the fast
    path does not know (a missing or unknown key, an engine event) is rebuilt as an event and applied as
    usual. Same state as folding ``read(validate=False)`` (a test checks the digests)."""
    apply_values, apply, plans = projector.apply_values, projector.apply, _FOLD_PLANS
    service_cost, cost_keys = projector.service_cost, _SERVICE_COST_KEYS
    closed_cycle, engine_types = projector.closed_cycle, ENGINE_TYPES
    for position, type_, effective, event_id, payload in rows:
        if type_ == "service.cost":  # most of the rows: their two fields straight to the projection
            # canonical JSON of exactly these two keys, without an escape: the text between the quotes
            # is the value (anything else goes through the decoder below)
            if payload[:11] == '{"amount":"' and payload[-2:] == '"}':
                amount, sep, cid = payload[11:-2].partition('","contract_id":"')
                if sep and '"' not in cid and "\\" not in cid and '"' not in amount and "\\" not in amount:
                    service_cost(position, _day(effective), cid, Decimal(amount))
                    continue
            data = _loads(payload)
            if type(data) is dict and data.keys() == cost_keys:
                service_cost(position, _day(effective), data["contract_id"], Decimal(data["amount"]))
                continue
        elif type_ == "cycle.closed":
            stream_id, _, recorded_at = engine_columns(position)
            cycle = _closed_cycle(position, recorded_at, stream_id, payload)
            if cycle is not None:
                closed_cycle(cycle)
                continue
        plan = plans.get(type_)  # None for the engine's own events: rebuilt below
        values = plan.values(effective, event_id, _loads(payload)) if plan is not None else None
        if values is None:
            event = _rebuild_trusted(type_, effective, event_id, payload)
            stream_id, stream_version, recorded_at = (
                engine_columns(position) if type_ in engine_types else (None, None, None)
            )
            apply(Recorded(position, recorded_at, stream_id, stream_version, event))  # type: ignore[arg-type]
            continue
        bag = _Values()
        bag.__dict__ = values
        apply_values(position, type_, bag)


# below this many rows a fold reads every row in Python: the native reader's thread and its own pass over
# the table would cost more than they save
NATIVE_FOLD_ROWS = 100_000
_LIST_TYPES = tuple(CONTRACT_LISTS)


def _fold_lists_apart(conn: Connection, path: str, projector: Projector, after: int, upto: int | None) -> bool:
    """``_fold`` of the rows ``after < position <= upto``, the facts a contract keeps in lists apart (service
    costs, expansions, renewals: most of a ledger's rows). The native reader (``_contract_facts_sqlite``, on
    a connection of its own) reads them in a thread that does not hold the GIL while Python folds the other
    rows, then each contract's list of each type goes into the state in one step
    (``Projector.contract_lists``: no other step reads these lists, so taking them after the other facts
    leaves the state a fold in position order leaves; tests compare the digests). Where the reader
    declines (see the C file), Python folds those rows after the others. False, having folded nothing,
    when the range holds fewer than ``NATIVE_FOLD_ROWS`` rows."""
    head = head_position(conn)  # this read opens the snapshot both folds of this connection see
    last = head if upto is None else min(head, upto)
    if last - after < NATIVE_FOLD_ROWS:
        return False
    scanned: list[Any] = []
    reader = threading.Thread(
        target=lambda: scanned.append(_contract_facts_sqlite.scan(path, after, last)), name="ledger-lists", daemon=True
    )
    reader.start()
    engine_columns = partial(_engine_columns, conn)
    try:
        _fold(_stream(conn, _FOLD_COLUMNS, after, last, types=_LIST_TYPES, other_types=True), projector, engine_columns)
    finally:
        reader.join()
    scan = scanned[0] if scanned else None
    built = _contract_facts_sqlite.facts(scan, Fact, Renewal, Decimal) if scan is not None else None
    if built is None:
        others_last = projector.state.position
        _fold(_stream(conn, _FOLD_COLUMNS, after, last, types=_LIST_TYPES), projector, engine_columns)
        # the state's position is the range's last row's, whichever fold read it
        projector.state.position = max(others_last, projector.state.position)
    else:
        projector.contract_lists(*built)
    return True


def _fold_range(conn: Connection, projector: Projector, after: int, upto: int | None) -> None:
    """``Ledger.fold`` and ``Writer.fold``: on an SQLite file, a long range with its contracts' lists read
    apart (``_fold_lists_apart``); else every row in position order (``_fold``)."""
    path = _native_path(conn.engine.url, _contract_facts_sqlite)
    if path is None or not _fold_lists_apart(conn, path, projector, after, upto):
        _fold(_stream(conn, _FOLD_COLUMNS, after, upto), projector, partial(_engine_columns, conn))


def _closed_cycle(position: int, recorded_at: str, stream_id: str, payload: str) -> ClosedCycle | None:
    """A ``cycle.closed`` row's projection with its lines left as the JSON text they are in the payload
    (``ClosedCycle``: most of a cycle's payload, and of a replayed state), or None when the payload is not
    laid out as the engine writes it (canonical JSON, keys in the order as_of, ledger_position, lines,
    period, plans, totals); the caller then decodes it whole. The lines end at a ``],"period":`` (the
    last one in the text, or an earlier one if the totals hold that text too) from which the rest decodes
    as the period, the plans and the totals, ending exactly at the end of the text: only the top-level
    object's can."""
    if not payload.startswith('{"as_of":'):
        return None
    try:
        as_of, end = _scan_once(payload, 9)
        if not payload.startswith(',"ledger_position":', end):
            return None
        seen, end = _scan_once(payload, end + 19)
    except StopIteration:
        return None
    if not payload.startswith(',"lines":[', end) or type(as_of) is not str or type(seen) is not int:
        return None
    lines_at = end + 9
    at = len(payload)
    while (at := payload.rfind('],"period":', lines_at, at)) >= 0:
        tail = _cycle_tail(payload, at + 2)
        if tail is not None:
            period, plans, totals = tail
            if stream_id != f"cycle:{period}":
                return None
            lines = payload[lines_at : at + 1]
            return ClosedCycle(period, _day(as_of), seen, plans, lines, tuple(totals), position, recorded_at)
    return None


def _cycle_tail(payload: str, at: int) -> tuple[str, dict[str, str], list[Any]] | None:
    """``"period":...,"plans":...,"totals":...}`` from ``at`` to the end of ``payload``, decoded, or None."""
    try:
        if not payload.startswith('"period":', at):
            return None
        period, end = _scan_once(payload, at + 9)
        if not payload.startswith(',"plans":', end):
            return None
        plans, end = _scan_once(payload, end + 9)
        if not payload.startswith(',"totals":', end):
            return None
        totals, end = _scan_once(payload, end + 10)
    except StopIteration:
        return None
    if end != len(payload) - 1 or payload[end] != "}":
        return None
    if type(period) is not str or type(plans) is not dict or type(totals) is not list:
        return None
    return period, plans, totals


def _to_recorded(rows: Iterable[Any], validate: bool) -> Iterator[Recorded]:
    if validate:
        loads = json.loads
        for position, stream_id, stream_version, type_, effective, event_id, recorded_at, payload in rows:
            ev = from_stored(type_, effective, event_id, loads(payload))
            yield Recorded(position, recorded_at, stream_id, stream_version, ev)
    else:
        for position, stream_id, stream_version, type_, effective, event_id, recorded_at, payload in rows:
            ev = _rebuild_trusted(type_, effective, event_id, payload)
            yield Recorded(position, recorded_at, stream_id, stream_version, ev)


def _stream(
    conn: Connection,
    columns: str,
    after: int = 0,
    upto: int | None = None,
    recorded_upto: str | None = None,
    types: tuple[str, ...] = (),
    other_types: bool = False,
) -> Iterator[tuple[Any, ...]]:
    """Rows ``after < position <= upto`` (and ``recorded_at <= recorded_upto``; of the event ``types`` only,
    or of every type but them with ``other_types``) in position order, as plain tuples straight from the
    driver, in batches: a server-side cursor on PostgreSQL (constant memory), SQLite's lazy cursor. Inside
    the connection's transaction, so the rows are one consistent snapshot."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    clauses = [f"position > {mark}"]
    params: list[Any] = [after]
    if upto is not None:
        clauses.append(f"position <= {mark}")
        params.append(upto)
    if recorded_upto is not None:
        if len(recorded_upto) == 10:  # a bare date means up to the end of that day
            recorded_upto += "T23:59:59.999999Z"
        clauses.append(f"recorded_at <= {mark}")
        params.append(recorded_upto)
    if types:
        # SQLite's `+type`: the table in position order, not the (type, effective) index and a sort
        column = "+type" if conn.dialect.name == "sqlite" else "type"
        clauses.append(f"{column} {'NOT IN' if other_types else 'IN'} ({', '.join([mark] * len(types))})")
        params.extend(types)
    sql = f"SELECT {columns} FROM {TABLE} WHERE {' AND '.join(clauses)} ORDER BY position"
    if not conn.in_transaction():
        conn.begin()  # released (rolled back) when the caller's connection closes
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    server_side = conn.dialect.name == "postgresql"
    cur = dbapi.cursor(name=f"ledger_read_{uuid.uuid4().hex}") if server_side else dbapi.cursor()
    try:
        cur.execute(sql, params)
        while batch := cur.fetchmany(READ_BATCH):
            yield from batch
    finally:
        cur.close()


_READ_COLUMNS = "position, stream_id, stream_version, type, effective, event_id, recorded_at, payload"
# the columns of a fold (``_fold``): only the engine's own events need their stream, version and
# recording time, and they are looked up by position (each column a row returns is one more Python
# object to build, and a CASE per column cost as much again: on an M replay, 1.5 s to fetch these five
# columns against 1.95 s for the eight with three of them NULL)
_FOLD_COLUMNS = "position, type, effective, event_id, payload"
_ENGINE_COLUMNS = "stream_id, stream_version, recorded_at"
_ALL_COLUMNS = ", ".join(COLUMNS)


def _engine_columns(conn: Connection, position: int) -> tuple[str, int, str]:
    """(stream_id, stream_version, recorded_at) of the row at ``position`` (``_fold``'s engine rows)."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    ((stream_id, version, recorded_at),) = driver_rows(
        conn, f"SELECT {_ENGINE_COLUMNS} FROM {TABLE} WHERE position = {mark}", (position,)
    )
    return stream_id, version, recorded_at


def _read(
    conn: Connection, after: int, upto: int | None, recorded_upto: str | None, validate: bool
) -> Iterator[Recorded]:
    return _to_recorded(_stream(conn, _READ_COLUMNS, after, upto, recorded_upto), validate)


def rows_where(conn: Connection, clause: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The stored rows (``_READ_COLUMNS``) matching an SQL ``clause`` (``?`` placeholders), in no
    particular order: for the engine's derived reads, which fold them (``fold_rows``) or scan them."""
    sql = f"SELECT {_READ_COLUMNS} FROM {TABLE} WHERE {clause}"
    if conn.dialect.paramstyle != "qmark":
        sql = sql.replace("?", "%s")
    return driver_rows(conn, sql, params)


def stream_rows(
    conn: Connection, stream_ids: Iterable[str], also: str = "", params: Sequence[Any] = ()
) -> list[tuple[Any, ...]]:
    """The rows of the given streams (an indexed lookup per stream) that also match the SQL condition
    ``also`` (with ``params``), in no particular order."""
    out: list[tuple[Any, ...]] = []
    for chunk in _chunks(stream_ids):
        clause = f"stream_id IN ({', '.join('?' * len(chunk))})" + (f" AND ({also})" if also else "")
        out += rows_where(conn, clause, [*chunk, *params])
    return out


def fold_service_costs(conn: Connection, contract_ids: Iterable[str], since: str, projector: Projector) -> None:
    """Fold the service costs of the given contracts effective on or after ``since`` into ``projector``,
    in position order, from four columns: the amount is taken out of the payload by the database
    (``Projector.service_cost``), with no row decoded in Python. A close reads tens of thousands of them
    (every cost in the window of each tranche it evaluates); the fold of whole rows gives the same state (a
    test compares them). Each contract's costs are looked up in their own stream and, for ledgers written
    before it had one, in the contract's (``core.events.COST_STREAM``)."""
    if conn.dialect.name == "postgresql":
        amount, mark = "CAST(payload AS jsonb) ->> 'amount'", "%s"
    else:
        amount, mark = "json_extract(payload, '$.amount')", "?"
    streams = [s for cid in contract_ids for s in (COST_STREAM + cid, LEGACY_COST_STREAM + cid)]
    rows: list[tuple[Any, ...]] = []
    for chunk in _chunks(streams):
        # (type || '' and effective || '': expressions, so that the planner looks these streams up by
        # stream_id rather than scanning every service cost since the cutoff through the (type, effective)
        # index, or intersecting with the (effective, content_hash) index: PostgreSQL did that on the M
        # ledger, reading 934,000 index entries per 500 streams, 7.5 of a 13.7 s close)
        sql = (
            f"SELECT position, stream_id, effective, {amount} FROM {TABLE} "
            f"WHERE stream_id IN ({', '.join([mark] * len(chunk))}) AND type || '' = 'service.cost' "
            f"AND effective || '' >= {mark}"
        )
        rows += driver_rows(conn, sql, [*chunk, since])
    rows.sort()
    service_cost = projector.service_cost
    for position, stream_id, effective, value in rows:
        service_cost(position, _day(effective), stream_id[stream_id.index(":") + 1 :], Decimal(value))


def entities_state(
    conn: Connection, contract_ids: Iterable[str], rep_ids: Iterable[str], *, in_full: Iterable[str]
) -> LedgerState:
    """A state holding only the given contracts and reps (their hire and termination), folded in ledger
    order; its position is the ledger's head. What ``core.validation.check_batch`` reads of a file's
    entities, at a cost in proportion to them rather than to the ledger's length. Of the contracts in
    ``in_full`` (``core.validation.contracts_read_in_full``) every fact but the service costs is read from
    their streams; each other one is its signing and its churn, one row of ``contract_head`` (migration
    0007): the rest of its history (renewals, expansions, reassignments) changes no answer of the rules."""
    full = set(in_full)
    ids = set(contract_ids)
    rows = stream_rows(conn, [f"contract:{cid}" for cid in ids & full], "type <> 'service.cost'")
    # (not the reps' whole streams, which hold their KPIs, targets and scorecards: the hires one probe
    # each, the terminations, a few, by type)
    reps = {f"rep:{rid}" for rid in rep_ids}
    if reps:
        rows += hires(conn, reps)
        rows += [r for r in rows_where(conn, "type = 'rep.terminated'", ()) if r[1] in reps]
    projector = Projector()
    contracts = projector.state.contracts
    for head in contract_heads(conn, ids - full):
        contracts[head.contract_id] = head
    fold_sorted(rows, projector)
    projector.state.position = head_position(conn)
    return projector.state


def contract_heads(conn: Connection, contract_ids: Iterable[str]) -> Iterator[Contract]:
    """The given contracts (those signed) as their signing and churn make them, from ``contract_head``:
    the same objects the fold of those two events builds, with no other fact in their lists."""
    mark = "%s" if conn.dialect.paramstyle != "qmark" else "?"
    for chunk in _chunks(contract_ids):
        sql = (
            f"SELECT contract_id, account_id, rep_id, currency, signed, acv, term_months, gross_margin, "
            f"signed_position, churned, churn_position, churn_reason FROM {CONTRACT_HEAD_TABLE} "
            f"WHERE contract_id IN ({', '.join([mark] * len(chunk))})"
        )
        for cid, account, rep, currency, signed, acv, term, margin, position, churned, churn_at, reason in driver_rows(
            conn, sql, chunk
        ):
            yield Contract(
                cid, account, rep, currency, _day(signed), Decimal(acv), term,
                None if margin is None else Decimal(margin), position,
                churn=None if churned is None else Fact(_day(churned), churn_at, reason),
            )  # fmt: skip


def _head_row(c: Contract) -> dict[str, Any]:
    churn = c.churn
    return {
        "contract_id": c.contract_id, "signed_position": c.signed_position, "signed": c.signed.isoformat(),
        "account_id": c.account_id, "rep_id": c.seller, "currency": c.currency, "acv": str(c.acv0),
        "term_months": c.term_months, "gross_margin": None if c.gross_margin is None else str(c.gross_margin),
        "churn_position": None if churn is None else churn.position,
        "churned": None if churn is None else churn.effective.isoformat(),
        "churn_reason": None if churn is None else churn.value,
    }  # fmt: skip


def rebuild_contract_heads(conn: Connection) -> int:
    """Refill ``contract_head`` from the events: the projection's fold of every signing and churn. Its
    triggers keep it as rows go in, and a copy of the whole database (a backup) carries it; this is for a
    ``ledger_event`` put back without it (a restore of that table alone). Returns the number of rows."""
    rows = rows_where(conn, "type IN ('contract.signed', 'contract.churned')", ())
    projector = Projector()
    fold_sorted(rows, projector)
    heads = [_head_row(c) for c in projector.state.contracts.values()]
    conn.execute(text(f"DELETE FROM {CONTRACT_HEAD_TABLE}"))
    if heads:
        names = list(heads[0])
        values = ", ".join(f":{n}" for n in names)
        conn.execute(text(f"INSERT INTO {CONTRACT_HEAD_TABLE} ({', '.join(names)}) VALUES ({values})"), heads)
    return len(heads)


def hires(conn: Connection, streams: set[str]) -> list[tuple[Any, ...]]:
    """The ``rep.hired`` rows of the reps with these streams (``rep:ID``; none for a rep the ledger does not
    know). A rep's hire is the first event of its stream (the reference rules refuse any fact of a rep not
    hired, and a second hire), so each is one probe of the stream index (a stream's versions run from 1,
    so a stream without a version 1 is empty); a ledger where a stream begins otherwise gets every hire,
    read by type."""
    rows = stream_rows(conn, streams, "stream_version = 1")
    if any(r[3] != "rep.hired" for r in rows):
        rows = [r for r in rows_where(conn, "type = 'rep.hired'", ()) if r[1] in streams]
    return rows


def _position(row: tuple[Any, ...]) -> int:
    return int(row[0])


def fold_sorted(rows: list[tuple[Any, ...]], projector: Projector) -> None:
    """``fold_rows`` over rows gathered by several reads: put in ledger order first."""
    rows.sort(key=_position)
    fold_rows(rows, projector)


def fact_views(rows: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
    """Each row's event as a view for code that reads a few of its fields (``core.evaluation.fact_scopes``):
    an object with the event's typed field values (as ``fold_rows`` gives them to the projection), no
    validation. Rows the fast path does not know are rebuilt as events."""
    for _, _, _, type_, effective, event_id, _, payload in rows:
        plan = _PLANS.get(type_)
        values = plan.values(effective, event_id, _loads(payload)) if plan is not None else None
        if values is None:
            yield _rebuild_trusted(type_, effective, event_id, payload)
            continue
        view = _Values()
        view.__dict__ = values
        yield view


def driver_rows(conn: Connection, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Plain tuples straight from the driver (no SQLAlchemy Row objects: these reads can be large)."""
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cur = dbapi.cursor()
    try:
        cur.execute(sql, tuple(params))
        return list(cur.fetchall())
    finally:
        cur.close()


def head_position(conn: Connection) -> int:
    """The ledger's last position as ``conn`` sees it (0 when empty)."""
    return _head(conn)[0]


def _head(conn: Connection) -> tuple[int, str, str | None]:
    row = conn.execute(text(f"SELECT position, hash, recorded_at FROM {TABLE} ORDER BY position DESC LIMIT 1")).first()
    if row is None:
        return 0, GENESIS_HASH, None
    return int(row[0]), str(row[1]), str(row[2])


_T = TypeVar("_T", str, tuple[str, str])


def _chunks(values: Iterable[_T]) -> Iterator[list[_T]]:
    unique = sorted(set(values))
    for i in range(0, len(unique), IN_CHUNK):
        yield unique[i : i + IN_CHUNK]


def _event_id_hashes(conn: Connection, event_ids: Iterable[str]) -> dict[str, str]:
    stmt = text(f"SELECT event_id, content_hash FROM {TABLE} WHERE event_id IN :ids").bindparams(
        bindparam("ids", expanding=True)
    )
    out: dict[str, str] = {}
    for chunk in _chunks(event_ids):
        out.update((str(eid), str(h)) for eid, h in conn.execute(stmt, {"ids": chunk}))
    return out


def _event_id_hashes_noting_absent(conn: Connection, event_ids: Iterable[str], absent: set[str]) -> dict[str, str]:
    """``_event_id_hashes``, adding the ids not found to ``absent`` (looked up under the writer's lock,
    they stay absent until the writer appends them: its key check need not look them up again)."""
    ids = list(event_ids)
    found = _event_id_hashes(conn, ids)
    absent.update(i for i in ids if i not in found)
    return found


def _refuse_taken_ids(conn: Connection, ids: list[str], absent: set[str], sent: Iterable[str] = ()) -> None:
    """Refuse an append whose event ids the ledger holds (those not known ``absent`` are looked up) or
    that gives one twice (within ``ids``, or already in ``sent``, earlier batches of the same append)."""
    twice = sorted({i for i, n in Counter(ids).items() if n > 1} | set(sent).intersection(ids))
    taken = sorted(_event_id_hashes_noting_absent(conn, [i for i in ids if i not in absent], absent)) + twice
    if taken:
        raise ConcurrencyConflict(
            f"append refused by the ledger (an event_id already recorded or given twice: {', '.join(taken[:5])}"
            f"{' ...' if len(taken) > 5 else ''}); nothing was written"
        )


def _content_hash_counts(conn: Connection, contents: Iterable[tuple[str, str]]) -> dict[str, int]:
    # a content hash covers the effective date: both columns narrow the (effective, content_hash) index,
    # and a date the ledger has no event on has none of these contents (a month's new costs: every one)
    contents = list(contents)
    present = _dates_present(conn, {e for e, _ in contents})
    contents = [(e, h) for e, h in contents if e in present]
    stmt = text(
        f"SELECT content_hash, COUNT(*) FROM {TABLE} WHERE effective IN :es AND content_hash IN :hs "
        "GROUP BY content_hash"
    ).bindparams(bindparam("es", expanding=True), bindparam("hs", expanding=True))
    out: dict[str, int] = {}
    for chunk in _chunks(contents):
        es, hs = sorted({e for e, _ in chunk}), [h for _, h in chunk]
        out.update((str(h), int(n)) for h, n in conn.execute(stmt, {"es": es, "hs": hs}))
    return out


def _dates_present(conn: Connection, dates: set[str]) -> set[str]:
    """Which of these effective dates the ledger has an event on (one probe of the index each)."""
    if not dates:
        return set()
    if conn.dialect.name == "postgresql":
        sql = f"SELECT d FROM unnest(%s::text[]) AS d WHERE EXISTS (SELECT 1 FROM {TABLE} WHERE effective = d)"
        return {d for (d,) in driver_rows(conn, sql, (sorted(dates),))}
    out: set[str] = set()
    for chunk in _chunks(dates):
        values = ", ".join(["(?)"] * len(chunk))
        sql = (
            f"WITH ds(d) AS (VALUES {values}) SELECT d FROM ds WHERE EXISTS (SELECT 1 FROM {TABLE} WHERE effective = d)"
        )
        out.update(d for (d,) in driver_rows(conn, sql, chunk))
    return out


def _stream_versions(conn: Connection, stream_ids: Iterable[str]) -> dict[str, int]:
    # plain driver rows: an ingest asks for tens of thousands of streams. One MAX per stream as a
    # correlated subquery, which both databases answer with one descent of the (stream_id, stream_version)
    # index; "stream_id IN (...) GROUP BY" read every version of each stream instead (SQLite, M ledger:
    # 3.1-4.3 against 7.3 us per stream)
    if conn.dialect.name == "postgresql":  # one statement with an array, not one per 500 ids
        sql = f"SELECT s, (SELECT MAX(stream_version) FROM {TABLE} WHERE stream_id = s) FROM unnest(%s::text[]) AS s"
        return {s: v or 0 for s, v in driver_rows(conn, sql, (sorted(set(stream_ids)),))}
    out: dict[str, int] = {}
    for chunk in _chunks(stream_ids):  # sorted: consecutive descents share the index pages they pass
        ids = ", ".join(["(?)"] * len(chunk))
        sql = (
            f"WITH ids(s) AS (VALUES {ids}) "
            f"SELECT s, (SELECT MAX(stream_version) FROM {TABLE} WHERE stream_id = s) FROM ids"
        )
        out.update((s, v or 0) for s, v in driver_rows(conn, sql, chunk))
    return out


def refresh_statistics(conn: Connection, table: str, written: int, total: int) -> None:
    """PostgreSQL: ``ANALYZE`` a table after a write of at least a tenth of its rows (and 1,000 rows), so
    that the planner knows its size and columns. Without statistics (a new ledger, or a server run with
    autovacuum off, as this project's CI machine is) it estimated a 2M-event ledger's stream lookups as
    scans of the whole table: an incremental close took 30 s instead of 6. ANALYZE samples a fixed number
    of rows (about 0.3 s) and runs in the writer's transaction; SQLite plans well without statistics."""
    if conn.dialect.name == "postgresql" and written >= 1000 and written * 10 >= total:
        conn.exec_driver_sql(f"ANALYZE {table}")


def _schema_revisions(conn: Connection) -> list[str]:
    """The revisions Alembic recorded in the database (its ``alembic_version`` table), read directly."""
    return [str(r) for (r,) in conn.exec_driver_sql("SELECT version_num FROM alembic_version")]


# --- the store ----------------------------------------------------------------------------------


class Ledger:
    """The event log at one database URL (``sqlite:///path.db`` or ``postgresql+psycopg://...``).

    The engine is created lazily (and again in a forked child process). Every operation but ``init``
    first checks, once, that the schema is at the head migration, else raises ``LedgerNotInitialised``.
    """

    def __init__(self, url: str, *, clock: Callable[[], str] = utc_now) -> None:
        self.url = url
        self._clock = clock
        self._engine: Engine | None = None
        self._pid: int | None = None
        self._schema_ok = False
        self._local = threading.local()
        # every stream's version at a head (position, hash) this process committed or read under the
        # writer's lock: the next writer takes it (``_lend_versions``) instead of looking versions up
        self._known_versions: tuple[int, str, dict[str, int]] | None = None

    def __repr__(self) -> str:
        return f"Ledger({make_url(self.url).render_as_string(hide_password=True)!r})"

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    @property
    def engine(self) -> Engine:
        pid = os.getpid()
        if self._engine is None or self._pid != pid:
            if self._engine is not None:  # inherited through fork: leave the parent's connections alone
                self._engine.dispose(close=False)
            self._engine = _make_engine(self.url)
            self._pid = pid
        return self._engine

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return str(self.engine.dialect.name)

    @property
    def reads_beside_writer(self) -> bool:
        """Whether a snapshot taken while this process holds the writer gets a connection of its own (not
        an in-memory SQLite ledger's one shared connection, nor a URL with options this module does not
        read), so that it can read while the writer's connection works in another thread."""
        return self.dialect == "postgresql" or _sqlite_file(self.url) is not None

    def dispose(self) -> None:
        path = _sqlite_file(self.url)
        if path is not None:
            _checkpointer(path).wait()
        if self._engine is not None:
            self._engine.dispose(close=self._pid == os.getpid())
        self._engine = None
        self._pid = None
        self._known_versions = None

    # --- schema ---

    def init(self) -> None:
        """Create or upgrade the schema to the head migration; safe to repeat (and to race: it runs
        under the writer lock)."""
        self._known_versions = None  # a migration may rewrite the table
        with self._locked() as conn:
            from alembic import command

            command.upgrade(alembic_config(connection=conn), "head")
        self._schema_ok = False
        self.check_schema()

    def check_schema(self) -> None:
        """Raise ``LedgerNotInitialised`` unless the database is at the head migration."""
        try:
            with self.engine.connect() as conn:
                try:
                    if _schema_revisions(conn) == [SCHEMA_REVISION]:
                        self._schema_ok = True
                        return
                except DBAPIError:
                    pass  # no revision table (an empty database): said below
        except DBAPIError as exc:
            raise EngineError(f"cannot open the ledger at {self!r}: {exc.orig}") from exc
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError

        try:
            with self.engine.connect() as conn:
                current = MigrationContext.configure(conn).get_current_heads()
        except DBAPIError as exc:
            raise EngineError(f"cannot open the ledger at {self!r}: {exc.orig}") from exc
        expected = head_revision()
        if tuple(current) != (expected,):
            found = ", ".join(current) if current else "no ledger schema"
            scripts = ScriptDirectory.from_config(alembic_config())
            for rev in current:
                try:
                    scripts.get_revision(rev)
                except CommandError:
                    raise LedgerNotInitialised(
                        f"the ledger database {self!r} has schema revision {rev}, unknown to this program "
                        f"(which knows up to {expected}): it was written by a newer incentive-engine"
                    ) from None
            raise LedgerNotInitialised(
                f"the ledger database {self!r} has {found}, this program needs schema revision {expected}: "
                "run `incentive init`"
            )
        self._schema_ok = True

    def _ready(self) -> Engine:
        if not self._schema_ok:
            self.check_schema()
        return self.engine

    # --- reading ---

    def head(self) -> tuple[int, str]:
        """(last position, its hash), or (0, GENESIS_HASH) for an empty ledger."""
        with self._ready().connect() as conn:
            position, hash_, _ = _head(conn)
        return position, hash_

    def read(
        self,
        after: int = 0,
        upto: int | None = None,
        recorded_upto: str | None = None,
        *,
        validate: bool = True,
    ) -> Iterator[Recorded]:
        """Events with ``after < position <= upto`` and ``recorded_at <= recorded_upto`` (a timestamp;
        a bare ``YYYY-MM-DD`` means the end of that day), in position order, streamed from one snapshot.

        ``validate=False`` is the fast path: events are rebuilt without pydantic validation (about twice
        as fast), for callers that trust the rows, e.g. right after ``verify()``.
        """
        engine = self._ready()  # checked now, not at the first next()
        return self._read(engine, after, upto, recorded_upto, validate)

    def read_at(self, positions: Iterable[int]) -> list[Recorded]:
        """The events at ``positions`` (validated, as ``read``), in position order, from one snapshot; a
        position with no row is left out. Indexed lookups: for a few events of a long ledger, not a read
        of every row between them."""
        wanted = sorted(set(positions))
        rows: list[tuple[Any, ...]] = []
        with self.snapshot() as conn:
            for i in range(0, len(wanted), IN_CHUNK):
                chunk = wanted[i : i + IN_CHUNK]
                rows += rows_where(conn, f"position IN ({', '.join('?' * len(chunk))})", chunk)
        return list(_to_recorded(sorted(rows, key=_position), validate=True))

    @staticmethod
    def _read(
        engine: Engine, after: int, upto: int | None, recorded_upto: str | None, validate: bool
    ) -> Iterator[Recorded]:
        with engine.connect() as conn:
            yield from _read(conn, after, upto, recorded_upto, validate)

    def fold(self, projector: Projector, after: int = 0, upto: int | None = None) -> None:
        """Fold every event with ``after < position <= upto`` into ``projector`` (``_fold``: trusted,
        fast; on an SQLite file, a long range with its contracts' lists read apart: ``_fold_lists_apart``)."""
        with self._ready().connect() as conn:
            _fold_range(conn, projector, after, upto)

    def read_rows(self, after: int = 0, upto: int | None = None) -> Iterator[tuple[Any, ...]]:
        """Raw rows in position order, columns as ``tables.COLUMNS``: (position, stream_id,
        stream_version, type, effective, event_id, recorded_at, payload, content_hash, hash)."""
        engine = self._ready()
        return self._read_rows(engine, after, upto)

    @staticmethod
    def _read_rows(engine: Engine, after: int, upto: int | None) -> Iterator[tuple[Any, ...]]:
        with engine.connect() as conn:
            yield from _stream(conn, _ALL_COLUMNS, after, upto)

    def event_id_hashes(self, event_ids: Iterable[str]) -> dict[str, str]:
        """``event_id -> content_hash`` for those of ``event_ids`` already in the ledger."""
        with self._ready().connect() as conn:
            return _event_id_hashes(conn, event_ids)

    def content_hash_counts(self, contents: Iterable[tuple[str, str]]) -> dict[str, int]:
        """How many stored events have each content hash, given as (effective date, content hash) pairs
        (absent: none)."""
        with self._ready().connect() as conn:
            return _content_hash_counts(conn, contents)

    def stream_versions(self, stream_ids: Iterable[str]) -> dict[str, int]:
        """Current version of each stream (0 for a stream with no events yet)."""
        with self._ready().connect() as conn:
            return _stream_versions(conn, stream_ids)

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read-only transaction that sees one state of the ledger throughout, without the writer's lock
        (writers go on meanwhile): on SQLite a deferred transaction (in WAL mode it reads the snapshot of
        its first read), on PostgreSQL a REPEATABLE READ one."""
        engine = self._ready()
        with engine.connect() as conn:
            if conn.dialect.name != "sqlite":
                conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                yield conn

    # --- writing ---

    @contextmanager
    def _locked(self) -> Iterator[Connection]:
        """A transaction holding the ledger's single-writer lock; commit on exit, rollback on error."""
        if getattr(self._local, "writing", False):
            raise EngineError("a ledger writer is already open in this thread (writers do not nest)")
        engine = self.engine
        sqlite = engine.dialect.name == "sqlite"
        self._local.writing = True
        try:
            with engine.connect() as conn:
                if sqlite:
                    conn.execution_options(sqlite_begin="immediate")  # takes the write lock, or waits
                with conn.begin():
                    if not sqlite:
                        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
                        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_WRITER_LOCK})
                        conn.exec_driver_sql("SET LOCAL lock_timeout = DEFAULT")
                    yield conn
            if sqlite and (path := _sqlite_file(self.url)) is not None:
                _checkpointer(path).request()  # committed: the log is copied into the file beside the next work
        except DBAPIError as exc:
            timed_out = "locked" in str(exc.orig).lower() if sqlite else getattr(exc.orig, "sqlstate", None) == "55P03"
            if timed_out:
                raise ConcurrencyConflict(
                    f"the ledger is locked by another writer (waited {LOCK_TIMEOUT_MS // 1000} s); nothing was written"
                ) from exc
            raise
        finally:
            self._local.writing = False

    @contextmanager
    def writer(self) -> Iterator[Writer]:
        """The one exclusive writer (across processes). Commits on normal exit, rolls back on exception."""
        self._ready()
        with self._locked() as conn:
            w = Writer(conn, self._clock)
            _lend_versions(w, self._take_known_versions())
            try:
                yield w
                if w.failed is not None:  # the caller caught it, but the transaction must not commit
                    raise w.failed
                if w._beside is not None:  # an in-memory ledger's connection stays in its thread
                    _commit_beside(conn, *w._beside, threaded=self.reads_beside_writer)
            finally:
                w._conn = None
        if w._head is not None:  # committed: the versions it knew (looked up, lent, appended) stand at its head
            self._known_versions = (w._head[0], w._head[1], w._versions)

    def _take_known_versions(self) -> tuple[int, str, dict[str, int]] | None:
        """The known versions, taken (a writer that fails must not leave its uncommitted ones behind)."""
        known, self._known_versions = self._known_versions, None
        return known

    # --- audit ---

    def _trigger_problems(self, conn: Connection) -> list[str]:
        if conn.dialect.name == "sqlite":
            rows = conn.execute(
                text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"), {"t": TABLE}
            ).all()
            present = {name for name, sql in rows if sql and "RAISE(ABORT" in sql.upper().replace(" ", "")}
            expected: tuple[str, ...] = (*TRIGGERS, *SQLITE_REPLACE_TRIGGERS)
        else:
            rows = conn.execute(
                text(
                    "SELECT t.tgname, p.proname, p.prosrc FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
                    "WHERE t.tgrelid = CAST(:t AS regclass) AND NOT t.tgisinternal AND t.tgenabled <> 'D'"
                ),
                {"t": TABLE},
            ).all()
            present = {
                name for name, proc, src in rows if proc == PG_TRIGGER_FUNCTION and "RAISE EXCEPTION" in src.upper()
            }
            expected = (*TRIGGERS, PG_TRUNCATE_TRIGGER)
        return [f"append-only trigger {name} is missing or disabled" for name in expected if name not in present]

    def verify(self) -> VerifyReport:
        """Recompute the hash chain from position 1 and check the schema (head revision, append-only
        triggers). Reports the first position whose row was altered, removed or reordered.

        A first pass runs where the data is: on an SQLite file, the native checker (``_chain_sqlite``);
        on PostgreSQL, the same rules as set-based SQL on the server (``_server_verify``). Only if it
        finds something wrong (or cannot run) do the rows go through the Python verifier, which writes
        the report: the same rules, one source for the messages."""
        self.check_schema()
        with self.engine.connect() as conn:
            schema_problems = self._trigger_problems(conn)
            native = _native_verify(self.url) if conn.dialect.name == "sqlite" else _server_verify(conn)
            if native is not None and native[0]:
                bad, count = None, native[1]
            else:
                bad, count = _verify_rows(_stream(conn, _ALL_COLUMNS))
        messages = [f"position {bad[0]}: {bad[1]}"] if bad else []
        messages += schema_problems
        if not messages:
            return VerifyReport(True, count, None, f"ledger verified: {count} events, chain and schema intact")
        return VerifyReport(False, count, bad[0] if bad else None, "; ".join(messages))


def _verify_rows(rows: Iterable[tuple[Any, ...]]) -> tuple[tuple[int, str] | None, int]:
    """The chain check over stored rows (``tables.COLUMNS``) in position order: (the first bad position
    and why, or None; how many rows were good before it)."""
    count = 0
    expected_position = 1
    prev = GENESIS_HASH
    versions: dict[str, int] = {}
    for row in rows:
        position, stream_id, stream_version, type_, effective, event_id, recorded_at, payload, ch, h = row
        if position != expected_position:
            return (expected_position, "missing (row removed)"), count
        try:
            record = RECORD_TEXT(position, stream_id, stream_version, type_, effective, event_id, recorded_at, payload)
            if h != chain_hash(prev, record):
                return (position, "hash mismatch (row altered, removed or reordered)"), count
            if ch != content_hash(type_, effective, payload):
                return (position, "content hash does not match the event (column altered)"), count
        except (TypeError, ValueError, AttributeError):  # a column of the wrong type (SQLite allows it)
            return (position, "a column holds a value of the wrong type (row altered)"), count
        if stream_version != versions.get(stream_id, 0) + 1:
            return (position, f"stream {stream_id} version {stream_version} out of sequence"), count
        versions[stream_id] = stream_version
        prev = h
        expected_position += 1
        count += 1
    return None, count


# The chain check as SQL, for PostgreSQL: each row's hash depends only on the stored hash before it, so the
# server checks every row at once. The record text is built as ``core.canonical.record_text`` builds it;
# PostgreSQL's to_json(text) escapes a string exactly as Python's json.dumps(ensure_ascii=False) does
# (\" \\ \b \f \n \r \t by name, other characters below U+0020 as \u00xx, the rest as they are).
_PG_CHAIN_CHECK = f"""
SELECT count(*), count(*) FILTER (WHERE good IS NOT TRUE) FROM (
  SELECT position = row_number() OVER w
     AND hash = encode(sha256(convert_to(
           lag(hash, 1, '{GENESIS_HASH}') OVER w || E'\\n'
           || '{{"effective":' || to_json(effective)::text
           || ',"event_id":' || coalesce(to_json(event_id)::text, 'null')
           || ',"payload":' || payload
           || ',"position":' || position::text
           || ',"recorded_at":' || to_json(recorded_at)::text
           || ',"stream_id":' || to_json(stream_id)::text
           || ',"stream_version":' || stream_version::text
           || ',"type":' || to_json(type)::text || '}}', 'UTF8')), 'hex')
     AND content_hash = encode(sha256(convert_to(type || E'\\n' || effective || E'\\n' || payload, 'UTF8')), 'hex')
     AS good
  FROM {TABLE} WINDOW w AS (ORDER BY position)
) AS chain"""
# consecutive versions per stream, in position order (the sort gets memory enough to stay off disk)
_PG_VERSION_CHECK = f"""
SELECT count(*) FROM (
  SELECT stream_version - row_number() OVER (PARTITION BY stream_id ORDER BY position) AS gap FROM {TABLE}
) AS versions WHERE gap <> 0"""


def _server_verify(conn: Connection) -> tuple[bool, int] | None:
    """The PostgreSQL server's verdict on the chain: (every row good?, rows); None with ``INCENTIVE_NATIVE=0``."""
    if os.environ.get("INCENTIVE_NATIVE") == "0":
        return None
    if not conn.in_transaction():
        conn.begin()  # one snapshot for both statements (released with the connection)
    conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
    rows, bad = conn.exec_driver_sql(_PG_CHAIN_CHECK).one()
    gaps = conn.exec_driver_sql(_PG_VERSION_CHECK).scalar_one()
    return bad == 0 and gaps == 0, int(rows)


def _native_path(url: str | URL, module: Any) -> str | None:
    """The file of an SQLite file ledger, for a native ``module`` that opens it itself; None when native
    code does not apply (PostgreSQL, an in-memory database, the module not built, ``INCENTIVE_NATIVE=0``)."""
    if module is None or os.environ.get("INCENTIVE_NATIVE") == "0":
        return None
    return _sqlite_file(url)


def _native_verify(url: str) -> tuple[bool, int] | None:
    """The native checker's verdict on an SQLite file ledger: (every row good?, rows read); None when it
    does not apply (see ``_native_path``) or could not read the file."""
    path = _native_path(url, _chain_sqlite)
    if path is None:
        return None
    result: tuple[bool, int] | None = _chain_sqlite.verify(path, _NATIVE_SPLIT)
    return result


# from this many rows on, the native pass checks the two halves of the ledger in two threads (each row's
# hash is checked against the stored hash before it, so the halves are independent; see the C file)
_NATIVE_SPLIT = 100_000 if (os.cpu_count() or 1) >= 2 else 0


def _first_line(exc: BaseException) -> str:
    """The driver's own message of a database error (SQLAlchemy's wrapper adds the statement), first line."""
    cause = getattr(exc, "orig", None) or exc
    text_ = str(cause)
    return text_.splitlines()[0] if text_ else type(cause).__name__


# a writer catches the known versions up over at most this many rows appended since (by a close, by
# another process); further behind, it looks versions up again as needed
VERSIONS_CATCH_UP_ROWS = 20_000


def _lend_versions(w: Writer, known: tuple[int, str, dict[str, int]] | None) -> None:
    """Start ``w`` with the stream versions a previous writer of this process knew, if they still
    describe the ledger: its head is the one they were known at (position and hash), or lies at most
    ``VERSIONS_CATCH_UP_ROWS`` rows on from it (the versions of the streams of those rows are read, after
    checking the row they were known at still carries its hash). Else ``w`` looks up what it needs.
    A month's file at M names about 50,000 streams: 0.2 s of lookups, most of them of streams the months
    before wrote (in a process that ingests month after month, as the benchmark's build, 0.02 s)."""
    if known is None:
        return
    position, hash_, versions = known
    head, head_hash, _ = w._head_full()
    if (position, hash_) != (head, head_hash):
        if not position < head <= position + VERSIONS_CATCH_UP_ROWS or _hash_of(w.conn, position) != hash_:
            return
        sql = f"SELECT stream_id, MAX(stream_version) FROM {TABLE} WHERE position > :p GROUP BY stream_id"
        versions.update((str(s), int(v)) for s, v in w.conn.execute(text(sql), {"p": position}))
    w._versions = versions


def _hash_of(conn: Connection, position: int) -> str | None:
    row = conn.execute(text(f"SELECT hash FROM {TABLE} WHERE position = :p"), {"p": position}).first()
    return None if row is None else str(row[0])


def _commit_beside(conn: Connection, work: Callable[[], None], undo: Callable[[], None], *, threaded: bool) -> None:
    """Commit ``conn``'s transaction in a thread while ``work`` runs in this one (the commit writes and
    syncs the log without the GIL: an M month's file, 0.25-0.33 s, longer than folding its events into
    the process's projection); not ``threaded``, one after the other. If either fails, ``undo`` runs and
    the error is raised, the commit's first: the work assumed a commit that may not have happened, or
    stopped half done."""
    failed: list[BaseException] = []
    if not threaded:
        try:
            conn.commit()
            work()
        except BaseException:
            undo()
            raise
        return

    def commit() -> None:
        try:
            conn.commit()
        except BaseException as exc:  # handed to the caller's thread below
            failed.append(exc)

    thread = threading.Thread(target=commit, name="ledger-commit", daemon=True)
    thread.start()
    try:
        work()
    except BaseException as stopped:
        join_through_interrupts(thread)
        undo()
        if failed:
            raise failed[0] from stopped  # nothing was written: that matters more than how the work stopped
        raise
    join_through_interrupts(thread)
    if failed:
        undo()
        raise failed[0]


@dataclass(frozen=True, slots=True)
class PreparedAppend:
    """An append's rows, built and chained by ``Writer.prepare``, written by ``Writer.insert``."""

    base: int  # the writer's head position it was prepared on
    rows: list[tuple[Any, ...]]
    recorded: list[Recorded]
    versions: dict[str, int]
    event_ids: list[str]
    head: tuple[int, str, str] | None  # (position, hash, recorded_at) after the append; None: nothing to write


class Writer:
    """The exclusive writer, valid only inside ``with ledger.writer() as w:``. Everything it reads is
    the ledger as it stands under the lock, plus what it appended itself."""

    def __init__(self, conn: Connection, clock: Callable[[], str]) -> None:
        self._conn: Connection | None = conn
        self._clock = clock
        self._head: tuple[int, str, str | None] | None = None
        self._versions: dict[str, int] = {}
        # event ids this writer looked up and did not find: under the lock, and with no row beyond the head
        # (``append`` checks), they are still absent, so the append need not look them up again
        self._absent_ids: set[str] = set()
        # why this writer's transaction can no longer commit (an insert failed after some of its rows
        # went in): the block then ends in a rollback even if the caller caught the error
        self.failed: EngineError | None = None
        # work to run while the transaction commits (``while_committing``), and its undo
        self._beside: tuple[Callable[[], None], Callable[[], None]] | None = None
        placeholders = _placeholders(conn.engine, len(COLUMNS))
        self._insert_head = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES "
        self._row_values = f"({placeholders})"
        self._sqlite = conn.dialect.name == "sqlite"
        self._rows_per_insert = _ROWS_PER_INSERT
        if self._sqlite:
            dbapi = conn.connection.dbapi_connection
            limit = dbapi.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if dbapi is not None else 999
            self._rows_per_insert = max(1, min(_ROWS_PER_INSERT, limit // len(COLUMNS)))

    def _refuse_taken_keys(self, events: Sequence[Event], head: int) -> None:
        """Refuse, before anything is inserted, an append the table's unique keys would refuse: a row
        beyond the head this writer knows (someone bypassed the store; it may hold any position or stream
        version), or an event id recorded already or given twice. What is left cannot fail on a key,
        which is what lets SQLite insert without a savepoint (``_insert_rows``)."""
        self._refuse_beyond(head)
        _refuse_taken_ids(self.conn, [ev.event_id for ev in events if ev.event_id], self._absent_ids)

    def _refuse_beyond(self, head: int) -> None:
        beyond = self.conn.execute(text(f"SELECT position FROM {TABLE} WHERE position > :p LIMIT 1"), {"p": head})
        found = beyond.first()
        if found is not None:
            raise ConcurrencyConflict(
                f"append refused by the ledger (a stream version or position taken: position {found[0]} is "
                f"beyond the head {head} this writer knows; another writer got there first?); nothing was written"
            )

    def _insert_rows(self, rows: list[tuple[Any, ...]]) -> None:
        """SQLite: multi-row INSERT statements of up to ``_ROWS_PER_INSERT`` rows. Inside a transaction each
        statement opens a statement journal (a copy of every page it changes, so that it can be undone alone)
        because it may abort: the table's own NOT NULL and UNIQUE checks, the BEFORE INSERT triggers'
        RAISE(ABORT) (migration 0003), and the contract heads' AFTER INSERT triggers (0007), whose writes keep
        it even under INSERT OR ROLLBACK (measured: 117,395 pages copied for the 126,898 rows of two M months).
        One statement per row (executemany) paid that per row and halved the insert rate (measured 16.5k vs
        27.7k rows/s on a 200k-event ledger). No savepoint around them: it made SQLite copy every page the
        append touched into a sub-journal (127k rows into the M ledger: 4.0-5.9 s instead of 2.6-3.5 s). Each
        statement is atomic, ``_refuse_taken_keys`` has ruled out a key conflict, and if a later statement
        fails anyway (a full disk, a foreign trigger) the writer is marked failed: its transaction rolls back
        when the block ends, even if the caller caught the error, so an append is still all or nothing.
        PostgreSQL: COPY (``_copy_rows``), one statement."""
        conn = self.conn
        if not self._sqlite:
            self._copy_rows(rows)
            return
        step = self._rows_per_insert
        for i in range(0, len(rows), step):
            chunk = rows[i : i + step]
            sql = self._insert_head + ", ".join([self._row_values] * len(chunk))
            try:
                conn.exec_driver_sql(sql, tuple(chain.from_iterable(chunk)))
            except Exception as exc:
                if i > 0:  # rows of this append are in: only the whole transaction can take them back
                    self.failed = EngineError(
                        f"an append failed after {i} of its {len(rows)} rows were inserted ({_first_line(exc)}); "
                        "this writer's transaction is rolled back, nothing of it was written"
                    )
                    raise self.failed from exc
                raise

    def _copy_rows(self, rows: list[tuple[Any, ...]]) -> None:
        """PostgreSQL: ``COPY ... FROM STDIN`` (psycopg's copy protocol) instead of a pipelined executemany
        of INSERTs (with the ``= ANY`` stream-version read, two monthly S files ingested 9-16% faster); the
        same constraints apply, and a violation raises psycopg's IntegrityError, turned into SQLAlchemy's
        here so that ``append`` treats both paths alike."""
        import psycopg

        dbapi = self.conn.connection.dbapi_connection
        assert dbapi is not None
        try:
            with dbapi.cursor() as cur, cur.copy(f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        except psycopg.IntegrityError as exc:
            raise IntegrityError("COPY ledger_event", None, exc) from exc

    @property
    def conn(self) -> Connection:
        """The locked connection (for callers that must read something else in the same transaction)."""
        if self._conn is None:
            raise EngineError("the ledger writer is used outside its `with ledger.writer()` block")
        if self.failed is not None:
            raise self.failed
        return self._conn

    def _head_full(self) -> tuple[int, str, str | None]:
        conn = self.conn  # refuses a writer outside its block or after a failed append, cached head or not
        if self._head is None:
            self._head = _head(conn)
        return self._head

    def head(self) -> tuple[int, str]:
        position, hash_, _ = self._head_full()
        return position, hash_

    def read(self, after: int = 0, upto: int | None = None, *, validate: bool = True) -> Iterator[Recorded]:
        return _read(self.conn, after, upto, None, validate)

    def fold(self, projector: Projector, after: int = 0) -> None:
        """As ``Ledger.fold``, inside this writer's transaction. The native reader sees only committed rows:
        where this writer has appended (rows it does not see), it declines and Python reads those rows."""
        _fold_range(self.conn, projector, after, None)

    def stream_versions(self, stream_ids: Iterable[str]) -> dict[str, int]:
        """Current version of each stream (0 for a stream with no events yet)."""
        conn = self.conn  # as in ``_head_full``
        ids = set(stream_ids)
        missing = [s for s in ids if s not in self._versions]
        if missing:
            self._versions.update(_stream_versions(conn, missing))
        return {s: self._versions[s] for s in ids}

    def event_id_hashes(self, event_ids: Iterable[str]) -> dict[str, str]:
        return _event_id_hashes_noting_absent(self.conn, event_ids, self._absent_ids)

    def content_hash_counts(self, contents: Iterable[tuple[str, str]]) -> dict[str, int]:
        return _content_hash_counts(self.conn, contents)

    def append(
        self,
        events: Sequence[Event],
        expected_versions: Mapping[str, int] | None = None,
        *,
        payloads: Sequence[str] | None = None,
        content_hashes: Sequence[str] | None = None,
    ) -> list[Recorded]:
        """Append ``events`` in order: positions head+1..., consecutive versions per stream, one
        ``recorded_at`` (never before the last one), chained hashes, one insert (``_insert_rows``).

        ``expected_versions`` maps a stream id to the version the caller decided on (0: no events);
        if any stream has moved on, raise ``ConcurrencyConflict`` and write nothing. ``payloads``, when
        given, is ``payload_json(e)`` (``canonical_json(to_payload(e))``) of each event, computed by the caller;
        ``content_hashes`` likewise ``content_hash`` of each (deduplication computed them).
        """
        return self.insert(self.prepare(events, expected_versions, payloads=payloads, content_hashes=content_hashes))

    def prepare(
        self,
        events: Sequence[Event],
        expected_versions: Mapping[str, int] | None = None,
        *,
        payloads: Sequence[str] | None = None,
        content_hashes: Sequence[str] | None = None,
    ) -> PreparedAppend:
        """``append``'s reads and checks and its rows, chained, with nothing written: ``insert`` writes
        them, and nothing may be appended between the two (``insert`` refuses rows prepared on another head)."""
        streams = [stream_of(ev) for ev in events]
        current = self.stream_versions(set(streams) | set(expected_versions or ()))
        for stream_id, expected in (expected_versions or {}).items():
            if current[stream_id] != expected:
                raise ConcurrencyConflict(
                    f"stream {stream_id}: expected version {expected}, found {current[stream_id]} "
                    "(another writer got there first); nothing was written"
                )
        if not events:
            return PreparedAppend(-1, [], [], {}, [], None)
        position, prev, last_recorded = self._head_full()
        base = position
        self._refuse_taken_keys(events, position)
        recorded_at = self._recorded_at(last_recorded)
        if payloads is None:
            payloads = [payload_json(ev) for ev in events]
        if content_hashes is None:
            effectives = [ev.effective.isoformat() for ev in events]
            content_hashes = _batch_content_hashes([ev.type for ev in events], effectives, payloads)
        versions = dict(current)
        after = (position, prev)
        rows, out, head = _chained_rows(events, streams, payloads, content_hashes, versions, after, recorded_at)
        event_ids = [ev.event_id for ev in events if ev.event_id]
        return PreparedAppend(base, rows, out, versions, event_ids, head)

    def _recorded_at(self, last_recorded: str | None) -> str:
        """One recording time for a whole append, never before the last one (a clock may step back)."""
        now = self._clock()
        return last_recorded if last_recorded is not None and last_recorded > now else now

    def while_committing(self, work: Callable[[], None], undo: Callable[[], None]) -> None:
        """Run ``work`` while this writer's transaction commits, when its block ends without an error
        (the commit in a thread: it waits on the disk, not on Python). If the commit or the work fails,
        ``undo`` runs before the error is raised: ``work`` may only do what ``undo`` can take back, for
        a commit that may not happen."""
        self._beside = (work, undo)

    def pipeline(self, reads: Connection | None) -> AppendPipeline:
        """One append in batches (``AppendPipeline``); ``reads``: a snapshot beside this writer, or None."""
        return AppendPipeline(self, reads)

    def insert(self, prepared: PreparedAppend) -> list[Recorded]:
        """Write what ``prepare`` built (all or nothing) and move this writer's head past it."""
        recorded = self._write(prepared)
        if prepared.head is not None:
            refresh_statistics(self.conn, TABLE, len(prepared.rows), prepared.head[0])
        return recorded

    def _write(self, prepared: PreparedAppend) -> list[Recorded]:
        if prepared.head is None:
            return []
        if self._head_full()[0] != prepared.base:  # its positions, versions and chain would be taken
            raise EngineError(
                f"a prepared append was built on position {prepared.base}, but this writer's head is at "
                f"{self._head_full()[0]}; nothing was written"
            )
        conn = self.conn
        rows = prepared.rows
        try:
            if self._sqlite:
                self._insert_rows(rows)  # all or nothing: see ``_insert_rows``
            else:
                with conn.begin_nested():  # a failed statement would abort the whole transaction
                    self._insert_rows(rows)
        except IntegrityError as exc:
            detail = _first_line(exc)
            what = "an event_id already recorded" if "event_id" in detail else "a stream version or position taken"
            raise ConcurrencyConflict(
                f"append refused by the ledger ({what}; another writer got there first?): {detail}; nothing was written"
            ) from exc
        self._head = prepared.head
        self._versions.update(prepared.versions)
        self._absent_ids.difference_update(prepared.event_ids)
        return prepared.recorded


def _chained_rows(
    events: Sequence[Event],
    streams: Sequence[str],
    payloads: Sequence[str],
    content_hashes: Sequence[str],
    versions: dict[str, int],
    after: tuple[int, str],
    recorded_at: str,
) -> tuple[list[tuple[Any, ...]], list[Recorded], tuple[int, str, str]]:
    """The rows (``COLUMNS``) of ``events`` appended after the row at ``after`` (position, chain hash):
    positions on from it, each stream's next version (``versions``, current before, is moved on), the
    chain hashes. Returns the rows, their ``Recorded`` and the new head (position, hash, recorded_at).
    In C where the chain checker is built (``_chain_sqlite.chained_rows``: 1.15 instead of 3.17 us an event
    of an M month's file), the same loop in Python otherwise (a test compares)."""
    position, prev = after
    native = getattr(_chain_sqlite, "chained_rows", None)  # None: not built, or built before it had this
    if native is not None and os.environ.get("INCENTIVE_NATIVE") != "0":
        rows, recorded, last = native(
            events, streams, payloads, content_hashes, versions, position, prev, recorded_at, Recorded, _RECORDED_SLOTS
        )
        return rows, recorded, (position + len(rows), last, recorded_at)
    unhashed: list[tuple[Any, ...]] = []
    out: list[Recorded] = []
    for ev, stream_id, payload, ch in zip(events, streams, payloads, content_hashes, strict=True):
        position += 1
        version = versions[stream_id] + 1
        versions[stream_id] = version
        type_ = ev.type
        effective = ev.effective.isoformat()
        event_id = ev.event_id
        unhashed.append((position, stream_id, version, type_, effective, event_id, recorded_at, payload, ch))
        out.append(Recorded(position, recorded_at, stream_id, version, ev))
    hashes = chain_hashes(prev, unhashed)
    rows = [(*row, h) for row, h in zip(unhashed, hashes, strict=True)]
    return rows, out, (position, hashes[-1] if hashes else prev, recorded_at)


# the slot descriptors the native ``chained_rows`` sets each ``Recorded``'s fields through, in its order
_RECORDED_SLOTS = tuple(
    Recorded.__dict__[name] for name in ("position", "recorded_at", "stream_id", "stream_version", "event")
)


class AppendPipeline:
    """One append of many events, written batch by batch by a thread while the caller reads, checks and
    prepares the next batch (``service`` ingests a file so: its parsing and validation, Python's work,
    overlap the database's inserts, done without the GIL). Used as ``with writer.pipeline(reads) as p``:
    ``send`` each batch, then ``finish``; leaving the block any other way waits for the thread, and the
    writer's transaction, rolled back, takes back whatever the thread inserted.

    Every batch is numbered, versioned and chained after the one before, with one recording time, as one
    ``Writer.append`` of them all would be. What a batch needs to know of the ledger (its streams'
    versions, whether its event ids are taken) is read on ``reads``: a snapshot taken under the writer's
    lock, which sees the ledger as the writer found it (the thread's rows are uncommitted; the lock
    keeps everyone else from committing), while the thread uses the writer's connection. With ``reads``
    None (an in-memory SQLite ledger, whose one connection is the writer's) those reads are on the
    writer's connection and the batches are inserted only at ``finish``, so that no read sees a row of
    the append."""

    def __init__(self, writer: Writer, reads: Connection | None) -> None:
        self._writer = writer
        self._threaded = reads is not None
        self._reads = reads if reads is not None else writer.conn
        position, hash_, last_recorded = writer._head_full()
        writer._refuse_beyond(position)
        self._recorded_at = writer._recorded_at(last_recorded)
        self._after = (position, hash_)
        self._versions: dict[str, int] = {}  # every stream's version after the batches sent so far
        self._absent: set[str] = set()  # event ids looked up and not found
        self._sent_ids: set[str] = set()
        self._waiting: list[PreparedAppend] = []  # unthreaded: what ``finish`` inserts
        self._queue: queue.SimpleQueue[PreparedAppend | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._recorded: list[Recorded] = []
        self._error: BaseException | None = None
        self._cancelled = False  # the append is given up: the thread skips what is still queued

    def __enter__(self) -> AppendPipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._cancelled = True  # finished already, or leaving with an error: nothing more to insert
        self._stop()

    # the ledger as the writer found it, for the caller's deduplication
    def event_id_hashes(self, event_ids: Iterable[str]) -> dict[str, str]:
        return _event_id_hashes_noting_absent(self._reads, event_ids, self._absent)

    def content_hash_counts(self, contents: Iterable[tuple[str, str]]) -> dict[str, int]:
        return _content_hash_counts(self._reads, contents)

    def send(self, events: Sequence[Event], payloads: Sequence[str], content_hashes: Sequence[str]) -> None:
        """Number, version and chain ``events`` after the batches sent before, and hand their rows to
        the insert. Refuses (``ConcurrencyConflict``, nothing of the batch sent) an event id the ledger
        holds or the append gives twice."""
        if not events:
            return
        streams = [stream_of(ev) for ev in events]
        # each stream's version: after the batches sent before, else the writer's at the start (lent by
        # the writer before, ``_lend_versions``; the thread adds to them only streams of batches already
        # sent, found in the first place), else read. Not copied from one to the other: a month's file
        # at M names 48,000 streams, and copying them cost 1 us each
        sent, known = self._versions, self._writer._versions
        versions: dict[str, int] = {}
        missing = []
        for s in set(streams):
            version = sent.get(s)
            if version is None:
                version = known.get(s)
            if version is None:
                missing.append(s)
            else:
                versions[s] = version
        if missing:
            versions.update(_stream_versions(self._reads, missing))
        ids = [ev.event_id for ev in events if ev.event_id]
        _refuse_taken_ids(self._reads, ids, self._absent, self._sent_ids)
        base = self._after[0]
        rows, recorded, head = _chained_rows(
            events, streams, payloads, content_hashes, versions, self._after, self._recorded_at
        )
        self._versions.update(versions)
        self._sent_ids.update(ids)
        self._after = head[:2]
        prepared = PreparedAppend(base, rows, recorded, versions, ids, head)
        if not self._threaded:
            self._waiting.append(prepared)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._insert_sent, name="ingest-insert", daemon=True)
            self._thread.start()
        self._queue.put(prepared)

    def _insert_sent(self) -> None:
        while (prepared := self._queue.get()) is not None:
            if self._error is None and not self._cancelled:
                try:
                    self._recorded += self._writer._write(prepared)
                except BaseException as exc:  # handed to the caller's thread by ``finish``
                    self._error = exc

    def finish(self) -> list[Recorded]:
        """Wait for every batch to be inserted; raise the insert's error if there was one."""
        for prepared in self._waiting:
            self._recorded += self._writer._write(prepared)
        self._waiting = []
        self._stop()
        if self._error is not None:
            raise self._error
        if self._recorded:
            refresh_statistics(self._writer.conn, TABLE, len(self._recorded), self._recorded[-1].position)
        return self._recorded

    def _stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            join_through_interrupts(self._thread)
            self._thread = None


def join_through_interrupts(thread: threading.Thread) -> None:
    """Wait for a thread that inserts with the writer before anything else touches the writer, even
    through a second Ctrl-C: were the writer rolled back while the thread still inserts, SQLite would
    run the thread's next statement outside any transaction and keep its rows. An interrupt is raised
    once the thread is done."""
    interrupted: BaseException | None = None
    while True:
        try:
            thread.join()
            break
        except BaseException as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted
