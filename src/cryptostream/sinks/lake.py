"""Parquet lake: accepted trades and every window table, as hive-partitioned Parquet files.

Layout (``symbol`` and ``date`` are hive partition keys, not columns in the files)::

    <lake>/trades/symbol=BTCUSDT/date=2024-08-08/part-23.parquet     # one file per UTC hour
    <lake>/agg_1m/symbol=BTCUSDT/date=2024-08-08/part-23.parquet

The lake is an export of the DuckDB store, not a second write path: after a flush, every
(table, symbol, hour) that received rows is marked dirty and later rewritten whole from
DuckDB, one query per (table, hour) for all its dirty symbols (DuckDB's partitioned Parquet
writer, streaming), into temporary files that atomically replace the previous ones. File
names depend only on the data's key, so a replay, a restart or a late correction rewrites
the same file instead of adding one: the lake holds each trade and each window exactly once,
like the store. Read it with
``read_parquet('<lake>/agg_1m/**/*.parquet', hive_partitioning = true)``.

When: window files at most every ``lake_interval_s`` (and at the end of a run); trade files
once their hour has settled, i.e. once the newest trade seen is ``settle_us`` past the hour's
end (and at the end of a run). Rewriting the open hour of trades every interval made each
export cost more than the last — a growing share of the writer's time, and of memory, over a
long run (``benchmarks/soak.py``) — so trades reach the lake hour by hour, each hour written
about once; the store has them at once.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cryptostream.model import WindowSpec
from cryptostream.processing.engine import Output

HOUR_US = 3_600_000_000
#: how far past an hour's end the newest trade must be before the hour's trade files are
#: written (beyond the allowed lateness, so that late trades are in)
DEFAULT_SETTLE_US = 60_000_000


class ParquetLake:
    """Hourly Parquet export of the DuckDB tables (see module docstring)."""

    def __init__(self, root: str | Path, windows: tuple[WindowSpec, ...],
                 settle_us: int = DEFAULT_SETTLE_US):
        self.root = Path(root)
        self.windows = windows
        self.settle_us = settle_us
        self.dirty: set[tuple[str, str, int]] = set()  # (table, symbol, hour start in µs)
        self.newest_us: int | None = None  # the newest trade time marked
        self._last_export = time.monotonic()
        self.files_written = 0

    def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def mark(self, out: Output) -> None:
        for t in out.trades:
            if len(t):
                for h in np.unique(t.trade_time_us // HOUR_US).tolist():
                    self.dirty.add(("trades", t.symbol, h * HOUR_US))
                newest = int(t.trade_time_us.max())
                self.newest_us = newest if self.newest_us is None else max(self.newest_us, newest)
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

    def _due(self, table: str, hour_us: int, final: bool) -> bool:
        if final or table != "trades":
            return True
        return self.newest_us is not None and hour_us + HOUR_US + self.settle_us <= self.newest_us

    def export_dirty(self, sink, final: bool, interval_s: float = 0.0) -> int:
        """Rewrite the dirty partitions that are due from ``sink`` (a ``DuckDBSink``);
        returns the files written."""
        if not self.dirty or (not final and time.monotonic() - self._last_export < interval_s):
            return 0
        due: dict[tuple[str, int], list[str]] = {}
        for table, symbol, hour_us in self.dirty:
            if self._due(table, hour_us, final):
                due.setdefault((table, hour_us), []).append(symbol)
        con = sink.cursor()
        written = 0
        try:
            for (table, hour_us), symbols in sorted(due.items()):
                written += self._export(con, table, hour_us, sorted(symbols))
                self.dirty -= {(table, s, hour_us) for s in symbols}
        finally:
            con.close()
        self._last_export = time.monotonic()
        self.files_written += written
        return written

    def _export(self, con, table: str, hour_us: int, symbols: list[str]) -> int:
        """One hour of ``table`` for ``symbols``: one streaming COPY into a scratch folder
        inside the lake (same file system), then each symbol's file replaces its old one."""
        ts_col, order = ("trade_time", "trade_id") if table == "trades" else \
            ("window_start", "window_start")
        start = datetime.fromtimestamp(hour_us / 1e6, UTC)
        end = datetime.fromtimestamp((hour_us + HOUR_US) / 1e6, UTC)
        scratch = self.root / f".export-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            # table and column names come from our own specs; values are parameters
            con.execute(
                f"COPY (SELECT * FROM {table} WHERE symbol IN (SELECT unnest(?::VARCHAR[])) "
                f"AND {ts_col} >= ? AND {ts_col} < ? ORDER BY symbol, {order}) "
                f"TO '{_sql_path(scratch)}' (FORMAT parquet, COMPRESSION zstd, "
                "PARTITION_BY (symbol))",
                [symbols, start, end])
            written = 0
            for symbol in symbols:
                parts = sorted((scratch / f"symbol={symbol}").glob("*.parquet"))
                path = (self.root / table / f"symbol={symbol}" / f"date={start:%Y-%m-%d}"
                        / f"part-{start:%H}.parquet")
                if not parts:  # nothing stored any more (pruned): no file
                    path.unlink(missing_ok=True)
                    continue
                if len(parts) > 1:  # pragma: no cover - one file per partition unless DuckDB splits
                    raise RuntimeError(f"lake export of {table}/{symbol} made {len(parts)} files")
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(parts[0], path)
                written += 1
            return written
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _sql_path(path: Path) -> str:
    """``path`` as a SQL string literal body (COPY TO takes no parameter for its target)."""
    return str(path).replace("'", "''")
