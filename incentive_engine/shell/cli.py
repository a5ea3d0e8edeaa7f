"""The `incentive` command line: parse arguments, call the service, render; errors become messages.

Exit status: 0 success; 1 rejected input, failed check or conflict (message on stderr); 2 usage error.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..core.plan import PlanBook
from ..errors import EngineError, InputError, LedgerNotInitialised
from . import render, service
from .plans import default_rules_dir, load_plans
from .store import Ledger

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Deferred-commission incentive engine: ledger, payout cycles, scorecards, audit.",
)
cycle_app = typer.Typer(no_args_is_help=True, help="Preview, close and show monthly payout cycles.")
audit_app = typer.Typer(no_args_is_help=True, help="Verify, replay and reproduce the ledger.")
app.add_typer(cycle_app, name="cycle")
scorecard_app = typer.Typer(no_args_is_help=True, help="Compute and publish yearly KPI scorecards.")
app.add_typer(audit_app, name="audit")
app.add_typer(scorecard_app, name="scorecard")


def _mount_db_admin() -> None:
    """`incentive db ...` (database administration) lives in its own module."""
    from .db_admin import db_app

    app.add_typer(db_app, name="db")


_mount_db_admin()


class Format(StrEnum):
    table = "table"
    json = "json"


FormatOpt = Annotated[Format, typer.Option("--format", help="table for people, json for programs")]


class Settings:
    def __init__(self, db: str, rules: Path) -> None:
        self.db = db
        self.rules = rules
        self._ledger: Ledger | None = None

    @property
    def ledger(self) -> Ledger:
        """The ledger; a missing SQLite file is reported, not silently created (only `init` creates it)."""
        if self._ledger is None:
            self._ledger = self.new_ledger(create=False)
        return self._ledger

    def new_ledger(self, create: bool) -> Ledger:
        from sqlalchemy.engine import make_url

        try:
            url = make_url(self.db)
        except Exception as exc:  # SQLAlchemy raises several types for a bad URL
            raise EngineError(f"--db: not a database URL: {self.db!r} ({exc})") from None
        sqlite_file = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
        if not create and sqlite_file and not Path(str(url.database)).exists():
            raise LedgerNotInitialised(f"{url.database} does not exist: run `incentive init` to create the ledger")
        ledger = Ledger(self.db)
        _OPENED.append(ledger)
        return ledger

    def book(self) -> PlanBook:
        return load_plans(self.rules)


# the ledgers this command opened: closed when it ends (``main``), so that a process running commands one
# after another (a worker, a test) does not keep a pool of database connections per command
_OPENED: list[Ledger] = []


def _settings(ctx: typer.Context) -> Settings:
    return ctx.obj  # type: ignore[no-any-return]


@app.callback()
def main_options(
    ctx: typer.Context,
    db: Annotated[
        str | None, typer.Option("--db", help="SQLAlchemy URL (default $INCENTIVE_DB or sqlite:///incentive.db)")
    ] = None,
    rules: Annotated[
        Path | None, typer.Option("--rules", help="directory of plan files (default: the shipped rules/)")
    ] = None,
) -> None:
    ctx.obj = Settings(db or os.environ.get("INCENTIVE_DB") or "sqlite:///incentive.db", rules or default_rules_dir())


@app.command()
def init(ctx: typer.Context) -> None:
    """Create or upgrade the ledger schema (migrations); safe to run again."""
    s = _settings(ctx)
    s.new_ledger(create=True).init()
    from sqlalchemy.engine import make_url

    shown = make_url(s.db).render_as_string(hide_password=True)  # never print a password
    render.out.print(f"Ledger schema is at head on {shown}", highlight=False)


@app.command()
def ingest(ctx: typer.Context, files: Annotated[list[Path], typer.Argument(help=".jsonl or .csv files")]) -> None:
    """Validate and append events; each file is all-or-nothing."""
    s = _settings(ctx)
    s.ledger.check_schema()
    results = []
    for path in files:
        size = path.stat().st_size if path.exists() else 0
        if size > 500_000:  # a progress bar for files of more than a few thousand lines
            with _progress() as bar:
                task = bar.add_task(f"reading {path.name}", total=None)
                results += service.ingest_files(s.ledger, [path], lambda n, t=task: bar.advance(t, n))
        else:
            results += service.ingest_files(s.ledger, [path])
    for r in results:
        if r.problems:
            render.err.print(f"{r.source}: rejected, nothing appended ({len(r.problems)} problems)", highlight=False)
        else:
            render.out.print(f"{r.source}: {r.appended} appended, {r.skipped} already in the ledger", highlight=False)
    service.raise_input(results)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=render.err,
        transient=True,
    )


@cycle_app.command("preview")
def cycle_preview(ctx: typer.Context, period: str, fmt: FormatOpt = Format.table) -> None:
    """Evaluate period YYYY-MM without writing anything."""
    s = _settings(ctx)
    s.ledger.check_schema()
    render.cycle_output(service.preview(s.ledger, s.book(), period), fmt.value)


@cycle_app.command("close")
def cycle_close(ctx: typer.Context, period: str, fmt: FormatOpt = Format.table) -> None:
    """Evaluate and record the cycle atomically; on a closed period: a no-op that says so."""
    s = _settings(ctx)
    s.ledger.check_schema()
    result = service.close(s.ledger, s.book(), period)
    if result.status == "already_closed":
        render.err.print(f"{period} is already closed; nothing changed.")
    render.cycle_output(result, fmt.value)


@cycle_app.command("show")
def cycle_show(ctx: typer.Context, period: str, fmt: FormatOpt = Format.table) -> None:
    """What a closed cycle issued."""
    s = _settings(ctx)
    s.ledger.check_schema()
    render.cycle_output(service.show_cycle(s.ledger, period), fmt.value)


@audit_app.command("verify")
def audit_verify(ctx: typer.Context) -> None:
    """Check the hash chain and the schema; exit 1 naming the first bad position."""
    s = _settings(ctx)
    report = s.ledger.verify()
    if not report.ok:
        raise EngineError(report.message)
    render.out.print(f"OK: {report.events} events, hash chain intact.")


@audit_app.command("replay")
def audit_replay(
    ctx: typer.Context,
    as_of_position: Annotated[
        int | None, typer.Option("--as-of-position", help="replay events up to this position")
    ] = None,
    as_of_time: Annotated[
        str | None, typer.Option("--as-of-time", help="replay events recorded up to this UTC time")
    ] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Rebuild every projection from position 0 and print a digest of the resulting state."""
    from ..core.projections import state_digest

    s = _settings(ctx)
    s.ledger.check_schema()
    state = service.load_state(s.ledger, upto=as_of_position, recorded_upto=_utc(as_of_time))
    digest = state_digest(state)
    summary = {
        "position": state.position,
        "digest": digest,
        "reps": len(state.reps),
        "contracts": len(state.contracts),
        "violations": len(state.violations),
        "closed_cycles": len(state.cycles),
    }
    if fmt is Format.json:
        render.print_json(summary)
    else:
        render.out.print(
            f"Replayed {state.position} events: {len(state.reps)} reps, {len(state.contracts)} contracts, "
            f"{len(state.cycles)} closed cycles.\nstate digest sha256:{digest}",
            highlight=False,
        )


@audit_app.command("reproduce")
def audit_reproduce(
    ctx: typer.Context,
    period: Annotated[str | None, typer.Argument(help="a closed period YYYY-MM")] = None,
    all_: Annotated[bool, typer.Option("--all", help="reproduce every closed cycle")] = False,
) -> None:
    """Recompute closed cycles from the ledger as it stood at their close; exit 1 on any difference."""
    from . import audit

    s = _settings(ctx)
    s.ledger.check_schema()
    state = service.load_state(s.ledger)
    if all_ == (period is not None):
        raise typer.BadParameter("give either a PERIOD or --all")
    periods = sorted(state.cycles) if all_ else [period]
    with _progress() as bar:
        task = bar.add_task("reproducing cycles", total=len(periods))
        reproduced = audit.reproduce_all(s.ledger, state, periods, lambda: bar.advance(task))  # type: ignore[arg-type]
    failed = [r for r in reproduced if not r.identical]
    for r in failed:
        render.err.print(f"{r.period}: differs from what was issued:", highlight=False)
        for d in r.differences:
            render.err.print(f"  {d}", highlight=False, markup=False)
    if failed:
        raise EngineError(f"{len(failed)} of {len(periods)} closed cycles do not reproduce")
    render.out.print(f"OK: {len(periods)} closed cycle(s) reproduce exactly.")


@audit_app.command("export")
def audit_export(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="directory for ledger.jsonl and ledger.digest")] = Path(
        "audit-export"
    ),
) -> None:
    """Write the ledger as canonical JSON Lines with each event's hash, and a digest file."""
    from . import audit

    s = _settings(ctx)
    s.ledger.check_schema()
    path, digest = audit.export(s.ledger, out)
    render.out.print(f"Wrote {path} and {digest}")


@app.command()
def explain(
    ctx: typer.Context,
    period: str,
    rep_id: str,
    obligation: Annotated[str | None, typer.Option("--obligation", help="only this obligation id")] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Each line and evaluation of the rep in that cycle with its facts, factors and rule."""
    from . import audit

    s = _settings(ctx)
    s.ledger.check_schema()
    period = service.check_period(period)  # before the replay: a typo is told at once, not after it
    state = service.load_state(s.ledger)
    book = s.book() if period not in state.cycles else None
    result = audit.explain(s.ledger, book, state, period, rep_id, obligation)  # type: ignore[arg-type]
    if fmt is Format.json:
        render.print_json(result)
    else:
        render.explain_table(result)


class StatementFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    html = "html"


@app.command()
def statement(
    ctx: typer.Context,
    rep_id: Annotated[str | None, typer.Argument(help="the rep (or --all)")] = None,
    through: Annotated[str | None, typer.Option("--through", help="last period (default: the last closed)")] = None,
    fmt: Annotated[StatementFormat, typer.Option("--format")] = StatementFormat.table,
    all_: Annotated[bool, typer.Option("--all", help="every rep's statement, into --out")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="directory (with --all) or file to write")] = None,
) -> None:
    """A rep's statement: paid, deferred to come, held, forfeited, carried balance, and an estimate."""
    from . import statements

    s = _settings(ctx)
    s.ledger.check_schema()
    if all_ == (rep_id is not None):
        raise typer.BadParameter("give either a REP_ID or --all")
    if all_ and out is None:
        raise typer.BadParameter("--all needs --out DIR")
    if through is not None:
        service.check_period(through)  # before the replay, as for explain
    state = service.load_state(s.ledger)
    book = s.book()
    if all_:
        written = statements.write_all(book, state, through, out, fmt.value)  # type: ignore[arg-type]
        render.out.print(f"Wrote {len(written)} statements to {out}")
        return
    text = statements.render_one(book, state, rep_id, through, fmt.value)  # type: ignore[arg-type]
    if text is None:
        return
    if out is not None:
        out.write_text(text, encoding="utf-8")
        render.out.print(f"Wrote {out}")
    else:
        sys.stdout.write(text)


@cycle_app.command("export")
def cycle_export(
    ctx: typer.Context,
    period: str,
    fmt: Annotated[str, typer.Option("--format", help="csv")] = "csv",
    out: Annotated[Path | None, typer.Option("--out", help="file to write (default: stdout)")] = None,
) -> None:
    """Payroll export of a closed cycle: one row per rep and currency with the payable amount."""
    from . import statements

    if fmt != "csv":
        raise typer.BadParameter("only --format csv is supported")
    s = _settings(ctx)
    s.ledger.check_schema()
    text = statements.payroll_csv(service.payroll_state(s.ledger, period), service.check_period(period))
    if out is not None:
        out.write_text(text, encoding="utf-8")
        render.out.print(f"Wrote {out}")
    else:
        sys.stdout.write(text)


class Role(StrEnum):
    rep = "rep"
    manager = "manager"
    director = "director"


@scorecard_app.command("compute")
def scorecard_compute(
    ctx: typer.Context,
    year: int,
    role: Annotated[Role | None, typer.Option("--role", help="only this role's scorecards")] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Each person's KPI values, scores, weights and composite for YEAR."""
    from ..core.scorecards import scorecard_json
    from . import scorecard_service

    s = _settings(ctx)
    s.ledger.check_schema()
    cards = scorecard_service.compute(s.ledger, s.book(), year, role.value if role else None)
    if fmt is Format.json:
        render.print_json(scorecard_json(cards))
    else:
        render.scorecard_table(cards, year)


@scorecard_app.command("publish")
def scorecard_publish(
    ctx: typer.Context,
    year: int,
    effective: Annotated[str | None, typer.Option("--effective", help="YYYY-MM-DD (default: Jan 1 of YEAR+1)")] = None,
) -> None:
    """Append one scorecard.published per person with a KPI value; the payout cycle reads it."""
    from datetime import date

    from . import scorecard_service

    s = _settings(ctx)
    s.ledger.check_schema()
    try:
        day = date.fromisoformat(effective) if effective else None
    except ValueError:
        raise typer.BadParameter(f"--effective: not a date YYYY-MM-DD: {effective}") from None
    published, unchanged = scorecard_service.publish(s.ledger, s.book(), year, day)
    render.out.print(f"Published {published} scorecard(s) for {year}; {unchanged} unchanged.")


@app.command()
def demo(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option("--dir", help="where the demo writes its ledger and files")] = Path(
        "demo-output"
    ),
    seed: Annotated[int, typer.Option("--seed", help="same seed, same ledger, same cents")] = 7,
    reps: Annotated[int, typer.Option("--reps", help="people in the org")] = 40,
    contracts: Annotated[int, typer.Option("--contracts", help="contracts over the five years")] = 420,
) -> None:
    """Build a realistic five-year sample ledger and run it end to end (SQLite in --dir)."""
    from . import demo as demo_run

    s = _settings(ctx)
    with _progress() as bar:
        tasks: dict[str, int] = {}

        def tick(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done)

        report = demo_run.run_demo(
            directory,
            seed,
            s.book(),
            reps=reps,
            contracts=contracts,
            step=lambda m: bar.console.print(m, highlight=False),
            on_progress=tick,
        )
    render.demo_summary(report)


def _utc(text: str | None) -> str | None:
    """An ISO time as the ledger writes recorded_at (UTC, microseconds, Z)."""
    if text is None:
        return None
    import pendulum

    try:
        t = pendulum.parse(text, tz="UTC")
    except (ValueError, pendulum.parsing.exceptions.ParserError) as exc:
        raise typer.BadParameter(f"--as-of-time: not an ISO date-time: {exc}") from None
    return t.in_tz("UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # type: ignore[union-attr]


def _run() -> None:
    try:
        app(standalone_mode=False)
    finally:
        while _OPENED:
            _OPENED.pop().dispose()


def main() -> None:
    """Entry point: every EngineError is a message and exit 1; never a traceback for bad input."""
    try:
        _run()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        render.err.print("Aborted.")
        sys.exit(1)
    except InputError as exc:
        for p in exc.problems:
            render.err.print(str(p), highlight=False, markup=False)
        sys.exit(1)
    except EngineError as exc:
        render.err.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(1)
    except typer.TyperException as exc:  # usage errors: click's own message, exit 2
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            render.err.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(getattr(exc, "exit_code", 2))
    except Exception as exc:  # anything unexpected: one line, no traceback (INCENTIVE_DEBUG=1 shows it)
        if os.environ.get("INCENTIVE_DEBUG"):
            raise
        render.err.print(f"internal error: {type(exc).__name__}: {exc}", highlight=False, markup=False)
        sys.exit(1)
