"""Parquet lake: accepted trades and every window table, as hive-partitioned Parquet files.

Layout (``symbol`` and ``date`` are hive partition keys, not columns in the files)::

    <lake>/trades/symbol=BTCUSDT/date=2024-08-08/part-23.parquet     # one file per UTC hour
    <lake>/agg_1m/symbol=BTCUSDT/date=2024-08-08/part-23.parquet

The lake is an export of the DuckDB store, not a second write path: after a flush, every
(table, symbol, hour) that received rows is marked dirty and, at most every
``lake_interval_s`` (and always at the end of a run), rewritten whole from DuckDB to a
temporary file that atomically replaces the previous one. File names depend only on the
data's key, so a replay, a restart or a late correction rewrites the same file instead of
adding one: the lake holds each trade and each window exactly once, like the store.
Read it with ``read_parquet('<lake>/agg_1m/**/*.parquet', hive_partitioning = true)``.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from cryptostream.model import WindowSpec
from cryptostream.processing.engine import Output

HOUR_US = 3_600_000_000


class ParquetLake:
    """Hourly Parquet export of the DuckDB tables (see module docstring)."""

    def __init__(self, root: str | Path, windows: tuple[WindowSpec, ...]):
        self.root = Path(root)
        self.windows = windows
        self.dirty: set[tuple[str, str, int]] = set()  # (table, symbol, hour start in µs)
        self._last_export = time.monotonic()
        self.files_written = 0

    def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def mark(self, out: Output) -> None:
        for t in out.trades:
            if len(t):
                for h in np.unique(t.trade_time_us // HOUR_US).tolist():
                    self.dirty.add(("trades", t.symbol, h * HOUR_US))
        for table, rows in out.windows.items():
            for r in rows:
                self.dirty.add((table, r["symbol"], (r["window_start_us"] // HOUR_US) * HOUR_US))

    def prune_trades(self, before_us: dict[str, int]) -> int:
        """Delete the trade files whose whole hour lies before ``before_us[symbol]``
        (retention; window files are kept). Returns the files deleted."""
        removed = 0
        self.dirty = {(t, sym, h) for t, sym, h in self.dirty
                      if t != "trades" or h + HOUR_US > before_us.get(sym, h + HOUR_US)}
        for sym, cutoff in before_us.items():
            for path in (self.root / "trades" / f"symbol={sym}").glob("date=*/part-*.parquet"):
                day = path.parent.name.removeprefix("date=")
                try:
                    start = datetime.strptime(f"{day} {path.stem[5:]}", "%Y-%m-%d %H")
                except ValueError:
                    continue  # not a file of ours
                hour_us = int(start.replace(tzinfo=UTC).timestamp()) * 1_000_000
                if hour_us + HOUR_US <= cutoff:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    def export_dirty(self, sink, final: bool, interval_s: float = 0.0) -> int:
        """Rewrite the dirty partitions from ``sink`` (a ``DuckDBSink``); returns files written."""
        if not self.dirty or (not final and time.monotonic() - self._last_export < interval_s):
            return 0
        con = sink.cursor()
        written = 0
        try:
            for table, symbol, hour_us in sorted(self.dirty):
                ts_col = "trade_time" if table == "trades" else "window_start"
                order = "trade_id" if table == "trades" else "window_start"
                start = datetime.fromtimestamp(hour_us / 1e6, UTC)
                end = datetime.fromtimestamp((hour_us + HOUR_US) / 1e6, UTC)
                data = con.sql(
                    f"SELECT * EXCLUDE (symbol) FROM {table} "  # table name from our own specs
                    f"WHERE symbol = ? AND {ts_col} >= ? AND {ts_col} < ? ORDER BY {order}",
                    params=[symbol, start, end],
                ).to_arrow_table()
                path = (self.root / table / f"symbol={symbol}" / f"date={start:%Y-%m-%d}"
                        / f"part-{start:%H}.parquet")
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                pq.write_table(data, tmp, compression="zstd")
                os.replace(tmp, path)
                written += 1
        finally:
            con.close()
        self.dirty.clear()
        self._last_export = time.monotonic()
        self.files_written += written
        return written
