"""The Streamlit script of ``cryptostream dashboard``: sidebar, header KPIs, tab routing.

``streamlit run app.py -- --db PATH | --postgres DSN [--refresh S] [--broker HOST:PORT]``
(what ``cryptostream dashboard`` runs, with the DSN in ``server.DSN_ENV`` rather than on the
command line); tests call :func:`main` through ``AppTest``.
Everything below the sidebar is one Streamlit fragment that reruns every refresh interval;
only the selected tab is computed (lazy tabs), and every read goes through a
``queries.Reader`` whose cache lives in ``st.session_state`` (only new rows are fetched).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from cryptostream.dashboard import metrics as m
from cryptostream.dashboard.data import Store, StoreUnavailable, open_store
from cryptostream.dashboard.queries import DEFAULT_RANGE, RANGES, Reader, Selection
from cryptostream.errors import QueryError

TABS = ("Aggregations", "ML predictions", "Anomalies", "Raw data", "Pipeline health")
REFRESH_CHOICES = (0.0, 2.0, 5.0, 10.0, 30.0, 60.0)
LEVEL_COLORS = {"success": "green", "info": "blue", "warning": "orange", "error": "red"}
#: compact KPI cards (six per symbol in one row) and less empty space around the page
CSS = """<style>
[data-testid="stMetricValue"] { font-size: 1.4rem; }
[data-testid="stMetricLabel"] p { font-size: 0.8rem; }
[data-testid="stMetricDelta"] { font-size: 0.75rem; }
[data-testid="stMainBlockContainer"] { padding: 2.5rem 2.5rem 4rem; }
[data-testid="stMetricLabel"] *, [data-testid="stMetricDelta"] * {
  white-space: normal !important; overflow: visible !important; text-overflow: clip !important; }
</style>"""


@dataclass(frozen=True)
class Options:
    broker: str | None = None
    group: str = "cryptostream"


def main(db: str | None = None, postgres: str | None = None, refresh: float = 5.0,
         broker: str | None = None, group: str = "cryptostream") -> None:
    st.set_page_config(page_title="CryptoStream", page_icon=":material/candlestick_chart:",
                       layout="wide")
    st.html(CSS)
    store = _store(db, postgres)
    selection, interval = sidebar(store, refresh)
    opts = Options(broker, group)

    @st.fragment(run_every=interval or None)
    def live() -> None:
        body(store, selection, opts)

    live()


def _store(db: str | None, postgres: str | None) -> Store:
    key = ("store", db, postgres)
    if st.session_state.get("store_key") != key:
        old = st.session_state.get("store")
        if old is not None:
            old.close()
        st.session_state["store"] = open_store(db, postgres)
        st.session_state["store_key"] = key
        st.session_state["cache"] = {}
    return st.session_state["store"]


def sidebar(store: Store, refresh: float) -> tuple[Selection, float]:
    sb = st.sidebar
    sb.title("CryptoStream")
    sb.caption(store.describe())
    try:
        with store.session():
            options = Reader(store, {}, Selection((), None)).all_symbols()
    except (StoreUnavailable, QueryError):
        options = []
    picked = sb.multiselect(
        "Symbols", options, key="symbols", placeholder="All symbols",
        help="Empty: every symbol in the store (new ones appear by themselves).")
    label = sb.selectbox("Time range", list(RANGES), index=list(RANGES).index(DEFAULT_RANGE),
                         key="range", help="Ends with the latest stored 1-minute window.")
    choices = sorted({*REFRESH_CHOICES, float(refresh)})
    interval = sb.selectbox("Auto-refresh", choices, index=choices.index(float(refresh)),
                            key="refresh",
                            format_func=lambda s: "off" if not s else f"every {s:g} s",
                            help="Each refresh reads only the rows written since the last one.")
    sb.button("Refresh now", key="refresh_now")
    sb.caption("Times are UTC.")
    return Selection(tuple(picked), RANGES[label]), float(interval)


def body(store: Store, selection: Selection, opts: Options) -> None:
    with store.session():
        _body(store, selection, opts)


def _body(store: Store, selection: Selection, opts: Options) -> None:
    t0 = time.perf_counter()
    cache = st.session_state.setdefault("cache", {})
    reader = Reader(store, cache, selection)
    status_box = st.container(key="status-line")
    counts_box = st.container(key="window-counts")
    try:
        if reader.overview().empty:
            _status(status_box, reader)
            empty_state(store, reader, store.missing())
            return
        if not reader.symbols():
            st.warning("None of the selected symbols has windows; clear the symbol filter.")
            return
        _status(status_box, reader)
        kpis(reader)
        tabs = st.tabs(TABS, key="tab", on_change="rerun")
        for tab, name in zip(tabs, TABS, strict=True):
            if tab.open is False:
                continue
            with tab:
                VIEWS[name](reader, opts)
    except StoreUnavailable as exc:
        empty_state(store, reader, str(exc))
        return
    except QueryError as exc:
        st.warning(f"Could not read {store.describe()}: {exc}. The next refresh tries again.")
        return
    n = len(reader.windows("agg_1m"))
    latest = reader.latest()
    reader.stats.seconds = reader.elapsed()
    st.session_state["last_load"] = reader.stats  # what this refresh read (tests, debugging)
    fetched = sum(reader.stats.rows.values())
    mode = "full load" if any(reader.stats.full.values()) else "incremental"
    counts_box.caption(
        f"**{n:,} one-minute windows** in range · {len(reader.symbols())} symbol(s) · "
        f"latest window {m.fmt_time(latest)} · refreshed {pd.Timestamp.now('UTC'):%H:%M:%S} "
        f"({mode}: {fetched:,} rows in {reader.stats.queries} queries, "
        f"{(time.perf_counter() - t0) * 1000:,.0f} ms)")


def _status(box, reader: Reader) -> None:
    run = reader.latest_run()
    now = pd.Timestamp.now("UTC")
    st.session_state["history"] = m.append_history(st.session_state.get("history", []), run, now)
    status = m.source_status(run, reader.writer_running(), now)
    st.session_state["source_status"] = status
    color = LEVEL_COLORS[status.level]
    box.markdown(f"**Source:** :{color}-badge[{status.label}] {status.detail}")


def empty_state(store: Store, reader: Reader, why: str | None = None) -> None:
    st.info(
        f"**No data yet.** {why or f'{store.describe()} has no 1-minute windows yet.'}\n\n"
        "Start the pipeline, e.g. `cryptostream run` (or `make run`, which starts this "
        "dashboard beside it). The first window is written about a minute after the first "
        "trade; this page refreshes by itself.", icon=":material/hourglass_empty:")


# -- header KPIs ------------------------------------------------------------------------------
def kpis(reader: Reader) -> None:
    agg = reader.windows("agg_1m")
    preds = reader.latest_predictions()
    skill = m.skill_table(reader.skill("vwap"))
    anomalies = reader.latest_anomalies()
    status = reader.ml_status()
    offline = st.session_state.get("source_status", m.SourceStatusView("", "", "")).level == "info"
    by_symbol = dict(tuple(agg.groupby("symbol", sort=False)))
    for sym in reader.symbols():
        k = m.symbol_kpis(by_symbol.get(sym, agg.iloc[:0]))
        with st.container(key=f"kpi-{sym}"):
            head, *c = st.columns([0.55, 1, 1, 1, 1, 1, 1], vertical_alignment="center")
        head.markdown(f"**{sym}**")
        c[0].metric("last price", m.fmt_price(k.last_price),
                    None if k.change_pct is None else f"{k.change_pct:+.2f} % in range",
                    help="Close of the latest 1-minute window; change from the first "
                         "window's open in the selected range.", border=True)
        with c[1]:
            _prediction_metric(reader, sym, preds, skill, status)
        c[2].metric("trades", m.fmt_count(k.trades), f"{k.windows} windows",
                    delta_color="off", delta_arrow="off", border=True,
                    help="Σ trade_count of the 1-minute windows in range.")
        c[3].metric("volume", m.fmt_volume(k.volume),
                    None if k.buy_share_pct is None else f"taker buys {k.buy_share_pct:.0f} %",
                    delta_color="off", delta_arrow="off", border=True,
                    help="Σ volume (base asset) of the 1-minute windows in range, and the "
                         "share of it bought by takers.")
        with c[4]:
            _anomaly_metric(reader, sym, anomalies, status)
        c[5].metric("latency p99", m.fmt_ms(k.latency_p99_ms),
                    "not live data" if offline else
                    (f"receive p99 {m.fmt_ms(k.recv_latency_p99_ms)}"
                     if k.recv_latency_p99_ms is not None else None),
                    delta_color="off", delta_arrow="off", border=True,
                    help="p99 of processing time − trade time in the latest window "
                         f"(max over the range: {m.fmt_ms(k.max_latency_p99_ms)}); for replayed "
                         "or simulated data it includes the age of the recording.")


def _prediction_metric(reader, sym, preds, skill, status) -> None:
    label = "next VWAP"
    if not reader.has("predictions"):
        st.metric(label, "not running", help="This store has no predictions table: the ML "
                  "stage of the pipeline has not run.", border=True)
        return
    p = preds[(preds["symbol"] == sym) & (preds["target"] == "vwap")]
    if p.empty:
        _not_yet(label, status, sym, "forecaster")
        return
    model, sk, n = m.best_model(skill, sym)
    row = p[p["model"] == model] if model in set(p["model"]) else p[p["model"] != "naive"]
    r = (row if len(row) else p).iloc[0]
    pct = (r["predicted"] / r["base_value"] - 1) * 100 if r["base_value"] else 0.0
    arrow = "▲" if pct > 0 else "▼" if pct < 0 else "="
    st.metric(f"{label} ({r['model']})", f"{m.fmt_price(r['predicted'])} {arrow}",
              f"{pct:+.3f} % · " + (f"skill {sk:+.2f}" if sk is not None else "skill n/a"),
              delta_arrow="off", border=True,
              help=f"Predicted VWAP of the window starting {m.fmt_time(r['target_window_start'])} "
                   f"by {r['model']}, {pct:+.3f} % from the VWAP of the window before. Skill = "
                   f"1 − MAE/MAE(naive) over {n} scored windows in range (above 0: better than "
                   "repeating the last VWAP).")


def _not_yet(label: str, status: pd.DataFrame, sym: str, kind: str) -> None:
    """The card of an ML output that has nothing for ``sym`` yet: warm-up progress, failure."""
    state = m.ml_state(status, sym, kind) or ""
    progress = m.ml_progress(status, sym, kind)
    if progress is not None:
        value, delta = "warm-up", f"{progress[0]}/{progress[1]} windows"
    elif state.startswith("failed"):
        value, delta = "failed", state.removeprefix("failed: ")
    else:
        value, delta = "none yet", None
    st.metric(label, value, delta, delta_color="off", delta_arrow="off", border=True,
              help=f"The {kind}s are {state}." if state else
              f"No {kind} output for {sym} yet.")


def _anomaly_metric(reader, sym, anomalies, status) -> None:
    label = "anomaly"
    if not reader.has("anomalies"):
        st.metric(label, "not running", help="This store has no anomalies table: the anomaly "
                  "detectors of the pipeline have not run.", border=True)
        return
    a = anomalies[anomalies["symbol"] == sym]
    if a.empty:
        _not_yet(label, status, sym, "detector")
        return
    hit = a[a["is_anomaly"].fillna(False).astype(bool)]
    when = pd.Timestamp(a["window_start"].iloc[0]).strftime("%H:%M")
    st.metric(label, "⚠ anomaly" if len(hit) else "normal",
              (", ".join(hit["detector"]) if len(hit) else f"window {when}"),
              delta_color="inverse" if len(hit) else "off", delta_arrow="off", border=True,
              help="Latest scored window " + m.fmt_time(a["window_start"].iloc[0]) + ": " +
                   "; ".join(f"{r.detector} {r.score:.3f} (threshold {r.threshold:.3f})"
                             for r in a.itertuples()))


def _views():
    from cryptostream.dashboard import views_market, views_ops

    return {
        "Aggregations": views_market.aggregations,
        "ML predictions": views_market.ml_predictions,
        "Anomalies": views_market.anomalies,
        "Raw data": views_ops.raw_data,
        "Pipeline health": views_ops.pipeline_health,
    }


VIEWS = _views()


def _args(argv: list[str]) -> argparse.Namespace:
    from cryptostream.dashboard.server import DSN_ENV

    p = argparse.ArgumentParser(prog="cryptostream dashboard app")
    p.add_argument("--db")
    p.add_argument("--postgres", default=os.environ.get(DSN_ENV) or None)
    p.add_argument("--refresh", type=float, default=5.0)
    p.add_argument("--broker")
    p.add_argument("--group", default="cryptostream")
    return p.parse_args(argv)


if __name__ == "__main__":
    a = _args(sys.argv[1:])
    main(a.db, a.postgres, a.refresh, a.broker, a.group)
