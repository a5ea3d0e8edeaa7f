"""The small, documented exception tree for broken invariants and refused operations.

Input errors (a bad line in a file, a bad key in a plan) are *values* collected and reported together
(``InputError`` carries the whole list); the CLI turns every ``EngineError`` into a message on stderr and
exit status 1, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class EngineError(Exception):
    """Base of every error the CLI reports as a plain message with exit status 1."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One rejected input: where (file, line), which field, and why, in a plain sentence."""

    source: str
    line: int | None
    field: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.field}: {self.reason}"


class InputError(EngineError):
    """Rejected input; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class LedgerNotInitialised(EngineError):
    """The database has no ledger schema (or an old one): run `incentive init`."""


class ConcurrencyConflict(EngineError):
    """A stale writer: a stream moved on since the writer read it. Nothing was written."""


class IntegrityFailure(EngineError):
    """The hash chain or the schema does not verify."""


class CycleError(EngineError):
    """A cycle operation that is not allowed (closing out of order, showing an unclosed cycle)."""


class PlanError(EngineError):
    """A plan file that does not validate, or no plan in force for a date."""
