"""DuckDB sink: the store of record (trades, window tables, rejects, gaps, stats, ML tables).

DuckDB allows a single writer process. While the pipeline runs it owns the file and serves
read-only queries to other processes through ``cryptostream.query`` (see there); when no
pipeline runs, readers open the file read-only themselves.

Idempotence (see ``sinks.base``): aggregates and the small tables use primary keys and
``INSERT ... ON CONFLICT DO UPDATE``; an aggregate row is only rewritten when its data
changed, so replaying the same input twice leaves the tables identical (latency columns
included). ``trades`` has no index (an ART index on every trade would cost hundreds of MB):
rows are inserted with an anti-join against the stored rows of the same symbol and id range,
which DuckDB's min/max zone maps make cheap for time-ordered data; a batch whose ids lie
outside everything stored before the run (the usual case) is inserted directly.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cryptostream.errors import SinkError
from cryptostream.model import AGG_COLUMNS, ML_TABLES, TRADE_COLUMNS, WindowSpec
from cryptostream.processing.engine import Output
from cryptostream.sinks.base import (
    Checkpoint,
    gaps_table,
    id_ranges,
    ml_tables,
    reference_table,
    rejects_table,
    stats_table,
    trades_table,
    windows_table,
)

#: ML tables written in time order per symbol, by the time column of their key
_NEVER = -(1 << 62)  # before any time
FRESH_ML = {"anomalies": "window_start", "predictions": "target_window_start",
            "prediction_errors": "target_window_start"}

_AGG_DATA_COLUMNS = (
    "trade_count", "first_trade_id", "last_trade_id", "volume", "quote_volume", "high", "low",
    "open", "close", "buy_volume", "spike_count", "price_stddev",
)

REJECTS_DDL = """
CREATE TABLE IF NOT EXISTS rejects (
    source VARCHAR NOT NULL, source_offset BIGINT NOT NULL, symbol VARCHAR, reason VARCHAR NOT NULL,
    detail VARCHAR, raw VARCHAR, trade_id BIGINT, trade_time TIMESTAMPTZ, recv_time TIMESTAMPTZ,
    rejected_at TIMESTAMPTZ, PRIMARY KEY (source, source_offset))
"""
GAPS_DDL = """
CREATE TABLE IF NOT EXISTS gaps (
    symbol VARCHAR NOT NULL, from_id BIGINT NOT NULL, to_id BIGINT NOT NULL, count BIGINT,
    filled BIGINT, after_trade_time TIMESTAMPTZ, detected_at TIMESTAMPTZ,
    PRIMARY KEY (symbol, from_id))
"""
STATS_DDL = """
CREATE TABLE IF NOT EXISTS pipeline_stats (
    run_id VARCHAR NOT NULL, symbol VARCHAR NOT NULL, source VARCHAR, received BIGINT,
    accepted BIGINT, rejected BIGINT, duplicates BIGINT, ignored BIGINT, late BIGINT,
    gaps BIGINT, gap_trades BIGINT, rejected_by_reason VARCHAR, watermark TIMESTAMPTZ,
    max_trade_time TIMESTAMPTZ, recv_skew_ms DOUBLE, started_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ, PRIMARY KEY (run_id, symbol))
"""
REFERENCE_DDL = """
CREATE TABLE IF NOT EXISTS reference_prices (
    asset VARCHAR NOT NULL, symbol VARCHAR NOT NULL, price_usd DOUBLE, volume_24h DOUBLE,
    change_24h DOUBLE, last_updated_at TIMESTAMPTZ NOT NULL, received_at TIMESTAMPTZ,
    PRIMARY KEY (asset, symbol, last_updated_at))
"""
CHECKPOINTS_DDL = """
CREATE TABLE IF NOT EXISTS consumer_checkpoints (
    group_id VARCHAR NOT NULL, topic VARCHAR NOT NULL, "partition" INTEGER NOT NULL,
    next_offset BIGINT NOT NULL, state BLOB, updated_at TIMESTAMPTZ,
    PRIMARY KEY (group_id, topic, "partition"))
"""
#: columns added to pipeline_stats after its first release (added to older stores on open)
STATS_ADDED = (
    ("gaps_open", "BIGINT"), ("source_state", "VARCHAR"), ("source_attempt", "BIGINT"), ("reconnects", "BIGINT"),
    ("last_message_at", "TIMESTAMPTZ"), ("exchange_clock_skew_ms", "DOUBLE"),
    ("backfill_pending", "BIGINT"), ("backfilled_trades", "BIGINT"), ("source_detail", "VARCHAR"),
)


LOCK_WAIT_S = 3.0  # how long open() retries a file held by a reader


def agg_ddl(table: str) -> str:
    cols = ", ".join(f"{n} {t}" for n, t in AGG_COLUMNS)
    return f"CREATE TABLE IF NOT EXISTS {table} ({cols}, PRIMARY KEY (symbol, window_start))"


def trades_ddl() -> str:
    return "CREATE TABLE IF NOT EXISTS trades (" + ", ".join(f"{n} {t}" for n, t in TRADE_COLUMNS) + ")"


def ml_ddl(table: str) -> str:
    columns, key = ML_TABLES[table]
    cols = ", ".join(f"{n} {t}" for n, t in columns)
    return f"CREATE TABLE IF NOT EXISTS {table} ({cols}, PRIMARY KEY ({', '.join(key)}))"


def _upsert_sql(table: str, columns: list[str], key: tuple[str, ...], change: tuple[str, ...] | None) -> str:
    sets = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    where = ""
    if change:
        where = " WHERE " + " OR ".join(f"{table}.{c} IS DISTINCT FROM excluded.{c}" for c in change)
    return (
        f"INSERT INTO {table} SELECT * FROM batch ON CONFLICT ({', '.join(key)}) "
        f"DO UPDATE SET {sets}{where}"
    )


def _update_sql(table: str, columns: list[str], key: tuple[str, ...]) -> str:
    sets = ", ".join(f"{c} = batch.{c}" for c in columns if c not in key)
    match = " AND ".join(f"{table}.{c} = batch.{c}" for c in key)
    return f"UPDATE {table} SET {sets} FROM batch WHERE {match}"


def _count(cursor: duckdb.DuckDBPyConnection) -> int | None:
    """Rows changed by the INSERT/UPDATE/DELETE just run on ``cursor``."""
    row = cursor.fetchone()
    return None if row is None else row[0]


#: a partition's checkpoint is stored once, then updated (an UPDATE costs a third of the
#: upsert: ~1.2 vs ~3.3 ms per write, measured); same parameters in a different order
CHECKPOINT_UPDATE = (
    'UPDATE consumer_checkpoints SET next_offset = ?, state = ?, updated_at = make_timestamptz(?) '
    'WHERE group_id = ? AND topic = ? AND "partition" = ?')
CHECKPOINT_UPSERT = (
    'INSERT INTO consumer_checkpoints VALUES (?, ?, ?, ?, ?, make_timestamptz(?)) '
    'ON CONFLICT (group_id, topic, "partition") DO UPDATE SET '
    "next_offset = excluded.next_offset, state = excluded.state, updated_at = excluded.updated_at")


class DuckDBSink:
    """Writes processor output to one DuckDB file (see module docstring)."""

    def __init__(self, path: str | Path, windows: tuple[WindowSpec, ...], threads: int | None = None,
                 memory_mb: int | None = None):
        self.path = Path(path)
        self.windows = windows
        self.threads = threads
        #: DuckDB's buffer pool cap; unset, DuckDB takes 80 % of RAM and a long run keeps
        #: every page it wrote cached (RSS grows with the store: measured in soak.py)
        self.memory_mb = memory_mb
        self.con: duckdb.DuckDBPyConnection | None = None
        self.lock = threading.Lock()  # one writer at a time on this connection
        self._agg_sql = {
            w.table: _upsert_sql(w.table, [c for c, _ in AGG_COLUMNS], ("symbol", "window_start"),
                                 _AGG_DATA_COLUMNS)
            for w in windows
        }
        self._ml_sql = {t: _upsert_sql(t, [c for c, _ in cols], key, None)
                        for t, (cols, key) in ML_TABLES.items()}
        #: keyed tables whose rows usually come once, in time order per symbol: a row later
        #: than everything stored for its symbol cannot exist yet, so it is inserted plainly
        #: (an upsert cost 2-3 x as much here: ~16 vs ~6 ms for a few window rows)
        self._fresh_by = {w.table: "window_start" for w in windows} | FRESH_ML
        self._newest: dict[str, dict[str, int]] = {}  # table -> symbol -> newest µs (open())
        # the stats are written by one worker on a connection of its own (see ``write``)
        self._stats_pool: ThreadPoolExecutor | None = None
        self._stats_con: duckdb.DuckDBPyConnection | None = None
        self._stats_job: Future | None = None

    def open(self) -> None:
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # a reader (dashboard, `cryptostream query`) opens an idle store read-only for a
        # fraction of a second: wait that out before calling the store taken
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                self.con = duckdb.connect(str(self.path))
                break
            except duckdb.IOException as exc:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise SinkError(
                    f"cannot open {self.path} for writing: {exc}. Another pipeline probably owns it; "
                    "stop it or pass a different --db (readers use `cryptostream query`)."
                ) from exc
        if self.threads:
            self.con.execute(f"SET threads = {int(self.threads)}")
        if self.memory_mb:
            self.con.execute(f"SET memory_limit = '{int(self.memory_mb)}MB'")
        self.con.execute(trades_ddl())
        for w in self.windows:
            self.con.execute(agg_ddl(w.table))
            # columns added to the window contract after its first release
            self.con.execute(f"ALTER TABLE {w.table} ADD COLUMN IF NOT EXISTS complete BOOLEAN")
        for ddl in (REJECTS_DDL, GAPS_DDL, STATS_DDL, REFERENCE_DDL, CHECKPOINTS_DDL):
            self.con.execute(ddl)
        for table in ML_TABLES:
            self.con.execute(ml_ddl(table))
        for col, typ in STATS_ADDED:
            self.con.execute(f"ALTER TABLE pipeline_stats ADD COLUMN IF NOT EXISTS {col} {typ}")
        # the first write would pay for pyarrow's first conversion from NumPy (it imports
        # pandas: ~0.4 s here) and DuckDB's first Arrow scan: pay them before a live source
        # connects, not with its first trades
        self._run("SELECT count(*) FROM batch", pa.table({"warm_up": np.zeros(1, np.int64)}))
        self._newest = {
            table: dict(self.con.execute(
                f"SELECT symbol, epoch_us(max({col})) FROM {table} GROUP BY symbol").fetchall())
            for table, col in self._fresh_by.items()
        }
        # id ranges stored before this run: a batch wholly outside its symbol's range cannot
        # repeat a stored trade (the processor dedups within a run), so it skips the anti-join
        self._stored_ids = {
            sym: (lo, hi) for sym, lo, hi in self.con.execute(
                "SELECT symbol, min(trade_id), max(trade_id) FROM trades GROUP BY symbol"
            ).fetchall()
        }

    def write(self, output: Output, stats: list[dict], now_us: int = 0,
              checkpoints: list[Checkpoint] = ()) -> None:
        """One transaction: the output and (Kafka ``process``, live resume) the checkpoints
        that go with it. The stats follow in a transaction of their own on a second
        connection, once this one has committed, so that the trades written meanwhile do not
        wait for them (a stats write costs several trade writes: ~17 vs ~6 ms here, measured
        in bench_live_latency); a failed stats write fails the next call."""
        con = self.con
        if con is None:
            raise SinkError("DuckDBSink.write before open()")
        trades = trades_table(output)
        rejects = rejects_table(output, now_us)
        gaps = gaps_table(output)
        stat = stats_table(stats)
        ref = reference_table(output)
        ml = ml_tables(output)
        if (trades is not None or rejects is not None or gaps is not None or ref is not None
                or ml or checkpoints or any(output.windows.values())):  # else: stats only
            self._write_output(output, trades, rejects, gaps, ref, ml, checkpoints, now_us)
        if stat is not None:
            self._wait_stats()
            if self._stats_pool is None:
                self._stats_pool = ThreadPoolExecutor(1, thread_name_prefix="duckdb-stats")
                self._stats_con = con.cursor()
            self._stats_job = self._stats_pool.submit(self._write_stats, stat)

    def _write_output(self, output: Output, trades, rejects, gaps, ref, ml,
                      checkpoints: list[Checkpoint], now_us: int) -> None:
        con = self.con
        assert con is not None
        newest: list[tuple[str, dict[str, int]]] = []  # applied once committed
        with self.lock:
            con.execute("BEGIN")
            try:
                if trades is not None:
                    self._insert_trades(trades, id_ranges(output))
                for table, rows in output.windows.items():
                    if rows:
                        newest.append(self._upsert(table, self._agg_sql[table],
                                                   windows_table(rows)))
                if rejects is not None:
                    self._run("INSERT INTO rejects SELECT * FROM batch "
                              "ON CONFLICT (source, source_offset) DO NOTHING", rejects)
                if gaps is not None:
                    self._run("INSERT INTO gaps SELECT * FROM batch ON CONFLICT (symbol, from_id) "
                              "DO UPDATE SET filled = excluded.filled", gaps)
                if ref is not None:  # a poll repeating an unchanged tick is not stored twice
                    self._run("INSERT INTO reference_prices SELECT * FROM batch "
                              "ON CONFLICT (asset, symbol, last_updated_at) DO NOTHING", ref)
                for table, batch in ml:
                    if table in self._fresh_by:
                        newest.append(self._upsert(table, self._ml_sql[table], batch))
                    else:
                        self._run(self._ml_sql[table], batch)
                for cp in checkpoints:
                    args = [cp.next_offset, cp.state, now_us, cp.group, cp.topic, cp.partition]
                    if _count(con.execute(CHECKPOINT_UPDATE, args)) != 1:
                        con.execute(CHECKPOINT_UPSERT, args[3:] + args[:3])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            for table, times in newest:
                seen = self._newest.setdefault(table, {})
                for sym, t in times.items():
                    seen[sym] = max(t, seen.get(sym, t))

    def _write_stats(self, stats: pa.Table) -> None:
        con = self._stats_con
        assert con is not None
        con.execute("BEGIN")
        try:
            self._update_or_upsert(stats, con)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _wait_stats(self) -> None:
        """Wait for the stats write in flight; its error is raised here."""
        job, self._stats_job = self._stats_job, None
        if job is not None:
            job.result()

    def _run(self, sql: str, table: pa.Table, params: list | None = None,
             con: duckdb.DuckDBPyConnection | None = None) -> int | None:
        """Execute ``sql`` with ``table`` visible as the relation ``batch``; returns the
        count of rows an INSERT/UPDATE/DELETE changed.

        ``batch`` is found by DuckDB's replacement scan of this frame's locals: registering
        and unregistering a view per statement cost more than a small insert itself
        (~1 ms per statement here, measured for bench_live_latency)."""
        con = con or self.con
        assert con is not None
        batch = table  # noqa: F841 - read by the SQL through DuckDB's replacement scan
        return _count(con.execute(sql, params))

    def _update_or_upsert(self, stats: pa.Table, con: duckdb.DuckDBPyConnection) -> None:
        """Store one row per (run_id, symbol) of ``stats``: an UPDATE of the rows already
        there (every write after a run's first), an upsert when some are new. An UPDATE of a
        few rows costs less than half the upsert here (~4 vs ~9 ms per write, measured)."""
        updated = self._run(_update_sql("pipeline_stats", stats.column_names,
                                        ("run_id", "symbol")), stats, con=con)
        if updated != stats.num_rows:
            self._run(_upsert_sql("pipeline_stats", stats.column_names,
                                  ("run_id", "symbol"), None), stats, con=con)

    def _upsert(self, table: str, upsert_sql: str, rows: pa.Table) -> tuple[str, dict[str, int]]:
        """Upsert ``rows`` into ``table``; the rows newer than everything stored for their
        symbol go in with a plain INSERT. Returns (table, newest time per symbol written)."""
        col = self._fresh_by[table]
        syms = rows.column("symbol").to_pylist()
        times = rows.column(col).cast(pa.int64()).to_pylist()
        seen = self._newest.get(table, {})
        fresh, newest = [], {}
        for s, t in zip(syms, times):
            fresh.append(t is not None and t > seen.get(s, _NEVER))
            if t is not None and t > newest.get(s, _NEVER):
                newest[s] = t
        if all(fresh):
            self._run(f"INSERT INTO {table} SELECT * FROM batch", rows)
        elif not any(fresh):
            self._run(upsert_sql, rows)
        else:
            mask = pa.array(fresh, pa.bool_())
            self._run(f"INSERT INTO {table} SELECT * FROM batch", rows.filter(mask))
            self._run(upsert_sql, rows.filter(pc.invert(mask)))
        return table, newest

    def _insert_trades(self, trades: pa.Table, ranges: dict[str, tuple[int, int]]) -> None:
        """Insert ``trades`` (id ``ranges`` per symbol) skipping the rows already stored."""
        stale = []
        for sym, (lo, hi) in ranges.items():
            stored = self._stored_ids.get(sym)
            if not (stored is None or hi < stored[0] or lo > stored[1]):
                stale.append(sym)
        if not stale:  # the usual case: nothing in this batch can have been stored before
            self._run("INSERT INTO trades SELECT * FROM batch", trades)
            return
        symbols = trades.column("symbol")
        fresh = [s for s in ranges if s not in stale]
        if fresh:
            self._run("INSERT INTO trades SELECT * FROM batch",
                      trades.filter(pc.is_in(symbols, pa.array(fresh, pa.string()))))
        for sym in stale:
            lo, hi = ranges[sym]
            self._run(
                "INSERT INTO trades SELECT b.* FROM batch b ANTI JOIN "
                "(SELECT trade_id FROM trades WHERE symbol = ? AND trade_id BETWEEN ? AND ?) t "
                "USING (trade_id)",
                trades.filter(pc.equal(symbols, sym)),
                [sym, lo, hi],
            )

    def prune_trades(self, before_us: dict[str, int]) -> int:
        """Delete each symbol's trades older than ``before_us[symbol]`` (retention); the
        window tables keep everything. Returns the rows deleted."""
        if self.con is None:
            raise SinkError("DuckDBSink.prune_trades before open()")
        deleted = 0
        with self.lock:
            for sym, cutoff in before_us.items():
                row = self.con.execute(
                    "DELETE FROM trades WHERE symbol = ? AND trade_time < make_timestamptz(?)",
                    [sym, cutoff]).fetchone()
                deleted += row[0] if row else 0
        return deleted

    def load_checkpoint(self, group: str, topic: str, partition: int) -> Checkpoint | None:
        if self.con is None:
            raise SinkError("DuckDBSink.load_checkpoint before open()")
        with self.lock:
            row = self.con.execute(
                'SELECT next_offset, state FROM consumer_checkpoints '
                'WHERE group_id = ? AND topic = ? AND "partition" = ?',
                [group, topic, partition]).fetchone()
        return None if row is None else Checkpoint(group, topic, partition, row[0], row[1])

    def flush(self) -> None:
        self._wait_stats()
        if self.con is not None:
            with self.lock:
                self.con.execute("CHECKPOINT")

    def close(self) -> None:
        """Wait for the stats write in flight, checkpoint and close; the first error of
        those is raised once everything is closed."""
        try:
            self._wait_stats()
        finally:
            self._close_stats()
            if self.con is not None:
                with self.lock:
                    try:
                        self.con.execute("CHECKPOINT")
                    finally:
                        self.con.close()
                        self.con = None

    def _close_stats(self) -> None:
        if self._stats_pool is not None:
            self._stats_pool.shutdown(wait=True)
            self._stats_pool = None
        if self._stats_con is not None:
            self._stats_con.close()
            self._stats_con = None

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A separate connection to the same database, for concurrent readers."""
        if self.con is None:
            raise SinkError("DuckDBSink.cursor before open()")
        return self.con.cursor()
