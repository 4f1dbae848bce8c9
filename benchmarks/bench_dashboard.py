"""Dashboard refresh time on a week of 1-minute windows for 10 symbols.

Builds a DuckDB store with the pipeline's own schema and ~100 k rows in each of ``agg_1m``
and ``agg_5m_1m`` (SQL, seeded random walks ending now), then measures, for the time range
"Last 7 days" and every symbol:

* the **data layer** (``dashboard.queries.Reader``: what the header KPIs and the
  Aggregations tab read): the first load, an incremental refresh after a writer appended one
  window per symbol to both tables, and the naive baseline (a full reload at each refresh);
* the **whole Streamlit script** (``AppTest``: reads, KPIs, the candlestick figure merged to
  15-minute candles, the per-symbol table), first render and refresh — the server side of
  what a browser refresh costs;

each in the two ways the dashboard reads DuckDB: through a writing pipeline's query endpoint
(a ``QueryServer`` on the writer's connection, in this process) and directly from the file
when no pipeline runs; with ``--postgres DSN`` (an empty database) also from PostgreSQL.
Medians of ``--refreshes`` runs (after one warm-up); nothing is asserted.

    .venv/bin/python benchmarks/bench_dashboard.py [--refreshes 10] [--symbols 10] [--days 7]
        [--postgres postgresql://postgres@127.0.0.1:5432/bench_dash]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_machine import commit_id, cpu_model, log

from cryptostream.dashboard import metrics
from cryptostream.dashboard.data import DuckDBStore, PostgresStore, Store
from cryptostream.dashboard.queries import Reader, Selection
from cryptostream.model import DEFAULT_WINDOWS
from cryptostream.query import QueryServer
from cryptostream.sinks.duckdb_sink import DuckDBSink

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT",
           "TRXUSDT", "LINKUSDT", "DOTUSDT", "LTCUSDT", "AVAXUSDT")

#: one row per (symbol, minute): a random walk per symbol, OHLC around it, latencies
FILL_SQL = """
CREATE TEMP TABLE w AS
SELECT symbol, ws, p0 * exp(sum((r1 - 0.5) * 0.002) OVER (PARTITION BY symbol ORDER BY ws)) AS c,
       r2, r3, r4 FROM m;
CREATE TEMP TABLE one AS
SELECT symbol, ws AS window_start, ws + INTERVAL 1 MINUTE AS window_end,
       (50 + r2 * 950)::BIGINT AS trade_count,
       coalesce(lag(c) OVER (PARTITION BY symbol ORDER BY ws), c) AS open,
       c * (1 + r3 * 0.001) AS high, c * (1 - r4 * 0.001) AS low, c AS close,
       r2 * 40 + 1 AS volume, r3, r4 FROM w;
INSERT INTO agg_1m
SELECT symbol, window_start, window_end, trade_count, open, greatest(high, open), least(low, open),
       close, volume, volume * (open + close) / 2, (open + close) / 2, (open + close) / 2,
       close * 0.0002, volume * r3, volume * (1 - r3), r3 / (1 - r3 + 1e-9), trade_count / 60.0,
       (r4 > 0.995)::BIGINT, 0, trade_count - 1, (high - low) / low * 100,
       (close - open) / open * 100, 0, 20 + r3 * 10, 15 + r3 * 5, 60 + r4 * 40, 120 + r4 * 50,
       NULL, NULL, NULL, NULL, window_end + INTERVAL 2 SECOND, TRUE FROM one;
INSERT INTO agg_5m_1m
SELECT symbol, window_start, window_start + INTERVAL 5 MINUTE,
       sum(trade_count) OVER f, open, max(high) OVER f, min(low) OVER f,
       last_value(close) OVER f, sum(volume) OVER f, sum(quote_volume) OVER f,
       sum(quote_volume) OVER f / sum(volume) OVER f, avg(avg_price) OVER f, price_stddev,
       sum(buy_volume) OVER f, sum(sell_volume) OVER f, NULL, sum(trade_count) OVER f / 300.0,
       sum(spike_count) OVER f, first_trade_id, last_trade_id, range_pct, return_pct, 0,
       latency_avg_ms, latency_p50_ms, latency_p99_ms, latency_max_ms, NULL, NULL, NULL, NULL,
       window_start + INTERVAL 302 SECOND, TRUE FROM agg_1m
WINDOW f AS (PARTITION BY symbol ORDER BY window_start ROWS BETWEEN CURRENT ROW AND 4 FOLLOWING);
-- sliding windows still open at the end (they end after the last minute) are not written yet
DELETE FROM agg_5m_1m WHERE window_end > (SELECT max(window_end) FROM agg_1m);
INSERT INTO pipeline_stats (run_id, symbol, source, received, accepted, rejected, duplicates,
    ignored, late, gaps, gap_trades, rejected_by_reason, started_at, updated_at, source_state)
SELECT 'bench', symbol, 'binance', sum(trade_count), sum(trade_count), 0, 0, 0, 0, 0, 0, '{}',
       min(window_start), max(emitted_at), 'connected' FROM agg_1m GROUP BY symbol;
"""
MINUTES_SQL = """
CREATE TEMP TABLE m AS
SELECT s.symbol, s.p0, t.ws, random() AS r1, random() AS r2, random() AS r3, random() AS r4
FROM (SELECT symbol, 100.0 * row_number() OVER () AS p0 FROM (SELECT unnest(?) AS symbol)) s,
     (SELECT unnest(generate_series(CAST(? AS TIMESTAMPTZ), CAST(? AS TIMESTAMPTZ),
                                    INTERVAL 1 MINUTE)) AS ws) t
"""

#: the writer between refreshes: one more minute per symbol in both tables
APPEND_SQL = """
INSERT INTO agg_1m SELECT symbol, window_start + INTERVAL 1 MINUTE, window_end + INTERVAL 1 MINUTE,
  trade_count, open, high, low, close, volume, quote_volume, vwap, avg_price, price_stddev,
  buy_volume, sell_volume, buy_sell_ratio, trade_intensity, spike_count, first_trade_id,
  last_trade_id, range_pct, return_pct, missing_trades, latency_avg_ms, latency_p50_ms,
  latency_p99_ms, latency_max_ms, recv_latency_avg_ms, recv_latency_p50_ms, recv_latency_p99_ms,
  recv_latency_max_ms, now(), complete
FROM agg_1m WHERE window_start = (SELECT max(window_start) FROM agg_1m);
INSERT INTO agg_5m_1m SELECT symbol, window_start + INTERVAL 1 MINUTE,
  window_end + INTERVAL 1 MINUTE,
  trade_count, open, high, low, close, volume, quote_volume, vwap, avg_price, price_stddev,
  buy_volume, sell_volume, buy_sell_ratio, trade_intensity, spike_count, first_trade_id,
  last_trade_id, range_pct, return_pct, missing_trades, latency_avg_ms, latency_p50_ms,
  latency_p99_ms, latency_max_ms, recv_latency_avg_ms, recv_latency_p50_ms, recv_latency_p99_ms,
  recv_latency_max_ms, now(), complete
FROM agg_5m_1m WHERE window_start = (SELECT max(window_start) FROM agg_5m_1m);
UPDATE pipeline_stats SET updated_at = now(), received = received + 100, accepted = accepted + 100;
"""


def build(path: Path, symbols: tuple[str, ...], days: int) -> tuple[int, int]:
    sink = DuckDBSink(path, DEFAULT_WINDOWS)
    sink.open()  # the pipeline's own tables
    sink.close()
    end = (time.time() // 60 - 2) * 60
    start = end - days * 86400 + 60
    with duckdb.connect(str(path)) as con:
        con.execute("SET TimeZone = 'UTC'")
        iso = lambda s: time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(s))
        con.execute("SELECT setseed(0.42)")
        con.execute(MINUTES_SQL, [list(symbols), iso(start), iso(end)])
        con.execute(FILL_SQL)
        con.execute("CHECKPOINT")
        return (con.execute("SELECT count(*) FROM agg_1m").fetchone()[0],
                con.execute("SELECT count(*) FROM agg_5m_1m").fetchone()[0])


PG_APPEND_SQL = """
INSERT INTO agg_1m SELECT symbol, window_start + INTERVAL '1 minute',
  window_end + INTERVAL '1 minute',
  trade_count, open, high, low, close, volume, quote_volume, vwap, avg_price, price_stddev,
  buy_volume, sell_volume, buy_sell_ratio, trade_intensity, spike_count, first_trade_id,
  last_trade_id, range_pct, return_pct, missing_trades, latency_avg_ms, latency_p50_ms,
  latency_p99_ms, latency_max_ms, recv_latency_avg_ms, recv_latency_p50_ms, recv_latency_p99_ms,
  recv_latency_max_ms, now(), complete
FROM agg_1m WHERE window_start = (SELECT max(window_start) FROM agg_1m);
INSERT INTO agg_5m_1m SELECT symbol, window_start + INTERVAL '1 minute',
  window_end + INTERVAL '1 minute',
  trade_count, open, high, low, close, volume, quote_volume, vwap, avg_price, price_stddev,
  buy_volume, sell_volume, buy_sell_ratio, trade_intensity, spike_count, first_trade_id,
  last_trade_id, range_pct, return_pct, missing_trades, latency_avg_ms, latency_p50_ms,
  latency_p99_ms, latency_max_ms, recv_latency_avg_ms, recv_latency_p50_ms, recv_latency_p99_ms,
  recv_latency_max_ms, now(), complete
FROM agg_5m_1m WHERE window_start = (SELECT max(window_start) FROM agg_5m_1m);
UPDATE pipeline_stats SET updated_at = now(), received = received + 100, accepted = accepted + 100;
"""


def copy_to_postgres(path: Path, dsn: str) -> None:
    """The generated store's tables into an empty PostgreSQL database (the pipeline's schema)."""
    import psycopg

    from cryptostream.sinks.postgres_schema import migrate

    with (psycopg.connect(dsn, autocommit=True) as pg,
          duckdb.connect(str(path), read_only=True) as dk):
        migrate(pg, DEFAULT_WINDOWS)
        dk.execute("SET TimeZone = 'UTC'")
        for table in ("agg_1m", "agg_5m_1m", "pipeline_stats"):
            pg.execute(f"TRUNCATE {table}")
            rel = dk.execute(f"SELECT * FROM {table}")
            cols = [d[0] for d in rel.description]
            with pg.cursor() as cur, cur.copy(
                    f"COPY {table} ({', '.join(cols)}) FROM STDIN") as cp:
                while rows := rel.fetchmany(10_000):
                    for row in rows:
                        cp.write_row(row)
        pg.execute("ANALYZE")


def app_reads(store: Store, cache: dict) -> int:
    """What the header KPIs and the Aggregations tab read, and the KPIs computed from it;
    returns the rows fetched."""
    with store.session():
        r = Reader(store, cache, Selection((), 7 * 86400))
        agg = r.windows("agg_1m")
        r.windows("agg_5m_1m")
        r.latest_run()
        r.latest_predictions()
        r.latest_anomalies()
        for _sym, g in agg.groupby("symbol", sort=False):
            metrics.symbol_kpis(g)
        return sum(r.stats.rows.values())


class Writer:
    """Appends a minute between refreshes: through the serving connection (DuckDB with a
    pipeline), by opening the file for writing (DuckDB, no pipeline), or in PostgreSQL."""

    def __init__(self, mode: str, path: Path, dsn: str | None = None):
        self.mode, self.path = mode, path
        self.con = self.server = None
        if mode == "live":
            self.con = duckdb.connect(str(path))
            self.server = QueryServer(self, path)
            self.server.start()
        elif mode == "postgres":
            import psycopg

            self.con = psycopg.connect(dsn, autocommit=True)

    def cursor(self):  # what QueryServer needs from a sink
        return self.con.cursor()

    def append(self) -> None:
        if self.mode == "live":
            self.con.execute(APPEND_SQL)
        elif self.mode == "postgres":
            for stmt in filter(str.strip, PG_APPEND_SQL.split(";")):
                self.con.execute(stmt)
        else:
            with duckdb.connect(str(self.path)) as con:
                con.execute(APPEND_SQL)

    def close(self) -> None:
        if self.server:
            self.server.stop()
        if self.con:
            self.con.close()


MODES = {"live": "DuckDB, pipeline endpoint", "file": "DuckDB file, no pipeline",
         "postgres": "PostgreSQL"}


def median_ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:,.0f} ms"


def measure(mode: str, path: Path, refreshes: int, dsn: str | None = None) -> dict[str, str]:
    from streamlit.testing.v1 import AppTest

    writer = Writer(mode, path, dsn)
    store = PostgresStore(dsn) if mode == "postgres" else DuckDBStore(path)
    try:
        cache: dict = {}
        t0 = time.perf_counter()
        first_rows = app_reads(store, cache)
        first = time.perf_counter() - t0
        inc, naive, inc_rows = [], [], []
        app_reads(store, {})  # warm-up
        for _ in range(refreshes):
            writer.append()
            t0 = time.perf_counter()
            inc_rows.append(app_reads(store, cache))
            inc.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            app_reads(store, {})  # the baseline: everything again
            naive.append(time.perf_counter() - t0)
        target = f"postgres={dsn!r}" if mode == "postgres" else f"db={str(path)!r}"
        at = AppTest.from_string(
            f"from cryptostream.dashboard.app import main\nmain({target}, refresh=0)\n",
            default_timeout=300)
        at.session_state["range"] = "Last 7 days"
        t0 = time.perf_counter()
        at.run()
        app_first = time.perf_counter() - t0
        if at.exception:
            raise RuntimeError(at.exception[0].value)
        app_refresh = []
        for _ in range(refreshes):
            writer.append()
            t0 = time.perf_counter()
            at.run()
            app_refresh.append(time.perf_counter() - t0)
        load = at.session_state["last_load"]
        return {
            "store": MODES[mode],
            "first load": f"{first * 1000:,.0f} ms ({first_rows:,} rows)",
            "incremental refresh": f"{median_ms(inc)} ({statistics.median(inc_rows):,.0f} rows)",
            "full reload (baseline)": median_ms(naive),
            "app first render": f"{app_first * 1000:,.0f} ms",
            "app refresh": f"{median_ms(app_refresh)} (max {max(app_refresh) * 1000:,.0f} ms; "
                           f"{sum(load.rows.values())} rows, {load.queries} queries)",
        }
    finally:
        store.close()
        writer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=10)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--refreshes", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--postgres", metavar="DSN",
                    help="also measure PostgreSQL: an EMPTY database the benchmark may fill")
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="cs-bench-dash-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for mode in ("live", "file", *(("postgres",) if a.postgres else ())):
        path = work / f"dash-{mode}.duckdb"
        for f in work.glob(path.name + "*"):
            f.unlink()
        t0 = time.perf_counter()
        n1, n5 = build(path, SYMBOLS[: a.symbols], a.days)
        if mode == "postgres":
            copy_to_postgres(path, a.postgres)
        log(f"built {MODES[mode]}: agg_1m {n1:,} rows, agg_5m_1m {n5:,} rows in "
            f"{time.perf_counter() - t0:.1f} s")
        rows.append(measure(mode, path, a.refreshes, a.postgres))
        log(f"measured {MODES[mode]}")
    print(f"\nDashboard refresh, {a.symbols} symbols x {a.days} days of 1-minute windows "
          f"(agg_1m {n1:,} rows, agg_5m_1m {n5:,} rows), range 'Last 7 days', median of "
          f"{a.refreshes}; commit {commit_id()}, {cpu_model()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(r[c] for c in cols) + " |")


if __name__ == "__main__":
    main()
