"""The operations tabs of the dashboard: Raw data (filterable, CSV downloads) and
Pipeline health (counters over time, throughput, consumer lag, latency, connection log).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from cryptostream.dashboard import charts
from cryptostream.dashboard import metrics as m
from cryptostream.dashboard.queries import Reader
from cryptostream.dashboard.views_market import PLOTLY_CONFIG

RAW_TABLES = ("Latest trades", "1-min windows", "5-min sliding windows", "Rejects", "Gaps")
MAX_SHOWN = 5000  # rows sent to the browser; the CSV download has them all


def _filter_text(df: pd.DataFrame, text: str) -> pd.DataFrame:
    """Rows where any text column contains ``text`` (case-insensitive)."""
    if not text or df.empty:
        return df
    mask = pd.Series(False, index=df.index)
    for col in df.columns:
        if df[col].dtype == object or pd.api.types.is_string_dtype(df[col]):
            mask |= df[col].astype(str).str.contains(text, case=False, regex=False, na=False)
    return df[mask]


def _show(df: pd.DataFrame, name: str, key: str) -> None:
    shown = df.head(MAX_SHOWN)
    st.caption(f"{len(df):,} rows" + (f" (showing the first {MAX_SHOWN:,})" if len(df) > MAX_SHOWN
                                      else ""))
    st.dataframe(shown, hide_index=True, key=f"{key}_table")
    st.download_button("Download CSV", data=lambda: df.to_csv(index=False).encode(),
                       file_name=f"{name}.csv", mime="text/csv", key=f"{key}_csv",
                       on_click="ignore", icon=":material/download:")


def raw_data(reader: Reader, opts) -> None:
    if st.session_state.get("raw_table") not in RAW_TABLES:
        st.session_state["raw_table"] = RAW_TABLES[0]
    kind = st.segmented_control("Table", RAW_TABLES, key="raw_table", required=True)
    text = st.text_input("Filter rows containing", key="raw_filter",
                         placeholder="e.g. a symbol, a reason, a trade id")
    if kind == "Latest trades":
        trades = reader.trades()
        side = st.segmented_control("Taker side", ["all", "buy", "sell"], key="raw_side",
                                    default="all", required=True)
        if side != "all" and len(trades):
            trades = trades[trades["is_buyer_maker"] == (side == "sell")]
        if st.checkbox("price spikes only", key="raw_spikes") and len(trades):
            trades = trades[trades["is_price_spike"].fillna(False).astype(bool)]
        _show(_filter_text(trades, text), "trades", "raw_trades")
    elif kind in ("1-min windows", "5-min sliding windows"):
        table = "agg_1m" if kind.startswith("1") else "agg_5m_1m"
        if not reader.has(table):
            st.info(f"This store has no `{table}` table (the pipeline runs other window "
                    "settings).")
            return
        df = reader.windows(table).sort_values(["window_start", "symbol"], ascending=[False, True])
        _show(_filter_text(df, text), table, f"raw_{table}")
    elif kind == "Rejects":
        counts = reader.reject_counts()
        if counts.empty:
            st.success("No record was rejected.")
            return
        st.plotly_chart(charts.rejects_figure(counts), key="rejects_chart", config=PLOTLY_CONFIG)
        reasons = sorted(counts["reason"].unique())
        chosen = st.multiselect("Reasons", reasons, key="raw_reasons", placeholder="All reasons")
        rejects = reader.rejects()
        if chosen:
            rejects = rejects[rejects["reason"].isin(chosen)]
        _show(_filter_text(rejects, text), "rejects", "raw_rejects")
    else:
        gaps = reader.gaps()
        if gaps.empty:
            st.success("No gap in trade ids.")
            return
        gaps = gaps.assign(open=gaps["filled"].fillna(0) < gaps["count"])
        if st.checkbox("open gaps only", key="raw_open_gaps"):
            gaps = gaps[gaps["open"]]
        _show(_filter_text(gaps, text), "gaps", "raw_gaps")


def pipeline_health(reader: Reader, opts) -> None:
    run = reader.latest_run()
    if run.empty:
        st.info("No pipeline run has written its counters to this store yet.")
        return
    status = st.session_state.get("source_status")
    r0 = run.iloc[0]
    st.markdown(f"**Run** `{r0['run_id']}` · source `{r0['source']}` · started "
                f"{m.fmt_time(r0['started_at'])} · last update {m.fmt_time(r0['updated_at'])}"
                + (f" · {status.detail}" if status else ""))
    totals = m.stats_totals(run)
    with st.container(horizontal=True, key="health-totals"):
        for name in ("received", "accepted", "rejected", "duplicates", "ignored", "late"):
            st.metric(name, m.fmt_count(totals[name]), border=True)
        ok = totals["received"] == sum(totals[c] for c in ("accepted", "rejected", "duplicates",
                                                            "ignored"))
        st.metric("reconciled", "yes" if ok else "NO", border=True,
                  help="received = accepted + rejected + duplicates + ignored")
    cols = [c for c in ("symbol", "received", "accepted", "rejected", "duplicates", "ignored",
                        "late", "gaps", "gaps_open", "rejected_by_reason", "recv_skew_ms",
                        "watermark", "max_trade_time") if c in run]
    st.dataframe(run[cols], hide_index=True, key="health_run")

    st.subheader("Counts over time")
    hist = m.history_frame(st.session_state.get("history", []))
    if len(hist) >= 2:
        st.plotly_chart(charts.counters_figure(hist), key="health_counters", config=PLOTLY_CONFIG)
        st.caption("Sampled from `pipeline_stats` at each refresh since this page was opened.")
    else:
        st.caption("The counters are sampled at each refresh; the chart appears after the "
                   "second sample that brings new counts.")
    st.subheader("Throughput by trade time")
    st.plotly_chart(charts.throughput_figure(reader.windows("agg_1m")), key="health_tput",
                    config=PLOTLY_CONFIG)

    st.subheader("Consumer lag (Kafka mode)")
    _lag(reader, opts)

    st.subheader("Latency")
    trades = reader.trades()
    if len(trades):
        offline = status is not None and status.level == "info"
        st.caption(f"Latest {len(trades):,} trades"
                   + (" — replayed or simulated data: the latency includes the recording's age."
                      if offline else "."))
        st.plotly_chart(charts.latency_histogram(trades), key="health_latency",
                        config=PLOTLY_CONFIG)
    st.plotly_chart(charts.latency_windows_figure(reader.windows("agg_1m")),
                    key="health_latency_windows", config=PLOTLY_CONFIG)

    st.subheader("Source connection log")
    log = m.connection_log(run)
    if log.empty:
        st.caption(f"The {r0['source']} source keeps no connection log (only live sources do).")
    else:
        st.dataframe(log.sort_values("at", ascending=False), hide_index=True, key="health_log")
    st.subheader("Runs")
    st.dataframe(reader.runs(), hide_index=True, key="health_runs")


def _lag(reader: Reader, opts) -> None:
    checkpoints = reader.checkpoints()
    if opts.broker:
        try:
            from cryptostream.transport.kafka_admin import CLEAN, REJECTS, STATS, Topics

            rows = Topics(opts.broker, timeout_s=3.0).lag(opts.group, [CLEAN, REJECTS, STATS])
        except Exception as exc:  # noqa: BLE001 - any broker failure is shown, not raised
            st.warning(f"Cannot read the consumer lag from {opts.broker}: {exc}")
        else:
            lag = pd.DataFrame(rows)
            st.metric(f"total lag of group {opts.group}",
                      m.fmt_count(lag["lag"].sum() if len(lag) else 0))
            st.dataframe(lag, hide_index=True, key="health_lag")
    elif len(checkpoints):
        st.caption("Kafka `process` replicas write to this store. Their checkpoints are below; "
                   "for the lag, start the dashboard with `--broker HOST:PORT`.")
    else:
        st.caption("Not in Kafka mode: the embedded pipeline reads its source directly, there "
                   "is no consumer lag.")
    if len(checkpoints):
        st.dataframe(checkpoints, hide_index=True, key="health_checkpoints")
