"""The dashboard's plotly figures, built from frames the views already hold.

Every function takes the rows of one symbol (or the counts to draw) and returns a
``plotly.graph_objects.Figure``; nothing here reads the store or knows about Streamlit.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

UP, DOWN = "#26a69a", "#ef5350"
VWAP, BAND, AVG = "#1f77b4", "rgba(255,165,0,0.18)", "#ff8c00"
MODEL_COLORS = {"naive": "#7f7f7f", "linear": "#1f77b4", "online_linear": "#2ca02c",
                "lstm": "#9467bd"}
DETECTOR_SYMBOLS = {"isolation_forest": "x", "half_space_trees": "diamond"}
_LAYOUT = {"margin": {"l": 10, "r": 10, "t": 30, "b": 10}, "hovermode": "x unified",
           "modebar_orientation": "v",
           "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.01, "xanchor": "left",
                      "x": 0}}


def market_figure(candles: pd.DataFrame, band: pd.DataFrame, minutes: int = 1) -> go.Figure:
    """Candles with VWAP, spike markers and the trailing 5-minute band and average; buy/sell
    volume bars; trade counts. ``band``: ``agg_5m_1m`` rows of the symbol, drawn at the
    start of each window's last minute (so the band at a candle covers it and the 4 before)."""
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.03,
                        row_heights=[0.62, 0.23, 0.15])
    x = candles["window_start"]
    if len(band) and len(candles):
        # trailing windows past the last candle hold only its data: not drawn
        band = band[band["window_end"] - pd.Timedelta(minutes=1) <= x.max()]
        bx = band["window_end"] - pd.Timedelta(minutes=1)
        lo, hi, avg = band["low"], band["high"], band["avg_price"]
        if minutes > 1:  # merge the band like the candles
            g = band.assign(bx=bx.dt.floor(f"{minutes}min")).groupby("bx", sort=True)
            b = g.agg(low=("low", "min"), high=("high", "max"), avg=("avg_price", "mean"))
            bx, lo, hi, avg = b.index.to_series(), b["low"], b["high"], b["avg"]
        fig.add_trace(go.Scatter(x=bx, y=hi, mode="lines", line={"width": 0},
                                 hoverinfo="skip", showlegend=False, name="5-min high"), 1, 1)
        fig.add_trace(go.Scatter(x=bx, y=lo, mode="lines", line={"width": 0}, fill="tonexty",
                                 fillcolor=BAND, name="5-min min–max"), 1, 1)
        fig.add_trace(go.Scatter(x=bx, y=avg, mode="lines",
                                 line={"color": AVG, "width": 1, "dash": "dash"},
                                 name="5-min average"), 1, 1)
    fig.add_trace(go.Candlestick(
        x=x, open=candles["open"], high=candles["high"], low=candles["low"],
        close=candles["close"], name=f"{minutes}-min OHLC", increasing_line_color=UP,
        decreasing_line_color=DOWN), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=candles["vwap"], mode="lines",
                             line={"color": VWAP, "width": 1.5}, name="VWAP"), 1, 1)
    spikes = candles[candles["spike_count"] > 0]
    if len(spikes):
        fig.add_trace(go.Scatter(
            x=spikes["window_start"], y=spikes["high"], mode="markers", name="price spikes",
            marker={"symbol": "triangle-down", "size": 11, "color": "#d62728"},
            text=[f"{int(n)} spike trade(s)" for n in spikes["spike_count"]],
            hovertemplate="%{text}<extra></extra>"), 1, 1)
    fig.add_trace(go.Bar(x=x, y=candles["buy_volume"], name="buy volume (taker)",
                         marker_color=UP), 2, 1)
    fig.add_trace(go.Bar(x=x, y=candles["sell_volume"], name="sell volume (taker)",
                         marker_color=DOWN), 2, 1)
    fig.add_trace(go.Bar(x=x, y=candles["trade_count"], name="trades", marker_color="#8c8c8c"),
                  3, 1)
    fig.update_layout(height=640, barmode="stack", xaxis_rangeslider_visible=False, **_LAYOUT)
    fig.update_yaxes(title_text="price", row=1, col=1)
    fig.update_yaxes(title_text="volume", row=2, col=1)
    fig.update_yaxes(title_text="trades", row=3, col=1)
    return fig


def predictions_figure(actual: pd.DataFrame, preds: pd.DataFrame, target: str) -> go.Figure:
    """Actual ``target`` per window against each model's prediction for that window."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=actual["window_start"], y=actual[target], name=f"actual {target}",
                             line={"color": "black", "width": 2}))
    for model, g in preds.groupby("model", sort=True):
        fig.add_trace(go.Scatter(
            x=g["target_window_start"], y=g["predicted"], name=str(model), mode="lines+markers",
            marker={"size": 4},
            line={"color": MODEL_COLORS.get(model), "width": 1.5,
                      "dash": "dot" if model == "naive" else "solid"}))
    fig.update_layout(height=380, yaxis_title=target, **_LAYOUT)
    return fig


def errors_figure(errors: pd.DataFrame) -> go.Figure:
    """Prediction error (predicted − actual) per model over time."""
    fig = go.Figure()
    for model, g in errors.groupby("model", sort=True):
        fig.add_trace(go.Scatter(
            x=g["target_window_start"], y=g["error"], name=str(model), mode="lines+markers",
            marker={"size": 4},
            line={"color": MODEL_COLORS.get(model),
                  "dash": "dot" if model == "naive" else "solid"}))
    fig.add_hline(y=0, line={"color": "#999", "width": 1})
    fig.update_layout(height=300, yaxis_title="predicted − actual", **_LAYOUT)
    return fig


def anomaly_price_figure(agg: pd.DataFrame, flagged: pd.DataFrame) -> go.Figure:
    """Close price per window with the windows a detector flagged marked and shaded."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=agg["window_start"], y=agg["close"], name="close",
                             line={"color": "#444", "width": 1.5}))
    if len(flagged):
        close = agg.set_index("window_start")["close"]
        for det, g in flagged.groupby("detector", sort=True):
            fig.add_trace(go.Scatter(
                x=g["window_start"], y=close.reindex(g["window_start"]).to_numpy(),
                mode="markers", name=f"anomaly: {det}",
                marker={"symbol": DETECTOR_SYMBOLS.get(det, "circle"), "size": 12,
                            "color": "#d62728", "line": {"width": 1, "color": "white"}}))
        for ws in flagged["window_start"].drop_duplicates():
            fig.add_vrect(x0=ws, x1=ws + pd.Timedelta(minutes=1), fillcolor="#d62728",
                          opacity=0.12, line_width=0)
    fig.update_layout(height=360, yaxis_title="close", **_LAYOUT)
    return fig


def scores_figure(anomalies: pd.DataFrame) -> go.Figure:
    """One row per detector: its score per window, its threshold, the flagged windows."""
    detectors = sorted(anomalies["detector"].unique()) or ["(none)"]
    fig = make_subplots(rows=len(detectors), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=detectors)
    for i, det in enumerate(detectors, start=1):
        g = anomalies[anomalies["detector"] == det]
        fig.add_trace(go.Scatter(x=g["window_start"], y=g["score"], name=f"{det} score",
                                 line={"width": 1.5}), i, 1)
        fig.add_trace(go.Scatter(x=g["window_start"], y=g["threshold"], name=f"{det} threshold",
                                 line={"dash": "dash", "color": "#d62728", "width": 1}), i, 1)
        hit = g[g["is_anomaly"].fillna(False).astype(bool)]
        fig.add_trace(go.Scatter(x=hit["window_start"], y=hit["score"], mode="markers",
                                 name=f"{det} anomalies",
                                 marker={"color": "#d62728", "size": 9}), i, 1)
    fig.update_layout(height=220 * len(detectors) + 60,
                      **{**_LAYOUT, "modebar_orientation": "h",
                         "legend": {"orientation": "v", "x": 1.01, "y": 1}})
    return fig


def rejects_figure(counts: pd.DataFrame) -> go.Figure:
    by_reason = counts.groupby("reason", sort=False)["rejects"].sum().sort_values()
    fig = go.Figure(go.Bar(x=by_reason.to_numpy(), y=by_reason.index, orientation="h",
                           marker_color=DOWN))
    fig.update_layout(height=80 + 28 * len(by_reason), xaxis_title="rejected records",
                      margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig


def counters_figure(hist: pd.DataFrame) -> go.Figure:
    """The latest run's counters as sampled by this page, and the rates between samples."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("cumulative counts", "records per second"))
    for c in ("received", "accepted", "rejected", "duplicates", "late"):
        fig.add_trace(go.Scatter(x=hist["updated_at"], y=hist[c], name=c, mode="lines+markers",
                                 marker={"size": 4}), 1, 1)
    for c in ("received_per_s", "accepted_per_s", "rejected_per_s"):
        fig.add_trace(go.Scatter(x=hist["updated_at"], y=hist[c], name=c.replace("_", " "),
                                 mode="lines+markers", marker={"size": 4}), 2, 1)
    fig.update_layout(height=460, **{**_LAYOUT, "modebar_orientation": "h",
                                     "legend": {"orientation": "v", "x": 1.01, "y": 1}})
    return fig


def throughput_figure(agg: pd.DataFrame) -> go.Figure:
    """Accepted trades per 1-minute window (by trade time), stacked by symbol."""
    fig = go.Figure()
    for sym, g in agg.groupby("symbol", sort=True):
        fig.add_trace(go.Bar(x=g["window_start"], y=g["trade_count"], name=str(sym)))
    fig.update_layout(height=300, barmode="stack", yaxis_title="trades per minute", **_LAYOUT)
    return fig


def _time_unit(values: pd.Series) -> tuple[str, float]:
    """A readable unit for latencies (replays of old recordings reach years).

    >>> _time_unit(pd.Series([12.0, 30.0])), _time_unit(pd.Series([7e10]))
    (('ms', 1.0), ('d', 86400000.0))
    """
    med = float(values.abs().median()) if len(values) else 0.0
    for unit, size in (("d", 86_400_000.0), ("h", 3_600_000.0), ("s", 1000.0)):
        if med >= 10 * size if unit == "s" else med >= 2 * size:
            return unit, size
    return "ms", 1.0


def latency_histogram(trades: pd.DataFrame) -> go.Figure:
    """Per-trade latency (processing − trade time, and receive − trade time when known)."""
    unit, size = _time_unit(trades["latency_ms"].dropna())
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=trades["latency_ms"] / size, name="processed − trade time",
                               opacity=0.75, nbinsx=60))
    recv = trades["recv_latency_ms"].dropna() if "recv_latency_ms" in trades else []
    if len(recv):
        fig.add_trace(go.Histogram(x=recv / size, name="received − trade time", opacity=0.6,
                                   nbinsx=60))
    fig.update_layout(height=320, barmode="overlay", xaxis_title=unit, yaxis_title="trades",
                      **{**_LAYOUT, "hovermode": "closest"})
    return fig


def latency_windows_figure(agg: pd.DataFrame) -> go.Figure:
    """p50 and p99 latency per 1-minute window, per symbol."""
    unit, size = _time_unit(agg["latency_p99_ms"].dropna())
    fig = go.Figure()
    for sym, g in agg.groupby("symbol", sort=True):
        fig.add_trace(go.Scatter(x=g["window_start"], y=g["latency_p99_ms"] / size,
                                 name=f"{sym} p99"))
        fig.add_trace(go.Scatter(x=g["window_start"], y=g["latency_p50_ms"] / size,
                                 name=f"{sym} p50", line={"dash": "dot"}))
    fig.update_layout(height=300, yaxis_title=f"latency per window ({unit})", **_LAYOUT)
    return fig
