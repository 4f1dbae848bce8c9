"""The dashboard's questions to the store, asked at most once per refresh.

A :class:`Reader` lives for one refresh: it knows the selection (symbols, range), reads
each answer once (memoised), and keeps the growing tables (windows, ML tables, latest
trades and rejects) in the session cache so that the next refresh fetches only new rows
(see ``data.load_incremental``). Tables that are not in the store (ML tables before the
ML stage runs, ``agg_5m_1m`` with other window settings) answer with empty frames of the
right columns; ``has(table)`` tells the views which case they are in.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from dataclasses import dataclass

import pandas as pd

from cryptostream.dashboard import data
from cryptostream.dashboard.data import LoadStats, Store
from cryptostream.model import (
    AGG_COLUMNS,
    ANOMALY_COLUMNS,
    ML_STATUS_COLUMNS,
    PREDICTION_COLUMNS,
    PREDICTION_ERROR_COLUMNS,
    TRADE_COLUMNS,
)

#: sidebar time ranges: label -> seconds (None: everything stored)
RANGES: dict[str, int | None] = {
    "Last 5 minutes": 300,
    "Last 15 minutes": 900,
    "Last hour": 3600,
    "Last 6 hours": 6 * 3600,
    "Last 24 hours": 86400,
    "Last 7 days": 7 * 86400,
    "All": None,
}
DEFAULT_RANGE = "Last 6 hours"
MINUTE = pd.Timedelta(minutes=1)
STATS_COLUMNS = (
    "run_id", "symbol", "source", "received", "accepted", "rejected", "duplicates", "ignored",
    "late", "gaps", "gap_trades", "gaps_open", "rejected_by_reason", "watermark",
    "max_trade_time", "recv_skew_ms", "started_at", "updated_at", "source_state",
    "source_attempt", "reconnects", "last_message_at", "exchange_clock_skew_ms",
    "backfill_pending", "backfilled_trades", "source_detail",
)


def empty(columns) -> pd.DataFrame:
    return pd.DataFrame(columns=[c if isinstance(c, str) else c[0] for c in columns])


def range_start(latest: pd.Timestamp | None, range_s: int | None) -> pd.Timestamp | None:
    """First window start shown: the range ends with the latest stored 1-minute window
    (so a replay of old data shows its last hour, like a live run shows the last hour).

    >>> range_start(pd.Timestamp("2024-08-09 00:00", tz="UTC"), 300)
    Timestamp('2024-08-08 23:56:00+0000', tz='UTC')
    """
    if latest is None or range_s is None:
        return None
    return latest + MINUTE - pd.Timedelta(seconds=range_s)


@dataclass
class Selection:
    symbols: tuple[str, ...]  # empty: every symbol in the store
    range_s: int | None


class Reader:
    """Answers for one refresh (see module docstring)."""

    def __init__(self, store: Store, cache: MutableMapping, selection: Selection):
        self.store, self.cache, self.selection = store, cache, selection
        self.stats = LoadStats()
        self._memo: dict[str, object] = {}
        self._t0 = time.perf_counter()
        # several writers (Kafka replicas on PostgreSQL) may commit out of order
        self.overlap_s = 5.0 if store.kind == "postgres" else 0.0
        identity = store.identity()
        if cache.get("store_identity") != identity:  # a new file at the same path
            for k in [k for k in cache if str(k).startswith(("table:", "latest:"))]:
                del cache[k]
            cache["store_identity"] = identity

    def _once(self, name: str, fn):
        if name not in self._memo:
            self._memo[name] = fn()
        return self._memo[name]

    def _q(self, sql: str, params=()) -> pd.DataFrame:
        self.stats.queries += 1
        return self.store.query(sql, params)

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    # -- what is there --------------------------------------------------------------------
    def tables(self) -> set[str]:
        return self._once("tables", self.store.tables)

    def has(self, table: str) -> bool:
        return table in self.tables()

    def writer_running(self) -> bool | None:
        return self._once("writer", self.store.writer_running)

    def overview(self) -> pd.DataFrame:
        """Per symbol: stored 1-minute windows, first and latest window start."""
        if not self.has("agg_1m"):
            return empty(("symbol", "windows", "first", "latest"))
        return self._once("overview", lambda: self._q(
            "SELECT symbol, count(*) AS windows, min(window_start) AS first, "
            "max(window_start) AS latest FROM agg_1m GROUP BY symbol ORDER BY symbol"))

    def all_symbols(self) -> list[str]:
        return list(self.overview()["symbol"])

    def symbols(self) -> list[str]:
        """The selected symbols that have windows (every symbol when none is selected)."""
        have = self.all_symbols()
        chosen = [s for s in self.selection.symbols if s in have]
        return chosen or ([] if self.selection.symbols and not chosen else have)

    def latest(self) -> pd.Timestamp | None:
        ov = self.overview()
        ov = ov[ov["symbol"].isin(self.symbols())]
        return None if ov.empty else ov["latest"].max()

    def start(self) -> pd.Timestamp | None:
        return range_start(self.latest(), self.selection.range_s)

    # -- windows ---------------------------------------------------------------------------
    def windows(self, table: str = "agg_1m") -> pd.DataFrame:
        spec = {"agg_1m": data.AGG_1M, "agg_5m_1m": data.AGG_5M}[table]
        if not self.has(table) or not self.symbols():
            return empty(AGG_COLUMNS)
        return self._once(f"windows:{table}", lambda: data.load_incremental(
            self.store, self.cache, spec, self.symbols(), self.start(), self.stats,
            self.overlap_s))

    # -- pipeline state ---------------------------------------------------------------------
    def latest_run(self) -> pd.DataFrame:
        """``pipeline_stats`` rows (one per symbol) of the most recently started run."""
        if not self.has("pipeline_stats"):
            return empty(STATS_COLUMNS)
        return self._once("latest_run", lambda: self._q(
            "SELECT * FROM pipeline_stats WHERE run_id = (SELECT run_id FROM pipeline_stats "
            "ORDER BY started_at DESC, updated_at DESC LIMIT 1) ORDER BY symbol"))

    def runs(self, limit: int = 20) -> pd.DataFrame:
        if not self.has("pipeline_stats"):
            return empty(("run_id", "source", "source_state", "started_at", "updated_at"))
        return self._once("runs", lambda: self._q(
            "SELECT run_id, min(source) AS source, min(source_state) AS source_state, "
            "min(started_at) AS started_at, max(updated_at) AS updated_at, "
            "count(*) AS symbols, sum(received) AS received, sum(accepted) AS accepted, "
            "sum(rejected) AS rejected, sum(duplicates) AS duplicates, sum(late) AS late, "
            "max(reconnects) AS reconnects FROM pipeline_stats GROUP BY run_id "
            "ORDER BY min(started_at) DESC LIMIT ?", [limit]))

    def checkpoints(self) -> pd.DataFrame:
        if not self.has("consumer_checkpoints"):
            return empty(("group_id", "topic", "partition", "next_offset", "updated_at"))
        return self._once("checkpoints", lambda: self._q(
            'SELECT group_id, topic, "partition", next_offset, updated_at '
            'FROM consumer_checkpoints ORDER BY group_id, topic, "partition"'))

    # -- ML -------------------------------------------------------------------------------
    def ml_status(self) -> pd.DataFrame:
        if not self.has("ml_status") or not self.symbols():
            return empty(ML_STATUS_COLUMNS)
        return self._once("ml_status", lambda: self._q(
            "SELECT * FROM ml_status WHERE symbol = ANY(?) ORDER BY symbol, kind, component",
            [self.symbols()]))

    def latest_predictions(self) -> pd.DataFrame:
        """Each symbol's predictions for its latest predicted window (every model, target)."""
        if not self.has("predictions") or not self.symbols():
            return empty(PREDICTION_COLUMNS)
        return self._once("latest_predictions", lambda: self._q(
            "WITH m AS (SELECT symbol, max(target_window_start) AS t FROM predictions "
            "WHERE symbol = ANY(?) GROUP BY symbol) SELECT p.* FROM predictions p "
            "JOIN m ON p.symbol = m.symbol AND p.target_window_start = m.t "
            "ORDER BY p.symbol, p.model, p.target", [self.symbols()]))

    def skill(self, target: str = "vwap") -> pd.DataFrame:
        """Per symbol and model, over the scored predictions in range: count, MAE, RMSE,
        mean % error, direction hits, and the naive baseline's MAE over the same targets."""
        cols = ("symbol", "model", "n", "mae", "rmse", "mape", "direction", "naive_mae")
        if not self.has("prediction_errors") or not self.symbols():
            return empty(cols)
        start = self.start()

        def ask() -> pd.DataFrame:
            params: list = [target, self.symbols()]
            cond = ""
            if start is not None:
                cond = " AND e.target_window_start >= CAST(? AS TIMESTAMPTZ)"
                params.append(data.iso(start))
            return self._q(
                "SELECT e.symbol, e.model, count(*) AS n, avg(e.abs_error) AS mae, "
                "sqrt(avg(e.error * e.error)) AS rmse, avg(e.pct_error) AS mape, "
                "avg(CASE WHEN e.direction_correct THEN 1.0 ELSE 0.0 END) AS direction, "
                "avg(b.abs_error) AS naive_mae FROM prediction_errors e "
                "LEFT JOIN prediction_errors b ON b.symbol = e.symbol AND b.target = e.target "
                "AND b.target_window_start = e.target_window_start AND b.model = 'naive' "
                "WHERE e.target = ? AND e.symbol = ANY(?)" + cond +
                " GROUP BY e.symbol, e.model ORDER BY e.symbol, e.model", params)

        return self._once(f"skill:{target}", ask)

    def predictions(self, symbol: str, target: str) -> pd.DataFrame:
        if not self.has("predictions"):
            return empty(PREDICTION_COLUMNS)
        return self._once(f"pred:{symbol}:{target}", lambda: data.load_incremental(
            self.store, self.cache, data.PREDICTIONS, [symbol], self.start(), self.stats,
            self.overlap_s, {"target": target}))

    def prediction_errors(self, symbol: str, target: str) -> pd.DataFrame:
        if not self.has("prediction_errors"):
            return empty(PREDICTION_ERROR_COLUMNS)
        return self._once(f"err:{symbol}:{target}", lambda: data.load_incremental(
            self.store, self.cache, data.PREDICTION_ERRORS, [symbol], self.start(), self.stats,
            self.overlap_s, {"target": target}))

    def anomalies(self, symbol: str) -> pd.DataFrame:
        if not self.has("anomalies"):
            return empty(ANOMALY_COLUMNS)
        return self._once(f"anom:{symbol}", lambda: data.load_incremental(
            self.store, self.cache, data.ANOMALIES, [symbol], self.start(), self.stats,
            self.overlap_s))

    def latest_anomalies(self) -> pd.DataFrame:
        """Each symbol's detector results for its latest scored window."""
        if not self.has("anomalies") or not self.symbols():
            return empty(ANOMALY_COLUMNS)
        return self._once("latest_anomalies", lambda: self._q(
            "WITH m AS (SELECT symbol, max(window_start) AS t FROM anomalies "
            "WHERE symbol = ANY(?) GROUP BY symbol) SELECT a.* FROM anomalies a "
            "JOIN m ON a.symbol = m.symbol AND a.window_start = m.t "
            "ORDER BY a.symbol, a.detector", [self.symbols()]))

    def recent_anomalies(self, limit: int = 200) -> pd.DataFrame:
        if not self.has("anomalies") or not self.symbols():
            return empty(ANOMALY_COLUMNS)
        start = self.start()
        params: list = [self.symbols()]
        cond = ""
        if start is not None:
            cond = " AND window_start >= CAST(? AS TIMESTAMPTZ)"
            params.append(data.iso(start))
        return self._once("recent_anomalies", lambda: self._q(
            "SELECT * FROM anomalies WHERE is_anomaly AND symbol = ANY(?)" + cond +
            " ORDER BY window_start DESC, symbol, detector LIMIT ?", [*params, limit]))

    # -- raw rows ---------------------------------------------------------------------------
    def trades(self, limit: int = 2000) -> pd.DataFrame:
        """The latest ``limit`` trades (by trade time) of the selected symbols."""
        if not self.has("trades") or not self.symbols():
            return empty(TRADE_COLUMNS)
        return self._once("trades", lambda: self._latest_rows(data.TRADES, limit, self.symbols()))

    def rejects(self, limit: int = 2000) -> pd.DataFrame:
        """The latest ``limit`` rejects: of the selected symbols and those with no usable symbol."""
        if not self.has("rejects"):
            return empty(data.REJECTS.columns)
        return self._once("rejects", lambda: self._latest_rows(
            data.REJECTS, limit, [*self.symbols(), ""], null_symbol=True))

    def reject_counts(self) -> pd.DataFrame:
        if not self.has("rejects"):
            return empty(("reason", "symbol", "rejects"))
        return self._once("reject_counts", lambda: self._q(
            "SELECT reason, coalesce(symbol, '') AS symbol, count(*) AS rejects FROM rejects "
            "WHERE symbol = ANY(?) OR symbol IS NULL OR symbol = '' GROUP BY reason, "
            "coalesce(symbol, '') ORDER BY rejects DESC, reason", [self.symbols()]))

    def gaps(self, limit: int = 1000) -> pd.DataFrame:
        if not self.has("gaps") or not self.symbols():
            return empty(("symbol", "from_id", "to_id", "count", "filled", "after_trade_time",
                          "detected_at"))
        return self._once("gaps", lambda: self._q(
            'SELECT symbol, from_id, to_id, "count", filled, after_trade_time, detected_at '
            "FROM gaps WHERE symbol = ANY(?) ORDER BY detected_at DESC, symbol, from_id "
            "LIMIT ?", [self.symbols(), limit]))

    def _latest_rows(self, spec: data.TableSpec, limit: int, symbols: list[str],
                     null_symbol: bool = False) -> pd.DataFrame:
        """Latest rows by ``spec.time``; after the first read only rows whose change column
        reached the highest value seen are fetched, then merged."""
        slot = f"latest:{spec.name}"
        cached: data.Cached | None = self.cache.get(slot)
        syms = tuple(symbols)
        reuse = cached is not None and cached.symbols == syms and cached.high is not None
        cond = "(symbol = ANY(?)" + (" OR symbol IS NULL)" if null_symbol else ")")
        params: list = [list(syms)]
        if reuse:
            cond += " AND " + data.changed_since(spec.changed, self.overlap_s)
            params.append(data.iso(cached.high - pd.Timedelta(seconds=self.overlap_s)))
        order = ", ".join(f"{c} DESC" for c in spec.key)  # the same order as the merge below
        new = self._q(f"{data._select(spec)} WHERE {cond} ORDER BY {spec.time} DESC NULLS LAST, "
                      f"{order} LIMIT ?", [*params, limit])
        self.stats.note(spec.name, len(new), not reuse)
        if reuse and len(cached.df) and len(new):
            df = pd.concat([cached.df, new], ignore_index=True).drop_duplicates(
                list(spec.key), keep="last")
        elif reuse and not len(new):
            df = cached.df
        else:
            df = new
        df = df.sort_values([spec.time, *spec.key], ascending=False, na_position="last",
                            ignore_index=True).head(limit)
        high = df[spec.changed].max() if len(df) else None
        self.cache[slot] = data.Cached(syms, None, df,
                                       None if high is None or pd.isna(high) else high)
        return df
