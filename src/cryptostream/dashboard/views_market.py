"""The market tabs of the dashboard: Aggregations, ML predictions, Anomalies.

Each view gets the refresh's ``queries.Reader`` and renders one tab; tables the pipeline
has not written yet (the ML stage not running, models still warming up) get a plain
explanation instead of a chart.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from cryptostream.dashboard import charts
from cryptostream.dashboard import metrics as m
from cryptostream.dashboard.queries import Reader

WAIT_ICON = ":material/hourglass_empty:"
PLOTLY_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}
ML_NOT_RUNNING = ("**ML is not running.** This store has no `{table}` table: the pipeline's "
                  "ML stage has not written to it. Prices, windows and pipeline health are "
                  "still live in the other tabs.")


def pick_symbol(key: str, symbols: list[str]) -> str:
    """One symbol of the selection for the tab's charts."""
    if len(symbols) == 1:
        return symbols[0]
    if st.session_state.get(key) not in symbols:
        st.session_state[key] = symbols[0]
    return st.segmented_control("Symbol", symbols, key=key, required=True) or symbols[0]


def _of(df: pd.DataFrame, sym: str) -> pd.DataFrame:
    return df[df["symbol"] == sym]


def aggregations(reader: Reader, opts) -> None:
    syms = reader.symbols()
    sym = pick_symbol("agg_symbol", syms)
    agg = _of(reader.windows("agg_1m"), sym)
    band = _of(reader.windows("agg_5m_1m"), sym)
    candles, k = m.merge_candles(agg)
    note = f", drawn as {k}-minute candles (VWAP stays exact)" if k > 1 else ""
    st.caption(f"{sym}: {len(agg):,} one-minute windows (`agg_1m`){note}; band and average: "
               f"the trailing 5 minutes (`agg_5m_1m`, {len(band):,} windows); ▼ marks windows "
               "with price spikes.")
    with st.container(key="candles"):
        st.plotly_chart(charts.market_figure(candles, band, k), key="candles_chart",
                        config=PLOTLY_CONFIG)
    st.subheader("In range, per symbol")
    rows = []
    for s, g in reader.windows("agg_1m").groupby("symbol", sort=True):
        vol = g["volume"].sum()
        rows.append({"symbol": s, "windows": len(g), "trades": int(g["trade_count"].sum()),
                     "volume": vol, "VWAP": g["quote_volume"].sum() / vol if vol else None,
                     "high": g["high"].max(), "low": g["low"].min(),
                     "buy share %": 100 * g["buy_volume"].sum() / vol if vol else None,
                     "spike trades": int(g["spike_count"].sum()),
                     "missing trades": int(g["missing_trades"].sum())})
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="agg_summary")


def ml_predictions(reader: Reader, opts) -> None:
    if not reader.has("predictions"):
        st.info(ML_NOT_RUNNING.format(table="predictions"), icon=":material/psychology:")
        _ml_status(reader)
        return
    syms = reader.symbols()
    c1, c2 = st.columns([3, 1])
    with c1:
        sym = pick_symbol("ml_symbol", syms)
    with c2:
        target = st.segmented_control("Target", ["vwap", "close"], key="ml_target",
                                      default="vwap", required=True) or "vwap"
    preds = reader.predictions(sym, target)
    errors = reader.prediction_errors(sym, target)
    if preds.empty:
        state = m.ml_state(reader.ml_status(), sym, "forecaster")
        st.info(f"{sym}: no {target} predictions in range yet"
                + (f" — the forecasters are {state}." if state else "."), icon=WAIT_ICON)
    else:
        agg = _of(reader.windows("agg_1m"), sym)
        st.caption(f"{sym}: actual {target} of each 1-minute window and what each model "
                   "predicted for it one window earlier; `naive` (dotted) repeats the last value.")
        st.plotly_chart(charts.predictions_figure(agg, preds, target), key="pred_chart",
                        config=PLOTLY_CONFIG)
        if len(errors):
            st.caption("Prediction error (predicted − actual) of every scored window.")
            st.plotly_chart(charts.errors_figure(errors), key="err_chart", config=PLOTLY_CONFIG)
    st.subheader(f"Skill ({target}, scored windows in range)")
    table = m.skill_table(reader.skill(target))
    if table.empty:
        st.info("No prediction has been scored yet: a prediction is scored when its window "
                "closes.")
    else:
        shown = table.assign(direction=table["direction"] * 100).rename(columns={
            "n": "scored", "mae": "MAE", "rmse": "RMSE", "mape": "MAPE %",
            "direction": "direction hit %", "naive_mae": "naive MAE"})
        st.dataframe(shown, hide_index=True, key="skill_table", column_config={
            c: st.column_config.NumberColumn(format="%.4f")
            for c in ("MAE", "RMSE", "MAPE %", "naive MAE", "skill")})
        st.caption("skill = 1 − MAE(model) / MAE(naive) over the same windows: above 0 the "
                   "model beats repeating the last value.")
    _ml_status(reader)


def _ml_status(reader: Reader) -> None:
    """Per symbol and model: ready, failed, or how far its warm-up is."""
    status = reader.ml_status()
    if status.empty:
        return
    warming = status[status["state"] == "warming_up"]
    with st.expander("Model and detector status", expanded=len(warming) == len(status)):
        for r in warming.drop_duplicates(["symbol", "kind"]).itertuples():
            h, n = m.as_int(r.history), max(m.as_int(r.needed), 1)
            st.progress(min(h / n, 1.0), text=f"{r.symbol} {r.kind}s: warming up, {h} of {n} "
                                               "closed windows")
        st.dataframe(status, hide_index=True, key="ml_status_table")


def anomalies(reader: Reader, opts) -> None:
    if not reader.has("anomalies"):
        st.info(ML_NOT_RUNNING.format(table="anomalies"), icon=":material/troubleshoot:")
        _ml_status(reader)
        return
    sym = pick_symbol("anom_symbol", reader.symbols())
    scored = reader.anomalies(sym)
    agg = _of(reader.windows("agg_1m"), sym)
    if scored.empty:
        state = m.ml_state(reader.ml_status(), sym, "detector")
        st.info(f"{sym}: no window scored in range yet"
                + (f" — the detectors are {state}." if state else "."), icon=WAIT_ICON)
    else:
        flagged = scored[scored["is_anomaly"].fillna(False).astype(bool)]
        st.caption(f"{sym}: {flagged['window_start'].nunique()} of "
                   f"{scored['window_start'].nunique()} scored windows flagged in range.")
        st.plotly_chart(charts.anomaly_price_figure(agg, flagged), key="anom_price",
                        config=PLOTLY_CONFIG)
        st.plotly_chart(charts.scores_figure(scored), key="anom_scores", config=PLOTLY_CONFIG)
    st.subheader("Recent anomalies")
    recent = reader.recent_anomalies()
    if recent.empty:
        st.caption("No anomaly flagged in range for the selected symbols.")
    else:
        table = recent[["window_start", "symbol", "detector", "score", "threshold",
                        "top_features", "model_version"]].copy()
        table["top_features"] = table["top_features"].map(m.top_features)
        table = table.rename(columns={"top_features": "contributing features"})
        st.dataframe(table, hide_index=True, key="anom_table")
    _ml_status(reader)
