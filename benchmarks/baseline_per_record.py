"""A straightforward per-record Python implementation of CryptoStream's semantics (the baseline).

One record at a time, no numpy in the hot path: ``orjson.loads`` per JSON line, the ``csv``
module per CSV row, then per trade

* validate: required fields, price and quantity finite and > 0, symbol ``^[A-Z0-9]{2,20}$``,
  trade time within [2010, 2100);
* deduplicate: an id at or below the symbol's id high-water mark is a duplicate (the engine
  also re-admits ids that fill an open gap; the benchmark inputs have no gaps);
* late: the trade's pane (1 min) ends at or before the watermark as it stood just before the
  record (max trade time so far of the symbol - 2 s allowed lateness);
* spike flag: ``|price / previous accepted price - 1| > 2 %``;
* a dict of open windows per symbol and window family (tumbling 1 m, sliding 5 m every 1 m),
  each updated per trade (6 windows per trade): Welford mean/M2, min/max, first/last price by
  trade id, sum q, sum p*q, buy and sell sum q, spike count;
* a window is emitted once the watermark reaches its end; all open windows at end of input.

Accepted trades and window rows are collected in Python lists and bulk-loaded into DuckDB at
the end through Arrow (tables ``trades``, ``agg_1m``, ``agg_5m_1m`` with the package's schema;
latency columns NULL). The per-record part is the processing; the store is a bulk load.

It is the yardstick of ``benchmarks/bench_pipeline.py`` and an independent cross-check of the
engine (``tests/unit/test_baseline_per_record.py``). Run alone::

    python benchmarks/baseline_per_record.py --json trades.jsonl --db /tmp/baseline.duckdb
    python benchmarks/baseline_per_record.py --csv BTCUSDT=BTCUSDT-trades.csv --db /tmp/b.duckdb
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import orjson

SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,20}$")
MIN_TRADE_TIME_US = 1_262_304_000_000_000  # 2010-01-01
MAX_TRADE_TIME_US = 4_102_444_800_000_000  # 2100-01-01
US_THRESHOLD = 10**14  # a CSV time above this is in microseconds, else milliseconds
US_PER_S = 1_000_000
DEFAULT_WINDOWS = (("agg_1m", 60, 60), ("agg_5m_1m", 300, 60))
_END = 2**62
_TRUE = frozenset(("True", "true", "1"))
_FALSE = frozenset(("False", "false", "0"))


class Window:
    """Running aggregate of one window, updated one trade at a time (Welford)."""

    __slots__ = ("buy_q", "first_id", "first_price", "high", "last_id", "last_price", "low",
                 "m2", "mean", "n", "sell_q", "spikes", "sum_pq", "sum_q")

    def __init__(self) -> None:
        self.n = 0
        self.mean = self.m2 = self.sum_q = self.sum_pq = self.buy_q = self.sell_q = 0.0
        self.low, self.high = math.inf, -math.inf
        self.first_id = self.last_id = None
        self.first_price = self.last_price = 0.0
        self.spikes = 0

    def add(self, tid: int, price: float, qty: float, maker: bool, spike: bool) -> None:
        n = self.n + 1
        self.n = n
        delta = price - self.mean
        self.mean += delta / n
        self.m2 += delta * (price - self.mean)
        # plain comparisons: a min()/max() call per update would cost more than the update
        if price < self.low:  # noqa: PLR1730
            self.low = price
        if price > self.high:  # noqa: PLR1730
            self.high = price
        if self.first_id is None or tid < self.first_id:
            self.first_id, self.first_price = tid, price
        if self.last_id is None or tid > self.last_id:
            self.last_id, self.last_price = tid, price
        self.sum_q += qty
        self.sum_pq += price * qty
        if maker:  # the buyer was the maker: the taker sold
            self.sell_q += qty
        else:
            self.buy_q += qty
        if spike:
            self.spikes += 1

    def row(self, symbol: str, start_us: int, size_s: int, now_us: int) -> dict:
        """The stored columns (AGG_COLUMNS names; times as ``*_us`` integers)."""
        n, sell = self.n, self.sell_q
        return {
            "symbol": symbol,
            "window_start_us": start_us,
            "window_end_us": start_us + size_s * US_PER_S,
            "trade_count": n,
            "open": self.first_price,
            "high": self.high,
            "low": self.low,
            "close": self.last_price,
            "volume": self.sum_q,
            "quote_volume": self.sum_pq,
            "vwap": self.sum_pq / self.sum_q,
            "avg_price": self.mean,
            "price_stddev": math.sqrt(self.m2 / (n - 1)) if n >= 2 else None,
            "buy_volume": self.buy_q,
            "sell_volume": sell,
            "buy_sell_ratio": self.buy_q / sell if sell > 0 else None,
            "trade_intensity": n / size_s,
            "spike_count": self.spikes,
            "first_trade_id": self.first_id,
            "last_trade_id": self.last_id,
            "range_pct": (self.high - self.low) / self.low * 100.0,
            "return_pct": (self.last_price - self.first_price) / self.first_price * 100.0,
            "missing_trades": self.last_id - self.first_id + 1 - n,
            "complete": self.last_id - self.first_id + 1 == n,
            "emitted_at_us": now_us,
        }


class SymbolState:
    __slots__ = ("counts", "hwm", "last_price", "max_t", "next_due", "wins", "wm")

    def __init__(self, n_specs: int) -> None:
        self.hwm: int | None = None
        self.max_t = -_END
        self.wm = -_END  # watermark = max trade time so far - allowed lateness
        self.last_price: float | None = None
        self.wins: list[dict[int, Window]] = [{} for _ in range(n_specs)]
        self.next_due = _END  # earliest end of an open window
        self.counts: Counter = Counter()


class PerRecordBaseline:
    """Cleaner + windower processing one record at a time (see the module docstring)."""

    def __init__(self, windows: Iterable = DEFAULT_WINDOWS, allowed_lateness_s: float = 2.0,
                 spike_threshold: float = 0.02) -> None:
        specs = [(w.table, w.size_s, w.slide_s) if hasattr(w, "table") else tuple(w)
                 for w in windows]
        self.specs = [(t, int(size) * US_PER_S, int(slide) * US_PER_S, int(size))
                      for t, size, slide in specs]
        self.pane_us = math.gcd(*[s for _, size, slide, _ in self.specs for s in (size, slide)])
        self.lateness_us = round(allowed_lateness_s * US_PER_S)
        self.spike_threshold = spike_threshold
        self.states: dict[str, SymbolState] = {}
        self.windows: dict[str, list[dict]] = {t: [] for t, *_ in self.specs}
        self.rejects: Counter = Counter()  # (symbol, reason) -> count
        self.ignored: Counter = Counter()
        # accepted trades, column by column
        self.t_symbol: list[str] = []
        self.t_id: list[int] = []
        self.t_price: list[float] = []
        self.t_qty: list[float] = []
        self.t_time: list[int] = []
        self.t_maker: list[bool] = []
        self.t_spike: list[bool] = []
        self.t_event: list[int | None] = []
        self.t_source: list[str] = []
        self.received = 0

    # -- per trade ------------------------------------------------------------------------
    def trade(self, sym, tid: int, price: float, qty: float, t_us: int, maker: bool,
              event_us: int | None, source: str) -> None:
        """One decoded trade record: validate, dedup, late check, spike flag, windows."""
        if not (isinstance(sym, str) and SYMBOL_RE.match(sym)):
            self.rejects["", "bad_symbol"] += 1
            return
        if not (math.isfinite(price) and math.isfinite(qty)):
            self.rejects[sym, "non_finite"] += 1
            return
        if price <= 0:
            self.rejects[sym, "non_positive_price"] += 1
            return
        if qty <= 0:
            self.rejects[sym, "non_positive_qty"] += 1
            return
        if not MIN_TRADE_TIME_US <= t_us < MAX_TRADE_TIME_US:
            self.rejects[sym, "bad_type"] += 1
            return
        st = self.states.get(sym)
        if st is None:
            st = self.states[sym] = SymbolState(len(self.specs))
        if st.hwm is not None and tid <= st.hwm:
            st.counts["duplicates"] += 1
            return
        st.hwm = tid
        pane_us = self.pane_us
        if (t_us // pane_us + 1) * pane_us <= st.wm:  # the trade's pane is already final
            self.rejects[sym, "late"] += 1
            return
        if t_us > st.max_t:
            st.max_t = t_us
            st.wm = t_us - self.lateness_us
        last = st.last_price
        spike = last is not None and abs(price / last - 1.0) > self.spike_threshold
        st.last_price = price
        for k, (_, size, slide, _) in enumerate(self.specs):
            wins = st.wins[k]
            s = t_us - t_us % slide
            lowest = t_us - size
            while s > lowest:
                w = wins.get(s)
                if w is None:
                    w = wins[s] = Window()
                    st.next_due = min(st.next_due, s + size)
                w.add(tid, price, qty, maker, spike)
                s -= slide
        st.counts["accepted"] += 1
        self.t_symbol.append(sym)
        self.t_id.append(tid)
        self.t_price.append(price)
        self.t_qty.append(qty)
        self.t_time.append(t_us)
        self.t_maker.append(maker)
        self.t_spike.append(spike)
        self.t_event.append(event_us)
        self.t_source.append(source)
        if st.wm >= st.next_due:
            self._emit(sym, st, st.wm)

    def _emit(self, sym: str, st: SymbolState, wm: int) -> None:
        now_us = time.time_ns() // 1000
        due = _END
        for k, (table, size, _, size_s) in enumerate(self.specs):
            wins = st.wins[k]
            final = sorted(s for s in wins if s + size <= wm)
            rows = self.windows[table]
            for s in final:
                rows.append(wins.pop(s).row(sym, s, size_s, now_us))
            for s in wins:
                due = min(due, s + size)
        st.next_due = due

    def close(self) -> None:
        """End of input: every open window is final."""
        for sym, st in self.states.items():
            self._emit(sym, st, _END)

    # -- readers ----------------------------------------------------------------------------
    def feed_json_lines(self, lines: Iterable[bytes], source: str = "json") -> int:
        """Binance WebSocket messages (raw or combined-stream), one per line."""
        loads, trade, rejects, ignored = orjson.loads, self.trade, self.rejects, self.ignored
        n = 0
        for line in lines:
            if not line.strip():
                continue
            n += 1
            try:
                msg = loads(line)
            except orjson.JSONDecodeError:
                rejects["", "decode_error"] += 1
                continue
            if not isinstance(msg, dict):
                ignored[""] += 1
                continue
            d = msg.get("data")
            if not isinstance(d, dict):
                d = msg
            if d.get("e") != "trade":
                sym = d.get("s") or (msg.get("stream") or "").split("@", 1)[0].upper()
                ignored[sym] += 1
                continue
            try:
                sym, tid, p, q, t, m = d["s"], d["t"], d["p"], d["q"], d["T"], d["m"]
            except KeyError:
                rejects[d.get("s") or "", "missing_field"] += 1
                continue
            if sym is None or tid is None or p is None or q is None or t is None or m is None:
                rejects[sym or "", "missing_field"] += 1
                continue
            try:
                tid, price, qty, t_ms = int(tid), float(p), float(q), int(t)
            except (TypeError, ValueError):
                rejects[sym, "bad_type"] += 1
                continue
            e = d.get("E")
            trade(sym, tid, price, qty, t_ms * 1000, bool(m),
                  e * 1000 if isinstance(e, int) else None, source)
        self.received += n
        return n

    def feed_json_file(self, path: str | Path, source: str | None = None,
                       limit: int | None = None) -> int:
        with open(path, "rb") as fh:
            lines = fh if limit is None else _first(fh, limit)
            return self.feed_json_lines(lines, source or f"replay:{Path(path).name}")

    def feed_csv_file(self, path: str | Path, symbol: str, source: str | None = None,
                      limit: int | None = None) -> int:
        """An official data.binance.vision trade CSV: id,price,qty,quoteQty,time,isBuyerMaker,..."""
        source = source or f"replay:{Path(path).name}"
        trade, rejects = self.trade, self.rejects
        n = 0
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            rows = csv.reader(fh)
            for i, row in enumerate(rows if limit is None else _first(rows, limit)):
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if i == 0 and not row[0].strip().lstrip("-").isdigit():
                    continue  # a header line
                n += 1
                if len(row) < 6:
                    rejects[symbol, "missing_field"] += 1
                    continue
                try:
                    tid, price, qty, t = int(row[0]), float(row[1]), float(row[2]), int(row[4])
                except ValueError:
                    rejects[symbol, "bad_type"] += 1
                    continue
                flag = row[5].strip()
                if flag in _TRUE:
                    maker = True
                elif flag in _FALSE:
                    maker = False
                else:
                    rejects[symbol, "bad_type"] += 1
                    continue
                trade(symbol, tid, price, qty, t if t >= US_THRESHOLD else t * 1000, maker,
                      None, source)
        self.received += n
        return n

    # -- results ----------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        acc = sum(st.counts["accepted"] for st in self.states.values())
        dup = sum(st.counts["duplicates"] for st in self.states.values())
        late = sum(v for (_, r), v in self.rejects.items() if r == "late")
        return {
            "received": self.received, "accepted": acc, "duplicates": dup, "late": late,
            "rejected": sum(self.rejects.values()), "ignored": sum(self.ignored.values()),
            **{f"windows_{t}": len(rows) for t, rows in self.windows.items()},
        }

    def store(self, db_path: str | Path, threads: int | None = None) -> None:
        """Bulk-load accepted trades and windows into a DuckDB file through Arrow."""
        import duckdb
        import pyarrow as pa
        import pyarrow.compute as pc

        from cryptostream.model import AGG_COLUMNS, TRADE_COLUMNS
        from cryptostream.sinks.duckdb_sink import agg_ddl, trades_ddl

        ts = pa.timestamp("us", tz="UTC")
        arrow = {"VARCHAR": pa.string(), "TIMESTAMPTZ": ts, "BIGINT": pa.int64(),
                 "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_()}
        con = duckdb.connect(str(db_path))
        try:
            if threads:
                con.execute(f"SET threads = {int(threads)}")
            con.execute(trades_ddl())
            price = pa.array(self.t_price, pa.float64())
            qty = pa.array(self.t_qty, pa.float64())
            cols = {
                "symbol": pa.array(self.t_symbol, pa.string()),
                "trade_id": pa.array(self.t_id, pa.int64()),
                "price": price,
                "qty": qty,
                "quote_qty": pc.multiply(price, qty),
                "trade_time": pa.array(self.t_time, pa.int64()).cast(ts),
                "is_buyer_maker": pa.array(self.t_maker, pa.bool_()),
                "is_price_spike": pa.array(self.t_spike, pa.bool_()),
                "event_time": pa.array(self.t_event, pa.int64()).cast(ts),
                "source": pa.array(self.t_source, pa.string()),
            }
            n = len(self.t_id)
            trades = pa.table({name: cols[name] if name in cols else pa.nulls(n, arrow[sql])
                               for name, sql in TRADE_COLUMNS})
            con.register("batch", trades)
            con.execute("INSERT INTO trades SELECT * FROM batch")
            con.unregister("batch")
            del trades, cols, price, qty
            for table, rows in self.windows.items():
                con.execute(agg_ddl(table))
                data = {}
                for name, sql in AGG_COLUMNS:
                    key = name + "_us" if sql == "TIMESTAMPTZ" else name
                    values = [r.get(key) for r in rows]
                    data[name] = (pa.array(values, pa.int64()).cast(ts) if sql == "TIMESTAMPTZ"
                                  else pa.array(values, arrow[sql]))
                con.register("batch", pa.table(data))
                con.execute(f"INSERT INTO {table} SELECT * FROM batch")
                con.unregister("batch")
            con.execute("CHECKPOINT")
        finally:
            con.close()


def _first(iterable, n: int):
    for i, item in enumerate(iterable):
        if i >= n:
            return
        yield item


def run_baseline(json_files: list[Path] = (), csv_files: list[tuple[str, Path]] = (),
                 db: Path | None = None, limit: int | None = None,
                 threads: int | None = None) -> dict:
    """Process the files (``limit``: at most that many records per file), store, and time it."""
    b = PerRecordBaseline()
    t0 = time.perf_counter()
    for path in json_files:
        b.feed_json_file(path, limit=limit)
    for symbol, path in csv_files:
        b.feed_csv_file(path, symbol, limit=limit)
    b.close()
    t1 = time.perf_counter()
    if db is not None:
        b.store(db, threads=threads)
    t2 = time.perf_counter()
    return {**b.counters(), "process_s": t1 - t0, "store_s": t2 - t1, "seconds": t2 - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="append", default=[], type=Path,
                    help="JSON-lines file of Binance WebSocket messages (repeatable)")
    ap.add_argument("--csv", action="append", default=[], metavar="SYMBOL=PATH",
                    help="official trade CSV (repeatable)")
    ap.add_argument("--db", type=Path, help="DuckDB file to create (omit: do not store)")
    ap.add_argument("--limit", type=int, help="at most this many records per file")
    a = ap.parse_args(argv)
    csvs = [(s, Path(p)) for s, _, p in (x.partition("=") for x in a.csv)]
    if not (a.json or csvs):
        ap.error("give --json and/or --csv")
    if a.db is not None and a.db.exists():
        ap.error(f"{a.db} exists; give a fresh file")
    r = run_baseline(a.json, csvs, a.db, a.limit)
    r["trades_per_s"] = r["received"] / r["seconds"] if r["seconds"] else 0.0
    print(orjson.dumps(r, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
