"""The benchmark's verdict against issue 8's targets (bench/run.py): each target judged on the right figure,
at its bound, and only for the size and database the targets name."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def run() -> Iterator[Any]:
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCH))  # run.py puts bench/ first on the path for its synth import


def _row(size: str = "M", db: str = "sqlite", **over: Any) -> dict[str, Any]:
    row = {
        "size": size,
        "db": db,
        "ingest_eps": 50_000,
        "replay_verify_seq_eps": 200_000,
        "replay_verify_par_eps": 210_000,
        "close_engine_s": 5.0,
        "close_cli_s": 7.1,
        "close_engine_rss_mb": 1024.0,
        "peer_append_eps": 20_000,  # the ratios clear of their bound, so that each case below misses one target
        "peer_read_eps": 80_000,
    }
    return row | over


def _growth(five: float, ten: float, size: str = "M") -> dict[str, Any]:
    return {"size": size, "db": "sqlite", "5y": {"cold_close_median_s": five}, "10y": {"cold_close_median_s": ten}}


def test_every_target_at_its_bound_is_met(run: Any) -> None:
    verdicts = run.targets([_row(peer_append_eps=25_000, peer_read_eps=100_000)], [_growth(2.0, 2.4)])
    assert len(verdicts) == 7
    assert all(met for _, _, met in verdicts), verdicts


@pytest.mark.parametrize(
    ("over", "missed"),
    [
        ({"ingest_eps": 49_999}, "ingest >= 50,000 events/s"),
        ({"replay_verify_seq_eps": 199_999}, "replay + verify >= 200,000 events/s"),
        ({"close_engine_s": 5.01}, "one monthly close <= 5 s"),
        ({"close_engine_rss_mb": 1024.5}, "one monthly close <= 1 GB RSS"),
        ({"peer_append_eps": 25_001}, "ingest >= 2x the peer's append"),
        ({"peer_read_eps": 100_001}, "replay + verify >= 2x the peer's read"),
    ],
)
def test_each_target_just_past_its_bound_is_not_met(run: Any, over: dict[str, Any], missed: str) -> None:
    verdicts = run.targets([_row(**over)], [])
    assert [target for target, _, met in verdicts if not met] == [missed]


def test_replay_verify_is_judged_one_after_the_other_not_in_two_processes(run: Any) -> None:
    verdicts = run.targets([_row(replay_verify_seq_eps=150_000, replay_verify_par_eps=300_000)], [])
    verdict = next(v for v in verdicts if v[0].startswith("replay + verify >= 200"))
    assert verdict[2] is False
    assert "150,000 one after the other" in verdict[1]


def test_growth_is_the_cold_close_ten_years_against_five(run: Any) -> None:
    (at_bound,) = run.targets([], [_growth(2.5, 3.0)])
    (past,) = run.targets([], [_growth(2.5, 3.001)])
    assert at_bound[2] is True and "+20.0%" in at_bound[1]
    assert past[2] is False


def test_only_m_on_sqlite_is_judged_and_a_run_without_the_peer_has_no_ratios(run: Any) -> None:
    assert run.targets([_row(size="S"), _row(db="postgres")], [_growth(1.0, 9.0, size="S")]) == []
    no_peer = _row()
    del no_peer["peer_append_eps"], no_peer["peer_read_eps"]
    assert [t for t, _, _ in run.targets([no_peer], [])] == [
        "ingest >= 50,000 events/s",
        "replay + verify >= 200,000 events/s",
        "one monthly close <= 5 s",
        "one monthly close <= 1 GB RSS",
    ]


def test_the_verdict_table_marks_what_is_not_met(run: Any) -> None:
    verdicts = run.targets([_row(ingest_eps=48_833)], [])
    text = run.targets_table(verdicts)
    assert text.splitlines()[0] == "against issue 8's targets (M, sqlite):"
    assert "NOT MET  48,833" in text
    assert sum(line.count("met    ") for line in text.splitlines()) == 5
