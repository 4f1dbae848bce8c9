"""End to end: replay the real Binance recordings through the installed command line.

The stored aggregates are checked against an *independent* computation: DuckDB SQL run
directly over the official trade CSVs (no code of the package involved), row for row,
counts and ids exact, other numbers within 1e-9 relative. The other recordings of the same
trades (combined-stream JSON lines, raw recorder files with order-book traffic mixed in)
must give the same aggregates; replaying twice must change nothing; the Parquet lake must
hold what the store holds, exactly once.

Helpers (running the CLI, paths of the recordings) come from the ``cs`` fixture in
``tests/conftest.py``.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

US = 1_000_000
SPIKE_THRESHOLD = 0.02  # the documented default: 2 %

# -- the stored aggregate contract ---------------------------------------------------------
KEY_COLUMNS = ("symbol", "window_start_us", "window_end_us")
EXACT_COLUMNS = ("trade_count", "spike_count", "first_trade_id", "last_trade_id", "missing_trades")
FLOAT_COLUMNS = (
    "open", "high", "low", "close", "volume", "quote_volume", "vwap", "avg_price", "price_stddev",
    "buy_volume", "sell_volume", "buy_sell_ratio", "trade_intensity", "range_pct", "return_pct",
)
LATENCY_COLUMNS = (
    "latency_avg_ms", "latency_p50_ms", "latency_p99_ms", "latency_max_ms",
    "recv_latency_avg_ms", "recv_latency_p50_ms", "recv_latency_p99_ms", "recv_latency_max_ms",
)
CONTRACT_COLUMNS = (
    "symbol", "window_start", "window_end", "trade_count", "open", "high", "low", "close",
    "volume", "quote_volume", "vwap", "avg_price", "price_stddev", "buy_volume", "sell_volume",
    "buy_sell_ratio", "trade_intensity", "spike_count", "first_trade_id", "last_trade_id",
    "range_pct", "return_pct", "missing_trades", *LATENCY_COLUMNS,
)
WINDOWS = {"agg_1m": (60, 60), "agg_5m_1m": (300, 60)}  # table -> (size s, slide s)
REL = 1e-9

CSV_COLUMNS = (
    "{'id': 'BIGINT', 'price': 'DOUBLE', 'qty': 'DOUBLE', 'quote_qty': 'DOUBLE', "
    "'time': 'BIGINT', 'is_buyer_maker': 'BOOLEAN', 'is_best_match': 'BOOLEAN'}"
)


def _lit(path: Path | str) -> str:
    return "'" + str(path).replace("'", "''") + "'"


# -- the independent computation (DuckDB SQL straight over the CSV files) -------------------
def csv_trades_sql(files: list[tuple[str, Path, int]]) -> str:
    """A relation (symbol, id, price, qty, t_us, is_buyer_maker) of official trade CSVs.

    ``files``: (symbol, path, microseconds per unit of the file's time column).
    """
    return " UNION ALL ".join(
        f"SELECT '{sym}' AS symbol, id, price, qty, time * {unit} AS t_us, is_buyer_maker "
        f"FROM read_csv({_lit(path)}, header = false, delim = ',', columns = {CSV_COLUMNS})"
        for sym, path, unit in files
    )


def expected_windows(trades_sql: str, size_s: int, slide_s: int, cs) -> list[dict]:
    """Every window [start, start+size) (start a multiple of slide) holding >= 1 trade."""
    size_us, slide_us, per_trade = size_s * US, slide_s * US, size_s // slide_s
    sql = f"""
    WITH t AS (
        SELECT *, coalesce(abs(price / lag(price) OVER (PARTITION BY symbol ORDER BY id) - 1)
                           > {SPIKE_THRESHOLD}, false) AS spike
        FROM ({trades_sql})
    ), w AS (  -- each trade lies in size/slide windows: the last starts at its slide bucket
        SELECT t.*, (t_us // {slide_us}) * {slide_us} - k * {slide_us} AS ws
        FROM t CROSS JOIN range({per_trade}) AS r(k)
    ), a AS (
        SELECT symbol, ws, count(*) AS n,
               arg_min(price, id) AS open, max(price) AS high, min(price) AS low,
               arg_max(price, id) AS close, sum(qty) AS volume, sum(price * qty) AS quote_volume,
               avg(price) AS avg_price, stddev_samp(price) AS price_stddev,
               coalesce(sum(qty) FILTER (WHERE NOT is_buyer_maker), 0) AS buy_volume,
               coalesce(sum(qty) FILTER (WHERE is_buyer_maker), 0) AS sell_volume,
               count(*) FILTER (WHERE spike) AS spike_count,
               min(id) AS first_trade_id, max(id) AS last_trade_id
        FROM w GROUP BY symbol, ws
    )
    SELECT symbol, ws AS window_start_us, ws + {size_us} AS window_end_us, n AS trade_count,
           open, high, low, close, volume, quote_volume, quote_volume / volume AS vwap,
           avg_price, price_stddev, buy_volume, sell_volume,
           CASE WHEN sell_volume > 0 THEN buy_volume / sell_volume END AS buy_sell_ratio,
           n / {float(size_s)} AS trade_intensity, spike_count, first_trade_id, last_trade_id,
           (high - low) / low * 100 AS range_pct, (close - open) / open * 100 AS return_pct,
           last_trade_id - first_trade_id + 1 - n AS missing_trades
    FROM a ORDER BY symbol, ws
    """
    con = cs.memory_con()
    try:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()


def stored_windows(db: Path, table: str, cs, with_latency: bool = False) -> list[dict]:
    cols = [*EXACT_COLUMNS, *FLOAT_COLUMNS, *(LATENCY_COLUMNS if with_latency else ())]
    con = cs.connect_ro(db)
    try:
        cur = con.execute(
            f"SELECT symbol, epoch_us(window_start) AS window_start_us, "
            f"epoch_us(window_end) AS window_end_us, {', '.join(cols)} "
            f"FROM {table} ORDER BY symbol, window_start"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()


def _fmt_key(key) -> str:
    sym, ws, we = key
    f = lambda us: datetime.fromtimestamp(us / US, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{sym} [{f(ws)}, {f(we)})"


def assert_windows_equal(actual: list[dict], expected: list[dict], label: str,
                         columns=EXACT_COLUMNS + FLOAT_COLUMNS) -> None:
    """Same windows (by symbol and bounds); exact counts/ids, floats within 1e-9 relative."""
    act = {tuple(r[k] for k in KEY_COLUMNS): r for r in actual}
    exp = {tuple(r[k] for k in KEY_COLUMNS): r for r in expected}
    assert len(act) == len(actual), f"{label}: a window is stored more than once"
    missing = sorted(set(exp) - set(act))
    extra = sorted(set(act) - set(exp))
    problems = [f"missing window {_fmt_key(k)} ({exp[k]['trade_count']} trades)" for k in missing]
    problems += [f"unexpected window {_fmt_key(k)} ({act[k]['trade_count']} trades)" for k in extra]
    for key in sorted(set(exp) & set(act)):
        a, e = act[key], exp[key]
        for col in columns:
            av, ev = a[col], e[col]
            if col in EXACT_COLUMNS or col in KEY_COLUMNS:
                ok = av == ev
            elif av is None or ev is None:
                ok = av is None and ev is None
            else:
                ok = math.isclose(av, ev, rel_tol=REL, abs_tol=0.0)
            if not ok:
                problems.append(f"{_fmt_key(key)} {col}: stored {av!r}, expected {ev!r}")
    assert not problems, f"{label}: {len(problems)} difference(s):\n  " + "\n  ".join(problems[:30])


# -- lake ----------------------------------------------------------------------------------
def assert_lake_matches_store(db: Path, lake: Path, table: str, cs) -> int:
    """The lake's rows of ``table`` are the store's rows, each exactly once, in the partition
    of their UTC date. Returns the row count."""
    ts = "trade_time" if table == "trades" else "window_start"
    key = "trade_id" if table == "trades" else "window_start"
    files = sorted((lake / table).glob("**/*.parquet"))
    assert files, f"the lake holds no Parquet file for {table} under {lake / table}"
    con = cs.memory_con()
    try:
        con.execute(f"ATTACH {_lit(db)} AS s (READ_ONLY)")
        cols = ", ".join(r[0] for r in con.execute(f"DESCRIBE s.{table}").fetchall())
        con.execute(
            f"CREATE TEMP VIEW lake AS SELECT * FROM read_parquet("
            f"{_lit(lake / table / '**' / '*.parquet')}, hive_partitioning = true)"
        )
        n_store = con.execute(f"SELECT count(*) FROM s.{table}").fetchone()[0]
        n_lake, n_keys = con.execute(
            f"SELECT count(*), count(DISTINCT (symbol, {key})) FROM lake").fetchone()
        only_lake = con.execute(
            f"SELECT count(*) FROM (SELECT {cols} FROM lake EXCEPT ALL SELECT {cols} FROM s.{table})"
        ).fetchone()[0]
        only_store = con.execute(
            f"SELECT count(*) FROM (SELECT {cols} FROM s.{table} EXCEPT ALL SELECT {cols} FROM lake)"
        ).fetchone()[0]
        wrong_date = con.execute(
            f"SELECT count(*) FROM lake WHERE CAST(date AS VARCHAR) <> strftime({ts}, '%Y-%m-%d')"
        ).fetchone()[0]
    finally:
        con.close()
    assert n_store > 0, f"the store's {table} is empty"
    assert n_keys == n_lake, f"lake {table}: {n_lake - n_keys} row(s) stored more than once"
    assert (n_lake, only_lake, only_store) == (n_store, 0, 0), (
        f"lake {table} differs from the store: {n_lake} rows vs {n_store}; "
        f"{only_lake} only in the lake, {only_store} only in the store"
    )
    assert wrong_date == 0, f"lake {table}: {wrong_date} row(s) in a date partition not their own"
    return n_lake


# -- whole-store snapshots (for idempotence) -------------------------------------------------
SNAPSHOT_TABLES = ("trades", "agg_1m", "agg_5m_1m", "rejects", "gaps")


def snapshot(db: Path, cs) -> dict[str, list[tuple]]:
    """Every row of every table (timestamps as epoch microseconds), sorted."""
    con = cs.connect_ro(db)
    out = {}
    try:
        for t in SNAPSHOT_TABLES:
            cols = [
                f"epoch_us({name}) AS {name}" if "TIME ZONE" in typ else name
                for name, typ in con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {t})"
                                             ).fetchall()
            ]
            out[t] = con.execute(f"SELECT {', '.join(cols)} FROM {t} ORDER BY ALL").fetchall()
    finally:
        con.close()
    return out


def run_counts(db: Path, cs) -> list[tuple]:
    """Per run and symbol: the counters of pipeline_stats, oldest run first."""
    con = cs.connect_ro(db)
    try:
        return con.execute(
            "SELECT run_id, symbol, received, accepted, rejected, duplicates, ignored "
            "FROM pipeline_stats ORDER BY started_at, run_id, symbol").fetchall()
    finally:
        con.close()


def count_lines(path: Path) -> tuple[int, int]:
    """(non-blank lines, lines holding a trade message) of a plain or gzip recording."""
    opener = gzip.open if path.suffix == ".gz" else open
    total = trades = 0
    with opener(path, "rb") as fh:
        for line in fh:
            if line.strip():
                total += 1
                trades += b'"e":"trade"' in line
    return total, trades


def no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, (
        f"the command printed a Python traceback instead of an error message:\n{proc.stderr[-3000:]}"
    )


# -- the replays (each once per module) ----------------------------------------------------
@pytest.fixture(scope="module")
def csv_ws(cs, tmp_path_factory):
    """BTCUSDT and ETHUSDT official CSVs (one named by its file name, one with SYMBOL=)."""
    ws = cs.Workspace(tmp_path_factory.mktemp("csv"))
    ws.proc = ws.replay(cs.real.btc_csv, f"ETHUSDT={cs.real.eth_csv}")
    return ws


@pytest.fixture(scope="module")
def jsonl_ws(cs, tmp_path_factory):
    ws = cs.Workspace(tmp_path_factory.mktemp("jsonl"))
    ws.proc = ws.replay(cs.real.btc_jsonl, cs.real.eth_jsonl)
    return ws


@pytest.fixture(scope="module")
def raw_ws(cs, tmp_path_factory):
    ws = cs.Workspace(tmp_path_factory.mktemp("raw"))
    ws.proc = ws.replay(cs.real.btc_raw_gz, cs.real.eth_raw_gz)
    return ws


def _real_csv_trades(cs) -> str:
    return csv_trades_sql([("BTCUSDT", cs.real.btc_csv, 1000), ("ETHUSDT", cs.real.eth_csv, 1000)])


# -- tests: official CSVs ------------------------------------------------------------------
def test_csv_replay_stores_every_trade_exactly(csv_ws, cs):
    con = cs.memory_con()
    try:
        con.execute(f"ATTACH {_lit(csv_ws.db)} AS s (READ_ONLY)")
        con.execute(f"CREATE TEMP VIEW src AS {_real_csv_trades(cs)}")
        per_symbol = con.execute(
            "SELECT symbol, count(*), count(DISTINCT trade_id), min(trade_id), max(trade_id) "
            "FROM s.trades GROUP BY symbol ORDER BY symbol").fetchall()
        only_src = con.execute(
            "SELECT count(*) FROM (SELECT symbol, id, price, qty, t_us, is_buyer_maker FROM src "
            "EXCEPT ALL SELECT symbol, trade_id, price, qty, epoch_us(trade_time), is_buyer_maker "
            "FROM s.trades)").fetchone()[0]
        only_store = con.execute(
            "SELECT count(*) FROM (SELECT symbol, trade_id, price, qty, epoch_us(trade_time), "
            "is_buyer_maker FROM s.trades EXCEPT ALL "
            "SELECT symbol, id, price, qty, t_us, is_buyer_maker FROM src)").fetchone()[0]
        bad_quote = con.execute(
            "SELECT count(*) FROM s.trades WHERE abs(quote_qty - price * qty) > 1e-12 * price * qty"
        ).fetchone()[0]
    finally:
        con.close()
    assert per_symbol == [
        ("BTCUSDT", 9757, 9757, 3735683259, 3735693015),
        ("ETHUSDT", 6106, 6106, 1520538925, 1520545030),
    ]
    assert (only_src, only_store) == (0, 0), (
        f"{only_src} CSV trade(s) not stored as read, {only_store} stored trade(s) not in the CSV")
    assert bad_quote == 0, "quote_qty is not price x qty"


@pytest.mark.parametrize("table", list(WINDOWS))
def test_csv_aggregates_equal_independent_sql(csv_ws, cs, table):
    size_s, slide_s = WINDOWS[table]
    expected = expected_windows(_real_csv_trades(cs), size_s, slide_s, cs)
    actual = stored_windows(csv_ws.db, table, cs)
    # sanity of the independent side: 23:54:15-00:00:01 spans 7 minutes; a 5-minute window
    # sliding by 1 minute holds each trade 5 times, partial windows included
    n_windows = 7 if slide_s == size_s else 7 + 4
    assert len(expected) == 2 * n_windows
    assert sum(r["trade_count"] for r in expected) == (9757 + 6106) * (size_s // slide_s)
    assert_windows_equal(actual, expected, table)


def test_aggregate_tables_have_the_contract_columns(csv_ws, cs):
    con = cs.connect_ro(csv_ws.db)
    try:
        for table in WINDOWS:
            cols = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
            assert tuple(c for c in cols if c in CONTRACT_COLUMNS) == CONTRACT_COLUMNS, table
            types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {table})").fetchall())
            assert types["window_start"] == types["window_end"] == "TIMESTAMP WITH TIME ZONE"
            assert types["trade_count"] == "BIGINT"
    finally:
        con.close()


def test_csv_replay_stats_reconcile(csv_ws, cs):
    rows = {r["symbol"]: r for r in cs.stats_json(csv_ws.db)}
    assert set(rows) == {"BTCUSDT", "ETHUSDT"}
    for sym, n in (("BTCUSDT", 9757), ("ETHUSDT", 6106)):
        r = rows[sym]
        assert (r["received"], r["accepted"], r["rejected"], r["duplicates"], r["ignored"]) == (
            n, n, 0, 0, 0), r
        assert r["reconciled"] is True


def test_query_command_reads_the_store_in_every_format(csv_ws, cs):
    sql = "SELECT symbol, count(*) AS n FROM trades GROUP BY symbol ORDER BY symbol"
    assert cs.query_json(csv_ws.db, sql) == [
        {"symbol": "BTCUSDT", "n": 9757}, {"symbol": "ETHUSDT", "n": 6106}]
    out = cs.run_cli("query", sql, "--db", csv_ws.db, "--format", "csv", cwd=csv_ws.root).stdout
    assert list(csv.reader(io.StringIO(out))) == [["symbol", "n"], ["BTCUSDT", "9757"],
                                                  ["ETHUSDT", "6106"]]
    out = cs.run_cli("query", sql, "--db", csv_ws.db, cwd=csv_ws.root).stdout
    assert "BTCUSDT" in out and "9757" in out and "2 row(s)" in out


# -- tests: the same trades, other recordings ----------------------------------------------
@pytest.mark.parametrize("recording", ["jsonl", "raw"])
def test_websocket_recordings_give_the_csv_aggregates(request, csv_ws, cs, recording):
    ws = request.getfixturevalue(f"{recording}_ws")
    for table in WINDOWS:
        assert_windows_equal(stored_windows(ws.db, table, cs), stored_windows(csv_ws.db, table, cs),
                             f"{table} from the {recording} recording vs the CSV")
    con = cs.memory_con()
    try:
        con.execute(f"ATTACH {_lit(ws.db)} AS w (READ_ONLY)")
        con.execute(f"ATTACH {_lit(csv_ws.db)} AS c (READ_ONLY)")
        cols = "symbol, trade_id, price, qty, quote_qty, trade_time, is_buyer_maker, is_price_spike"
        diff = con.execute(
            f"SELECT (SELECT count(*) FROM (SELECT {cols} FROM w.trades EXCEPT ALL "
            f"SELECT {cols} FROM c.trades)), (SELECT count(*) FROM (SELECT {cols} FROM c.trades "
            f"EXCEPT ALL SELECT {cols} FROM w.trades))").fetchone()
    finally:
        con.close()
    assert diff == (0, 0), f"trades from the {recording} recording differ from the CSV's: {diff}"


@pytest.mark.parametrize("recording", ["jsonl", "raw"])
def test_websocket_recordings_count_and_reconcile(request, cs, recording):
    ws = request.getfixturevalue(f"{recording}_ws")
    files = ((cs.real.btc_jsonl, cs.real.eth_jsonl) if recording == "jsonl"
             else (cs.real.btc_raw_gz, cs.real.eth_raw_gz))
    lines = [count_lines(f) for f in files]
    total_lines = sum(t for t, _ in lines)
    trade_lines = sum(n for _, n in lines)
    assert trade_lines == 9757 + 6106
    rows = cs.stats_json(ws.db)
    assert rows, "stats shows no rows"
    for r in rows:
        assert r["received"] == r["accepted"] + r["rejected"] + r["duplicates"] + r["ignored"], r
        assert r["reconciled"] is True, r
    by_sym = {r["symbol"]: r for r in rows}
    assert by_sym["BTCUSDT"]["accepted"] == 9757
    assert by_sym["ETHUSDT"]["accepted"] == 6106
    assert sum(r["received"] for r in rows) == total_lines, "every line is received once"
    assert sum(r["rejected"] for r in rows) == 0, [r["rejected_by_reason"] for r in rows]
    assert sum(r["duplicates"] for r in rows) == 0
    # the raw recorder files mix bookTicker, depth and one REST snapshot in: all ignored
    assert sum(r["ignored"] for r in rows) == total_lines - trade_lines
    if recording == "raw":
        assert total_lines - trade_lines == (28040 + 3451 + 1) + (24077 + 3434 + 1)
        assert by_sym["BTCUSDT"]["ignored"] >= 28040 + 3451
        assert by_sym["ETHUSDT"]["ignored"] >= 24077 + 3434


def test_receive_latency_only_where_a_receive_time_was_recorded(csv_ws, raw_ws, cs):
    """The raw recorder stamped each line with its receive clock (~1.27 s behind the
    exchange); the official CSV has no receive time."""
    raw = stored_windows(raw_ws.db, "agg_1m", cs, with_latency=True)
    plain = stored_windows(csv_ws.db, "agg_1m", cs, with_latency=True)
    assert raw and plain
    for r in raw:
        assert r["recv_latency_avg_ms"] is not None, _fmt_key(tuple(r[k] for k in KEY_COLUMNS))
        assert -2000.0 < r["recv_latency_avg_ms"] < -500.0, r["recv_latency_avg_ms"]
        assert r["recv_latency_max_ms"] >= r["recv_latency_avg_ms"]
    for r in plain:
        assert r["recv_latency_avg_ms"] is None and r["recv_latency_max_ms"] is None


# -- tests: 2025 file with microsecond times -------------------------------------------------
def test_2025_microsecond_csv(cs, workspace):
    workspace.replay(f"BTCUSDT={cs.real.btc_2025_us_csv}")
    trades = csv_trades_sql([("BTCUSDT", cs.real.btc_2025_us_csv, 1)])
    for table, (size_s, slide_s) in WINDOWS.items():
        expected = expected_windows(trades, size_s, slide_s, cs)
        assert_windows_equal(stored_windows(workspace.db, table, cs), expected, table)
    new_year = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp()) * US
    assert [(r["window_start_us"], r["trade_count"])
            for r in stored_windows(workspace.db, "agg_1m", cs)] == [(new_year, 210)]
    assert [(r["window_start_us"], r["trade_count"])
            for r in stored_windows(workspace.db, "agg_5m_1m", cs)] == [
        (new_year - k * 60 * US, 210) for k in range(4, -1, -1)]
    rows = cs.query_json(workspace.db, "SELECT count(*) AS n, count(DISTINCT trade_time) AS t, "
                         "min(epoch_us(trade_time)) AS lo FROM trades")
    assert rows[0]["n"] == 210
    assert rows[0]["lo"] == 1735689600010866, "microsecond trade times are kept exactly"
    assert rows[0]["t"] < 210  # 46 trades share one microsecond: nothing merged or dropped


# -- tests: replay twice -------------------------------------------------------------------
@pytest.mark.parametrize("recording", ["csv", "raw"])
def test_replaying_twice_changes_nothing(request, cs, tmp_path, recording):
    first = request.getfixturevalue(f"{recording}_ws")
    ws = cs.Workspace(tmp_path / "again")
    shutil.copytree(first.root, ws.root)
    before = snapshot(ws.db, cs)
    runs_before = run_counts(ws.db, cs)
    files = ([cs.real.btc_csv, f"ETHUSDT={cs.real.eth_csv}"] if recording == "csv"
             else [cs.real.btc_raw_gz, cs.real.eth_raw_gz])
    ws.replay(*files)
    after = snapshot(ws.db, cs)
    for table in SNAPSHOT_TABLES:
        b, a = before[table], after[table]
        if b != a:
            changed = [x for x in a if x not in set(b)][:3]
            pytest.fail(f"{table} changed on the second replay: {len(b)} -> {len(a)} rows; "
                        f"new/changed rows e.g. {changed}")
    assert before["trades"] and before["agg_1m"] and before["agg_5m_1m"]
    # the second run is recorded as a run of its own, with the same counts
    runs_after = run_counts(ws.db, cs)
    first_run = [r[1:] for r in runs_before]
    second = [r[1:] for r in runs_after if r[0] not in {x[0] for x in runs_before}]
    assert sorted(second) == sorted(first_run)
    for table in ("trades", *WINDOWS):
        assert_lake_matches_store(ws.db, ws.lake, table, cs)


# -- tests: the Parquet lake ---------------------------------------------------------------
@pytest.mark.parametrize("table", ["trades", *WINDOWS])
def test_lake_holds_the_store_exactly_once(csv_ws, cs, table):
    n = assert_lake_matches_store(csv_ws.db, csv_ws.lake, table, cs)
    assert n == {"trades": 9757 + 6106, "agg_1m": 14, "agg_5m_1m": 22}[table]


# -- tests: other inputs and errors ----------------------------------------------------------
def test_cryptofeed_capture_without_trades(cs, workspace):
    proc = workspace.replay(cs.real.cryptofeed)
    no_traceback(proc)
    counts = cs.query_json(workspace.db, "SELECT (SELECT count(*) FROM trades) AS trades, "
                           "(SELECT count(*) FROM agg_1m) AS w1, (SELECT count(*) FROM agg_5m_1m) AS w5")
    assert counts == [{"trades": 0, "w1": 0, "w5": 0}]
    rows = cs.stats_json(workspace.db)
    total, trade_lines = count_lines(cs.real.cryptofeed)
    assert trade_lines == 0
    lines = cs.real.cryptofeed.read_bytes().splitlines()
    messages = sum(1 for ln in lines if re.match(rb"^\d+(\.\d+)?: \{", ln))
    assert messages == total - 1  # all but the "wss://... <-> epoch" connection header
    # every message is a valid non-trade message (aggTrade, kline, depth, bookTicker):
    # all ignored; the connection header is no message (not counted, or at most a reject)
    assert sum(r["ignored"] for r in rows) == messages, rows
    assert sum(r["received"] for r in rows) in (messages, messages + 1)
    assert sum(r["accepted"] for r in rows) == 0
    assert all(r["reconciled"] is True for r in rows), rows
    assert {"NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR"} <= {r["symbol"] for r in rows}


@pytest.mark.parametrize("case", ["missing-file", "csv-without-symbol"])
def test_bad_replay_input_fails_with_a_message(cs, workspace, case):
    if case == "missing-file":
        target = workspace.root / "nowhere" / "BTCUSDT-trades-2024-08-08.csv"
        spec, hint = str(target), target.name
    else:
        target = workspace.root / "my-trades.csv"
        shutil.copy(cs.real.btc_csv, target)
        spec, hint = str(target), "SYMBOL="
    proc = cs.run_cli(*cs.replay_args(workspace.db, workspace.lake, spec),
                      cwd=workspace.root, check=False)
    assert proc.returncode != 0, f"exit 0 for a bad --replay ({case})"
    no_traceback(proc)
    flat = re.sub(r"\s+", "", proc.stderr)
    assert "error" in proc.stderr.lower(), proc.stderr
    assert re.sub(r"\s+", "", hint) in flat, f"the message does not name {hint!r}:\n{proc.stderr}"


@pytest.mark.parametrize("sql", [
    "DROP TABLE trades",
    "INSERT INTO trades SELECT * FROM trades",
    "SELECT 1; DELETE FROM agg_1m",
])
def test_query_refuses_statements_that_write(csv_ws, cs, tmp_path, sql):
    ws = cs.Workspace(tmp_path / "copy")
    shutil.copytree(csv_ws.root, ws.root)
    proc = cs.run_cli("query", sql, "--db", ws.db, cwd=ws.root, check=False)
    assert proc.returncode != 0, f"`cryptostream query {sql!r}` was accepted:\n{proc.stdout}"
    no_traceback(proc)
    assert "read-only" in re.sub(r"\s+", " ", proc.stderr), proc.stderr
    con = cs.connect_ro(ws.db)
    try:
        after = con.execute("SELECT (SELECT count(*) FROM trades), (SELECT count(*) FROM agg_1m)"
                            ).fetchone()
    finally:
        con.close()
    assert after == (9757 + 6106, 14), "the refused statement changed the store"


# -- tests: progress and the simulator command -----------------------------------------------
def test_replay_shows_progress_with_trades_per_second(cs, workspace):
    res = cs.run_cli("run", "--source", "replay", "--speed", "max", "--db", workspace.db,
                     "--lake", "off", "--replay", cs.real.btc_raw_gz, "--progress",
                     cwd=workspace.root)
    assert res.returncode == 0, res.stderr
    assert "trades/s" in res.stderr and "100.0%" in res.stderr


def test_simulator_command_from_the_issue(cs, workspace):
    """`run --source simulate --symbols ... --duration 10m --speed 60`: ten minutes of event
    time in about ten seconds of wall time, every 1-minute window of every symbol written."""
    res = cs.run_cli("run", "--source", "simulate", "--symbols", "BTCUSDT,ETHUSDT,SOLUSDT",
                     "--duration", "10m", "--speed", "60", "--db", workspace.db,
                     "--lake", workspace.lake, cwd=workspace.root, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = cs.query_json(workspace.db, "SELECT symbol, count(*) AS n, sum(trade_count) AS trades "
                         "FROM agg_1m GROUP BY symbol ORDER BY symbol")
    assert [(r["symbol"], r["n"]) for r in rows] == [("BTCUSDT", 10), ("ETHUSDT", 10),
                                                       ("SOLUSDT", 10)]
    stats = {r["symbol"]: r for r in cs.stats_json(workspace.db)}
    for r in rows:
        assert int(r["trades"]) == stats[r["symbol"]]["accepted"] > 1000
