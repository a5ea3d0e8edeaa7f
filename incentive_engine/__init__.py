"""Deferred-commission incentive engine.

Layout (functional core inside an imperative shell):

- ``incentive_engine.core``  - pure functions and immutable data: money, dates, events, projections,
  plans, evaluation, cycles, scorecards. No I/O, no clocks, no globals: same inputs, same cents.
- ``incentive_engine.shell`` - everything that touches the world: the ledger database, files, the CLI.
"""

__version__ = "0.1.0"
