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

from ..errors import EngineError, InputError
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
app.add_typer(audit_app, name="audit")


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
        if self._ledger is None:
            self._ledger = Ledger(self.db)
        return self._ledger

    def book(self):
        return load_plans(self.rules)


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
    s.ledger.init()
    render.out.print(f"Ledger schema is at head on {s.db}")


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
    state = service.load_state(s.ledger)
    render.cycle_output(service.stored_cycle(s.ledger, state, period), fmt.value)


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


def main() -> None:
    """Entry point: every EngineError is a message and exit 1; never a traceback for bad input."""
    try:
        app(standalone_mode=False)
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
    except Exception as exc:  # click usage errors and anything unexpected
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if os.environ.get("INCENTIVE_DEBUG"):
            raise
        render.err.print(f"internal error: {type(exc).__name__}: {exc}", highlight=False, markup=False)
        sys.exit(1)
