"""Every ``Sink`` honours the same contract: idempotent upserts, flush, close (sinks/base.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
from psycopg import sql

from cryptostream.model import DEFAULT_WINDOWS
from cryptostream.processing.engine import EngineConfig, Output, Processor
from cryptostream.sinks.base import Sink, stats_rows
from cryptostream.sinks.duckdb_sink import DuckDBSink
from cryptostream.sinks.postgres_sink import PostgresSink
from cryptostream.sources.replay import ReplayFile, ReplaySource

REAL = Path(__file__).parents[1] / "fixtures" / "real"
TABLES = ("trades", "agg_1m", "agg_5m_1m", "rejects", "gaps", "pipeline_stats")


def _processed(speed_now: int = 1_900_000_000_000_000) -> tuple[Output, list[dict]]:
    proc = Processor(EngineConfig(windows=DEFAULT_WINDOWS, max_clock_skew_us=5_000_000))
    out = Output()
    src = ReplaySource([ReplayFile.parse(str(REAL / "btcusdt-ws-raw-20240808.hftbacktest.gz"))])
    for sb in src.batches():
        out.extend(proc.process(sb, speed_now))
    out.extend(proc.close(speed_now))
    return out, stats_rows("run-1", speed_now, speed_now, "test", proc.counters)


@pytest.fixture(scope="module")
def processed():
    return _processed()


@dataclass(frozen=True)
class SinkKind:
    """How the contract drives one kind of sink: ``location(request)`` prepares an empty store
    for one test (a file path, a DSN); ``factory(location)`` makes a new sink on it;
    ``snapshot(location)`` reads every table of ``TABLES`` back, sorted, as lists of tuples
    of Python values (what was written compares equal: floats exact, aware datetimes)."""

    location: Callable[[pytest.FixtureRequest], Any]
    factory: Callable[[Any], Sink]
    snapshot: Callable[[Any], dict[str, list]]


def _duckdb_location(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("tmp_path") / "c.duckdb"


def _duckdb_sink(path: Path) -> DuckDBSink:
    return DuckDBSink(path, DEFAULT_WINDOWS)


def _duckdb_snapshot(path: Path) -> dict[str, list]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {t: con.sql(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}
    finally:
        con.close()


def _postgres_location(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("pg_dsn")  # skips when PostgreSQL is not running


def _postgres_sink(dsn: str) -> PostgresSink:
    return PostgresSink(dsn, DEFAULT_WINDOWS, retry_for_s=5.0)


def _sort_key(row: tuple) -> tuple:
    """Total order over rows holding None and mixed types (the key columns come first)."""
    return tuple((v is None, type(v).__name__, v) if v is not None else (True, "", 0) for v in row)


def _postgres_snapshot(dsn: str) -> dict[str, list]:
    def value(v):
        return "NaN" if isinstance(v, float) and math.isnan(v) else v  # NaN != NaN

    with psycopg.connect(dsn) as con:
        con.execute("SET TimeZone = 'UTC'")
        cur = con.cursor(binary=True)  # float8 and timestamptz bit-exact
        return {
            t: sorted((tuple(map(value, r)) for r in cur.execute(
                sql.SQL("SELECT * FROM {}").format(sql.Identifier(t))).fetchall()), key=_sort_key)
            for t in TABLES
        }


SINKS = {
    "duckdb": SinkKind(_duckdb_location, _duckdb_sink, _duckdb_snapshot),
    "postgres": SinkKind(_postgres_location, _postgres_sink, _postgres_snapshot),
}


@dataclass(frozen=True)
class Store:
    """One empty store of one kind, for one test."""

    make: Callable[[], Sink]  # a new sink writing this store
    snapshot: Callable[[], dict[str, list]]


@pytest.fixture(params=sorted(SINKS))
def store(request) -> Store:
    kind = SINKS[request.param]
    where = kind.location(request)
    return Store(lambda: kind.factory(where), lambda: kind.snapshot(where))


def test_is_a_sink(store):
    assert isinstance(store.make(), Sink)


def test_write_twice_is_idempotent(store, processed):
    out, stats = processed
    sink = store.make()
    sink.open()
    sink.write(out, stats, 1)
    sink.flush()
    sink.close()
    first = store.snapshot()
    assert len(first["trades"]) == 9757
    assert len(first["agg_1m"]) == 7
    sink = store.make()
    sink.open()
    sink.write(out, stats, 2)
    sink.close()
    assert store.snapshot() == first


def test_close_is_idempotent(store):
    sink = store.make()
    sink.open()
    sink.close()
    sink.close()


def test_a_failed_write_leaves_nothing_half_written(store, processed):
    out, stats = processed
    sink = store.make()
    sink.open()
    broken = Output(trades=out.trades, windows={"agg_1m": out.windows["agg_1m"],
                                                "no_such_table": out.windows["agg_1m"]})
    with pytest.raises(KeyError):
        sink.write(broken, stats, 1)
    sink.close()
    snap = store.snapshot()
    assert snap["trades"] == [] and snap["agg_1m"] == []


def _window(rows: list[dict], symbol_window: tuple[str, int]) -> dict:
    return next(r for r in rows if (r["symbol"], r["window_start_us"]) == symbol_window)


def test_a_later_emission_of_a_window_replaces_the_first(store, processed):
    """A window re-emitted in a later write (a correction after a backfill) and one emitted
    twice within one write (flushes merged by the writer) both end up as their last version,
    beside a window newer than anything stored (the sinks' plain-insert path)."""
    out, stats = processed
    rows = sorted(out.windows["agg_1m"], key=lambda r: r["window_start_us"])
    first, newest = rows[:-1], rows[-1]
    sink = store.make()
    sink.open()
    sink.write(Output(windows={"agg_1m": first}), stats, 1)
    key = (first[0]["symbol"], first[0]["window_start_us"])
    fixed = dict(_window(first, key), trade_count=first[0]["trade_count"] + 1, missing_trades=0)
    fixed_again = dict(fixed, trade_count=fixed["trade_count"] + 1)
    sink.write(Output(windows={"agg_1m": [fixed, newest, fixed_again]}), stats, 2)
    sink.close()
    stored = {(r[0], int(r[1].timestamp() * 1_000_000)): r for r in store.snapshot()["agg_1m"]}
    assert len(stored) == len(rows)
    assert stored[key][3] == first[0]["trade_count"] + 2  # trade_count: the last version
    assert (newest["symbol"], newest["window_start_us"]) in stored
