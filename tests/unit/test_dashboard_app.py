"""The dashboard's pages, run headless with Streamlit's ``AppTest`` against real stores.

The stores are filled by the contract replay command (``cryptostream run --source replay``)
with the real Binance recordings of 2024-08-08 23:54–24:00 (BTCUSDT, ETHUSDT), or the
malformed-input fixture for rejects and gaps. Every number a test expects is computed with
plain SQL over the same store, never by dashboard code.

The ML tables (``predictions``, ``prediction_errors``, ``anomalies``, ``ml_status``) are
written here with SQL from the stored windows (a naive and a linear forecaster, two
threshold detectors), because the pipeline's ML stage may not write them yet; a copy without
them checks the "not running" state.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

ML_TABLES = ("predictions", "prediction_errors", "anomalies", "ml_status")
BAD_JSONL = Path(__file__).resolve().parents[1] / "fixtures" / "bad" / "malformed.jsonl"

#: each window's VWAP/close predicted from the window before (naive: the same value; linear:
#: plus half the last change); the window after the last is predicted but not scored.
#: Detectors: |return_pct| > 0.05 (isolation_forest) and range_pct > 0.08 (half_space_trees).
ML_SQL = """
CREATE TABLE predictions (symbol VARCHAR, target_window_start TIMESTAMPTZ, model VARCHAR,
  target VARCHAR, predicted DOUBLE, base_window_start TIMESTAMPTZ, base_value DOUBLE,
  made_at TIMESTAMPTZ, model_version VARCHAR);
CREATE TABLE prediction_errors (symbol VARCHAR, target_window_start TIMESTAMPTZ, model VARCHAR,
  target VARCHAR, predicted DOUBLE, actual DOUBLE, error DOUBLE, abs_error DOUBLE,
  pct_error DOUBLE, direction_correct BOOLEAN, model_version VARCHAR, scored_at TIMESTAMPTZ);
CREATE TABLE anomalies (symbol VARCHAR, window_start TIMESTAMPTZ, detector VARCHAR,
  score DOUBLE, threshold DOUBLE, is_anomaly BOOLEAN, model_version VARCHAR,
  top_features VARCHAR, scored_at TIMESTAMPTZ);
CREATE TABLE ml_status (symbol VARCHAR, component VARCHAR, kind VARCHAR, state VARCHAR,
  history BIGINT, needed BIGINT, model_version VARCHAR, detail VARCHAR, updated_at TIMESTAMPTZ);
CREATE TEMP TABLE w AS SELECT symbol, window_start, vwap, close,
  lag(window_start) OVER (PARTITION BY symbol ORDER BY window_start) AS prev_start,
  lag(vwap) OVER (PARTITION BY symbol ORDER BY window_start) AS prev_vwap,
  lag(vwap, 2) OVER (PARTITION BY symbol ORDER BY window_start) AS prev2_vwap,
  lag(close) OVER (PARTITION BY symbol ORDER BY window_start) AS prev_close,
  lag(close, 2) OVER (PARTITION BY symbol ORDER BY window_start) AS prev2_close FROM agg_1m;
INSERT INTO predictions
  SELECT symbol, window_start, 'naive', t.target, t.base, prev_start, t.base,
         window_start + INTERVAL 1 MINUTE, 'v1'
  FROM w, LATERAL (VALUES ('vwap', prev_vwap), ('close', prev_close)) t(target, base)
  WHERE prev_start IS NOT NULL
  UNION ALL
  SELECT symbol, window_start, 'linear', t.target, t.base + 0.5 * (t.base - t.base2),
         prev_start, t.base, window_start + INTERVAL 1 MINUTE, 'v1'
  FROM w, LATERAL (VALUES ('vwap', prev_vwap, prev2_vwap),
                          ('close', prev_close, prev2_close)) t(target, base, base2)
  WHERE prev2_vwap IS NOT NULL;
INSERT INTO predictions
  SELECT symbol, window_start + INTERVAL 1 MINUTE, m.model, t.target,
         CASE WHEN m.model = 'naive' THEN t.v ELSE t.v + 0.5 * (t.v - t.p) END,
         window_start, t.v, window_start + INTERVAL 1 MINUTE, 'v1'
  FROM (SELECT * FROM w QUALIFY row_number() OVER (PARTITION BY symbol
                                                   ORDER BY window_start DESC) = 1),
       LATERAL (VALUES ('vwap', vwap, prev_vwap), ('close', close, prev_close)) t(target, v, p),
       (VALUES ('naive'), ('linear')) m(model);
INSERT INTO prediction_errors
  SELECT p.symbol, p.target_window_start, p.model, p.target, p.predicted,
         CASE p.target WHEN 'vwap' THEN a.vwap ELSE a.close END AS actual,
         p.predicted - actual, abs(p.predicted - actual), abs(p.predicted - actual) / actual * 100,
         sign(p.predicted - p.base_value) = sign(actual - p.base_value), 'v1', p.made_at
  FROM predictions p JOIN agg_1m a
    ON a.symbol = p.symbol AND a.window_start = p.target_window_start;
INSERT INTO anomalies
  SELECT symbol, window_start, 'isolation_forest', abs(return_pct), 0.05, abs(return_pct) > 0.05,
         'v1', '[{"feature": "return_pct", "value": ' || return_pct || '}]',
         window_start + INTERVAL 1 MINUTE FROM agg_1m
  UNION ALL
  SELECT symbol, window_start, 'half_space_trees', range_pct, 0.08, range_pct > 0.08, 'v1',
         '[{"feature": "range_pct", "value": ' || range_pct || '}]',
         window_start + INTERVAL 1 MINUTE FROM agg_1m;
INSERT INTO ml_status SELECT DISTINCT symbol, c.component, c.kind, 'ready', 7, 3, 'v1', '', now()
  FROM agg_1m, (VALUES ('naive', 'forecaster'), ('linear', 'forecaster'),
                       ('isolation_forest', 'detector'), ('half_space_trees', 'detector'))
               c(component, kind);
"""


# -- stores -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def replayed(cs, tmp_path_factory) -> Path:
    """The real BTCUSDT + ETHUSDT recordings replayed into a fresh store."""
    ws = cs.Workspace(tmp_path_factory.mktemp("dash-replay"))
    ws.replay(cs.real.btc_csv, cs.real.eth_csv)
    return ws.db


def _copy(src: Path, dst: Path, sql: str = "") -> Path:
    shutil.copy(src, dst)
    with duckdb.connect(str(dst)) as con:
        for t in ML_TABLES:  # whatever the pipeline wrote: the test decides
            con.execute(f"DROP TABLE IF EXISTS {t}")
        if sql:
            con.execute(sql)
    return dst


@pytest.fixture(scope="module")
def plain_db(replayed, tmp_path_factory) -> Path:
    """The replayed store without ML tables (the ML stage not running)."""
    return _copy(replayed, tmp_path_factory.mktemp("dash-plain") / "plain.duckdb")


@pytest.fixture(scope="module")
def ml_db(replayed, tmp_path_factory) -> Path:
    return _copy(replayed, tmp_path_factory.mktemp("dash-ml") / "ml.duckdb", ML_SQL)


def sql(db: Path, query: str, params=()) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(query, list(params)).fetchall()


# -- driving the app ----------------------------------------------------------------------------
def run_app(db: Path | None = None, postgres: str | None = None, at: AppTest | None = None,
            broker: str | None = None, **state) -> AppTest:
    if at is None:
        at = AppTest.from_string(
            "from cryptostream.dashboard.app import main\n"
            f"main(db={str(db) if db else None!r}, postgres={postgres!r}, refresh=0, "
            f"broker={broker!r}, group='dashboard-test')\n", default_timeout=60)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, tuple[str, str]]:
    """Label -> (value, delta) of the metrics after the header KPIs (a tab's own)."""
    return {m.label: (m.value, m.delta or "") for m in list(at.metric)[6 * len(kpi_symbols(at)):]}


def kpi_symbols(at: AppTest) -> list[str]:
    return [x.value.strip("*") for x in at.markdown if re.fullmatch(r"\*\*[A-Z0-9]+\*\*", x.value)]


def kpis(at: AppTest) -> dict[str, tuple[str, str]]:
    """``"SYMBOL label"`` -> (value, delta) of the header: a row of six cards per symbol."""
    syms = kpi_symbols(at)
    cards = list(at.metric)[: 6 * len(syms)]
    return {f"{syms[i // 6]} {m.label}": (m.value, m.delta or "") for i, m in enumerate(cards)}


def texts(at: AppTest) -> str:
    parts = [x.value for kind in ("markdown", "caption", "info", "warning", "success", "error")
             for x in getattr(at, kind)]
    return "\n".join(parts)


def figure(at: AppTest, index: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[index].proto.spec)


def values(v) -> list:
    """A plotly array as a list (plotly may send numbers as base64 typed arrays)."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v)


def trace(fig: dict, name: str) -> dict:
    found = [t for t in fig["data"] if t.get("name") == name]
    assert found, f"no trace {name!r} in {[t.get('name') for t in fig['data']]}"
    return found[0]


# -- header KPIs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("range_label, minutes", [("All", None), ("Last 5 minutes", 5)])
def test_header_kpis_equal_sql_over_the_range(plain_db, range_label, minutes):
    at = run_app(plain_db, range=range_label)
    start = ("(SELECT max(window_start) FROM agg_1m) + INTERVAL 1 MINUTE - INTERVAL "
             f"{minutes} MINUTE" if minutes else "TIMESTAMPTZ '1970-01-01 00:00:00+00'")
    want = sql(plain_db, f"SELECT symbol, sum(trade_count), sum(volume), count(*), "
                         f"arg_max(close, window_start), arg_min(open, window_start) FROM agg_1m "
                         f"WHERE window_start >= {start} GROUP BY symbol ORDER BY symbol")
    assert [w[0] for w in want] == ["BTCUSDT", "ETHUSDT"]
    got = kpis(at)
    assert list(got)[:6] == ["BTCUSDT last price", "BTCUSDT next VWAP", "BTCUSDT trades",
                             "BTCUSDT volume", "BTCUSDT anomaly", "BTCUSDT latency p99"]
    for sym, trades, volume, windows, close, first_open in want:
        assert got[f"{sym} trades"][0] == f"{trades:,}"
        assert got[f"{sym} trades"][1] == f"{windows} windows"
        assert got[f"{sym} volume"][0] == f"{volume:,.2f}"
        assert got[f"{sym} last price"][0] == f"{close:,.2f}"
        assert got[f"{sym} last price"][1] == f"{(close / first_open - 1) * 100:+.2f} % in range"
    total = sum(w[3] for w in want)
    assert f"{total:,} one-minute windows** in range" in texts(at)
    if minutes is None:  # the whole replay: every accepted trade is counted once
        assert sum(w[1] for w in want) == 9757 + 6106


def test_replayed_data_never_passes_for_live(plain_db):
    at = run_app(plain_db)
    status = next(x.value for x in at.markdown if x.value.startswith("**Source:**"))
    assert "replay (not live)" in status and "not live data" in status
    assert "connected" not in status
    assert kpis(at)["BTCUSDT latency p99"][1] == "not live data"


# -- tabs ------------------------------------------------------------------------------------------
def test_aggregations_tab_draws_the_stored_windows(plain_db):
    at = run_app(plain_db, range="All", agg_symbol="ETHUSDT")
    want = sql(plain_db, "SELECT open, high, low, close, vwap, buy_volume, sell_volume, "
                         "trade_count FROM agg_1m WHERE symbol = 'ETHUSDT' ORDER BY window_start")
    fig = figure(at)
    candles = trace(fig, "1-min OHLC")
    assert candles["type"] == "candlestick"
    cols = list(zip(*want, strict=True))
    for i, key in enumerate(("open", "high", "low", "close")):
        assert values(candles[key]) == pytest.approx(cols[i], rel=1e-12)
    assert values(trace(fig, "VWAP")["y"]) == pytest.approx(cols[4], rel=1e-12)
    assert values(trace(fig, "buy volume (taker)")["y"]) == pytest.approx(cols[5], rel=1e-12)
    assert values(trace(fig, "sell volume (taker)")["y"]) == pytest.approx(cols[6], rel=1e-12)
    assert values(trace(fig, "trades")["y"]) == list(cols[7])
    # the trailing 5-minute band: min/max of the sliding windows up to the last candle
    band = sql(plain_db, "SELECT low, high FROM agg_5m_1m WHERE symbol = 'ETHUSDT' AND "
                         "window_end - INTERVAL 1 MINUTE <= (SELECT max(window_start) FROM agg_1m "
                         "WHERE symbol = 'ETHUSDT') ORDER BY window_start")
    assert values(trace(fig, "5-min min–max")["y"]) == pytest.approx([b[0] for b in band])
    summary = at.dataframe[0].value.set_index("symbol")
    assert summary.loc["ETHUSDT", "trades"] == 6106 and summary.loc["BTCUSDT", "trades"] == 9757


def test_without_ml_tables_the_ml_panels_say_not_running(plain_db):
    at = run_app(plain_db)
    got = kpis(at)
    assert got["BTCUSDT next VWAP"][0] == "not running"
    assert got["ETHUSDT anomaly"][0] == "not running"
    for tab in ("ML predictions", "Anomalies"):
        at = run_app(at=at, tab=tab)
        assert "ML is not running" in texts(at)
        assert not at.get("plotly_chart")


def test_models_still_warming_up_say_so(replayed):
    """The pipeline's own ML stage on 7 windows per symbol: not enough history yet."""
    status = sql(replayed, "SELECT symbol, max(history), max(needed) FROM ml_status WHERE "
                           "kind = 'forecaster' AND state = 'warming_up' GROUP BY symbol "
                           "ORDER BY symbol")
    assert [s[0] for s in status] == ["BTCUSDT", "ETHUSDT"], "the replay wrote no ML status"
    at = run_app(replayed, tab="ML predictions", ml_symbol="ETHUSDT")
    got = kpis(at)
    for sym, history, needed in status:
        assert got[f"{sym} next VWAP"] == ("warm-up", f"{history}/{needed} windows")
        assert got[f"{sym} anomaly"][0] == "warm-up"
    assert f"the forecasters are warming up ({status[1][1]}/{status[1][2]} windows)" in texts(at)


def test_ml_tab_shows_predictions_and_skill_against_naive(ml_db):
    at = run_app(ml_db, range="All", tab="ML predictions", ml_symbol="BTCUSDT")
    want = dict(sql(ml_db, """
        SELECT e.symbol || '/' || e.model, 1 - avg(e.abs_error) / avg(b.abs_error)
        FROM prediction_errors e JOIN prediction_errors b ON b.symbol = e.symbol
         AND b.target = e.target AND b.target_window_start = e.target_window_start
         AND b.model = 'naive'
        WHERE e.target = 'vwap' GROUP BY ALL"""))
    table = at.dataframe[0].value
    got = {f"{r.symbol}/{r.model}": r.skill for r in table.itertuples()}
    assert got.keys() == want.keys()
    for k, skill in want.items():
        assert got[k] == pytest.approx(skill, abs=1e-12)
    assert got["BTCUSDT/naive"] == 0.0
    # the header: the next window's VWAP predicted by the best model, with its skill
    nxt = sql(ml_db, "SELECT predicted, base_value FROM predictions WHERE symbol = 'BTCUSDT' "
                     "AND model = 'linear' AND target = 'vwap' ORDER BY target_window_start DESC "
                     "LIMIT 1")[0]
    value, delta = kpis(at)["BTCUSDT next VWAP (linear)"]
    arrow = "▲" if nxt[0] > nxt[1] else "▼"
    assert value == f"{nxt[0]:,.2f} {arrow}"
    assert delta == (f"{(nxt[0] / nxt[1] - 1) * 100:+.3f} % · skill "
                     f"{want['BTCUSDT/linear']:+.2f}")
    fig = figure(at)  # actual vs each model, including the baseline
    assert {t["name"] for t in fig["data"]} == {"actual vwap", "naive", "linear"}
    errors = figure(at, 1)
    n_scored = sql(ml_db, "SELECT count(*) FROM prediction_errors WHERE symbol = 'BTCUSDT' "
                          "AND target = 'vwap' AND model = 'linear'")[0][0]
    assert len(values(trace(errors, "linear")["y"])) == n_scored


def test_anomalies_tab_marks_flagged_windows_and_lists_them(ml_db):
    at = run_app(ml_db, range="All", tab="Anomalies", anom_symbol="ETHUSDT")
    flagged = sql(ml_db, "SELECT detector, count(*) FROM anomalies WHERE is_anomaly AND "
                         "symbol = 'ETHUSDT' GROUP BY ALL")
    fig = figure(at)
    for det, n in flagged:
        assert len(values(trace(fig, f"anomaly: {det}")["x"])) == n
    scores = figure(at, 1)
    assert {t["name"] for t in scores["data"]} >= {"isolation_forest score",
                                                    "half_space_trees threshold"}
    recent = at.dataframe[0].value
    n_all = sql(ml_db, "SELECT count(*) FROM anomalies WHERE is_anomaly")[0][0]
    assert len(recent) == n_all
    assert recent["contributing features"].str.match(r"^(return_pct|range_pct) \([+-]").all()
    latest = sql(ml_db, "SELECT bool_or(is_anomaly) FROM anomalies WHERE symbol = 'ETHUSDT' AND "
                        "window_start = (SELECT max(window_start) FROM anomalies "
                        "WHERE symbol = 'ETHUSDT')")[0][0]
    assert kpis(at)["ETHUSDT anomaly"][0] == ("⚠ anomaly" if latest else "normal")


def test_raw_data_tab_lists_trades_and_windows_with_downloads(plain_db):
    at = run_app(plain_db, range="All", tab="Raw data")
    trades = at.dataframe[0].value
    newest = sql(plain_db, "SELECT trade_id FROM trades ORDER BY trade_time DESC, symbol DESC, "
                           "trade_id DESC LIMIT 2000")
    assert len(trades) == 2000
    assert set(trades["trade_id"]) == {r[0] for r in newest}
    assert at.get("download_button")[0].label == "Download CSV"
    at = run_app(at=at, raw_side="sell")
    assert at.dataframe[0].value["is_buyer_maker"].all()
    at = run_app(at=at, raw_table="5-min sliding windows", raw_filter="ETHUSDT")
    windows = at.dataframe[0].value
    n = sql(plain_db, "SELECT count(*) FROM agg_5m_1m WHERE symbol = 'ETHUSDT'")[0][0]
    assert len(windows) == n and set(windows["symbol"]) == {"ETHUSDT"}


def test_raw_data_rejects_and_gaps_of_malformed_input(cs, tmp_path):
    ws = cs.Workspace(tmp_path)
    ws.replay(BAD_JSONL)
    at = run_app(ws.db, range="All", tab="Raw data", raw_table="Rejects")
    want = dict(sql(ws.db, "SELECT reason, count(*) FROM rejects GROUP BY reason"))
    bars = figure(at)["data"][0]
    assert dict(zip(bars["y"], values(bars["x"]), strict=True)) == want
    assert len(at.dataframe[0].value) == sum(want.values())
    at = run_app(at=at, raw_reasons=["bad_type"])
    assert set(at.dataframe[0].value["reason"]) == {"bad_type"}
    at = run_app(at=at, raw_table="Gaps")
    gaps = sql(ws.db, "SELECT symbol, from_id, to_id FROM gaps ORDER BY from_id")
    got = at.dataframe[0].value.sort_values("from_id")
    assert [tuple(r) for r in got[["symbol", "from_id", "to_id"]].itertuples(index=False)] == gaps


def test_pipeline_health_tab_shows_the_run_counters(plain_db):
    at = run_app(plain_db, tab="Pipeline health")
    want = sql(plain_db, "SELECT sum(received), sum(accepted), sum(rejected), sum(duplicates), "
                         "sum(late) FROM pipeline_stats")[0]
    got = metrics(at)
    for name, n in zip(("received", "accepted", "rejected", "duplicates", "late"), want,
                       strict=True):
        assert got[name][0] == f"{n:,}"
    assert got["reconciled"][0] == "yes"
    assert "Not in Kafka mode" in texts(at)
    names = [t.get("name") for i in range(len(at.get("plotly_chart")))
             for t in figure(at, i)["data"]]
    assert "processed − trade time" in names  # the latency histogram
    assert {"BTCUSDT", "ETHUSDT"} <= set(names)  # throughput per symbol


# -- empty stores and refreshes ------------------------------------------------------------------
def test_missing_store_shows_how_to_start_the_pipeline(tmp_path):
    at = run_app(tmp_path / "nothing-yet.duckdb")
    info = "\n".join(x.value for x in at.info)
    assert "No data yet" in info and "does not exist yet" in info and "cryptostream run" in info
    assert not (tmp_path / "nothing-yet.duckdb").exists()  # the dashboard never creates it


def test_store_without_windows_shows_an_empty_state(tmp_path):
    from cryptostream.model import DEFAULT_WINDOWS
    from cryptostream.sinks.duckdb_sink import DuckDBSink

    sink = DuckDBSink(tmp_path / "empty.duckdb", DEFAULT_WINDOWS)
    sink.open()
    sink.close()
    at = run_app(tmp_path / "empty.duckdb")
    assert "No data yet" in "\n".join(x.value for x in at.info)
    assert "no pipeline run" in texts(at)


def test_a_refresh_reads_only_the_rows_written_since(cs, tmp_path):
    """First a replay of the first 3 000 BTCUSDT trades, then of the whole file into the same
    store (windows that did not change are not rewritten): the second refresh fetches exactly
    the windows the second replay wrote, and shows the full numbers."""
    part = tmp_path / "part.csv"
    part.write_text("".join(cs.real.btc_csv.read_text().splitlines(keepends=True)[:3000]))
    ws = cs.Workspace(tmp_path)
    cs.replay(ws.db, "off", f"BTCUSDT={part}", cwd=tmp_path)
    at = run_app(ws.db, range="All")
    assert at.session_state["last_load"].full["agg_1m"]
    high = sql(ws.db, "SELECT max(emitted_at) FROM agg_1m")[0][0]
    ws.replay(cs.real.btc_csv)
    at = run_app(at=at)
    load = at.session_state["last_load"]
    changed = sql(ws.db, "SELECT count(*) FROM agg_1m WHERE emitted_at > ?", [high])[0][0]
    total = sql(ws.db, "SELECT count(*), sum(trade_count) FROM agg_1m")[0]
    assert not load.full["agg_1m"]
    assert load.rows["agg_1m"] == changed
    assert 0 < changed < total[0]  # the windows the first replay wrote whole were not re-read
    assert kpis(at)["BTCUSDT trades"][0] == f"{total[1]:,}" == "9,757"
    assert "incremental" in texts(at)


@pytest.mark.integration
def test_postgres_store_shows_the_same_numbers(cs, tmp_path, pg_dsn):
    import psycopg

    cs.run_cli("run", "--source", "replay", "--speed", "max", "--sink", pg_dsn, "--lake", "off",
               "--replay", cs.real.btc_csv, "--replay", cs.real.eth_csv, cwd=tmp_path)
    at = run_app(postgres=pg_dsn, range="All")
    with psycopg.connect(pg_dsn) as con:
        want = con.execute("SELECT symbol, sum(trade_count)::bigint FROM agg_1m GROUP BY symbol "
                           "ORDER BY symbol").fetchall()
    assert want == [("BTCUSDT", 9757), ("ETHUSDT", 6106)]
    got = kpis(at)
    for sym, n in want:
        assert got[f"{sym} trades"][0] == f"{n:,}"
    assert "PostgreSQL 127.0.0.1:5432" in "\n".join(x.value for x in at.sidebar.caption)
    at = run_app(at=at, tab="Pipeline health")
    assert metrics(at)["accepted"][0] == "15,863"


@pytest.mark.integration
def test_consumer_lag_from_the_broker(cs, plain_db, tmp_path):
    """Kafka mode: ``ingest`` published the recording and no ``process`` consumed it yet."""
    broker = cs.start_broker()
    try:
        cs.run_cli("ingest", "--broker", broker.address, "--source", "replay", "--speed", "max",
                   "--replay", cs.real.btc_csv, cwd=tmp_path)
        want = cs.run_cli("topics", "lag", "--broker", broker.address, "--group",
                          "dashboard-test", "--format", "json", cwd=tmp_path).stdout
        total = sum(json.loads(line)["lag"] for line in want.splitlines() if line.strip())
        assert total >= 1
        at = run_app(plain_db, broker=broker.address, tab="Pipeline health")
        assert metrics(at)["total lag of group dashboard-test"][0] == f"{total:,}"
    finally:
        broker.stop()
