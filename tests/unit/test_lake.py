"""The Parquet lake export (sinks/lake.py): what is written when, and that it equals the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from cryptostream.model import DEFAULT_WINDOWS
from cryptostream.processing.engine import AcceptedTrades, Output
from cryptostream.sinks.duckdb_sink import DuckDBSink
from cryptostream.sinks.lake import HOUR_US, ParquetLake

HOUR0 = 1_700_000_000_000_000 // HOUR_US * HOUR_US  # 2023-11-14 22:00 UTC
SETTLE_US = 60_000_000


def _trades(symbol: str, first_id: int, times_us: np.ndarray) -> AcceptedTrades:
    n = len(times_us)
    return AcceptedTrades(symbol, "test", np.arange(first_id, first_id + n), np.full(n, 1.5),
                          np.full(n, 2.0), times_us, np.zeros(n, bool), np.zeros(n, bool),
                          times_us, times_us, int(times_us[-1]), np.zeros(n), np.full(n, np.nan))


def _write(sink: DuckDBSink, lake: ParquetLake, *parts: AcceptedTrades) -> None:
    out = Output(trades=list(parts))
    sink.write(out, [])
    lake.mark(out)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))


def test_trade_hours_are_written_once_settled_then_rewritten_when_they_change(tmp_path):
    sink = DuckDBSink(tmp_path / "s.duckdb", DEFAULT_WINDOWS)
    sink.open()
    lake = ParquetLake(tmp_path / "lake", DEFAULT_WINDOWS, settle_us=SETTLE_US)
    lake.open()
    # two symbols, interleaved in the store, in the hour 22:00
    _write(sink, lake, _trades("AAUSDT", 100, HOUR0 + np.arange(500) * 1_000_000),
           _trades("BBUSDT", 7, HOUR0 + np.arange(300) * 2_000_000))
    assert lake.export_dirty(sink, final=False) == 0  # the hour is open: nothing yet
    # the newest trade is in the next hour but not yet past the settle time
    _write(sink, lake, _trades("AAUSDT", 600, np.array([HOUR0 + HOUR_US + SETTLE_US - 1])))
    assert lake.export_dirty(sink, final=False) == 0
    _write(sink, lake, _trades("AAUSDT", 601, np.array([HOUR0 + HOUR_US + SETTLE_US])))
    assert lake.export_dirty(sink, final=False) == 2  # 22:00 of both symbols; 23:00 is open
    assert _files(lake.root) == ["trades/symbol=AAUSDT/date=2023-11-14/part-22.parquet",
                                 "trades/symbol=BBUSDT/date=2023-11-14/part-22.parquet"]
    # a trade arriving late for 22:00 (a backfill) makes the hour due again
    _write(sink, lake, _trades("BBUSDT", 307, np.array([HOUR0 + HOUR_US - 1])))
    assert lake.export_dirty(sink, final=False) == 1
    assert lake.export_dirty(sink, final=True) == 1  # the end of the run: 23:00 of AAUSDT
    sink.close()

    bb = pq.read_table(lake.root / "trades/symbol=BBUSDT/date=2023-11-14/part-22.parquet")
    assert bb.column("trade_id").to_pylist() == list(range(7, 307)) + [307]
    aa = pq.read_table(lake.root / "trades/symbol=AAUSDT/date=2023-11-14/part-23.parquet")
    assert aa.column("trade_id").to_pylist() == [600, 601]
    assert "symbol" not in aa.column_names  # a hive partition key, not a column


def test_an_unchanged_export_interval_writes_nothing(tmp_path):
    sink = DuckDBSink(tmp_path / "s.duckdb", DEFAULT_WINDOWS)
    sink.open()
    lake = ParquetLake(tmp_path / "lake", DEFAULT_WINDOWS, settle_us=SETTLE_US)
    lake.open()
    _write(sink, lake, _trades("AAUSDT", 1, HOUR0 + np.arange(10)))
    assert lake.export_dirty(sink, final=False, interval_s=3600) == 0  # not due: too soon
    assert lake.export_dirty(sink, final=True) == 1
    assert lake.export_dirty(sink, final=True) == 0  # nothing dirty any more
    assert not [p for p in lake.root.iterdir() if p.name.startswith(".export")]  # no scratch left
    sink.close()
