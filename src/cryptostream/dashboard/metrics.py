"""The numbers the dashboard shows, computed from frames (no Streamlit, no store access).

Formatting, the source's status line, per-symbol KPIs, model skill, ML readiness, candle
merging for long ranges, and the pipeline-counter history sampled by the page.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd

LIVE_STATES = {"connected", "connecting", "reconnecting", "polling"}
#: a writer that has not updated pipeline_stats for this long is shown as not running
STALE_AFTER_S = 30.0


def fmt_price(x) -> str:
    """
    >>> fmt_price(61707.05146), fmt_price(2.5), fmt_price(0.0000123456), fmt_price(None)
    ('61,707.05', '2.5000', '0.00001235', '–')
    """
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    x = float(x)
    if abs(x) >= 1000:
        return f"{x:,.2f}"
    if abs(x) >= 1:
        return f"{x:,.4f}"
    return f"{x:.4g}" if x == 0 else f"{x:.{max(2, 3 - math.floor(math.log10(abs(x))))}f}"


def fmt_count(n) -> str:
    return "–" if n is None or pd.isna(n) else f"{int(n):,}"


def fmt_volume(v) -> str:
    if v is None or pd.isna(v):
        return "–"
    return f"{v:,.2f}" if abs(v) >= 100 else f"{v:,.4f}"


def fmt_ms(ms) -> str:
    """A latency in readable units.

    >>> fmt_ms(12.34), fmt_ms(4500), fmt_ms(3 * 86400e3), fmt_ms(None)
    ('12.3 ms', '4.50 s', '3.0 d', '–')
    """
    if ms is None or pd.isna(ms):
        return "–"
    ms = float(ms)
    if abs(ms) < 1000:
        return f"{ms:,.1f} ms"
    s = ms / 1000
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(s) >= size:
            return f"{s / size:,.1f} {unit}"
    return f"{s:,.2f} s"


def fmt_age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def fmt_time(ts) -> str:
    return "–" if ts is None or pd.isna(ts) else pd.Timestamp(ts).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- source status -------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceStatusView:
    label: str  # short: "connected", "replay (not live)", ...
    level: str  # "success" | "info" | "warning" | "error"
    detail: str  # one sentence for the status line


def source_status(run: pd.DataFrame, writer_running: bool | None,
                  now: pd.Timestamp) -> SourceStatusView:
    """What the source of the latest run is doing; replayed and simulated data always say
    so, and a pipeline that stopped is not shown as connected."""
    if run.empty:
        return SourceStatusView("no run yet", "warning",
                                "no pipeline run has written this store yet")
    r = run.iloc[0]
    state = as_text(r.get("source_state")) or "unknown"
    source = as_text(r.get("source")) or "?"
    updated = r.get("updated_at")
    age = (now - updated).total_seconds() if updated is not None and not pd.isna(updated) else None
    stopped = writer_running is False or (writer_running is None and age is not None
                                          and age > STALE_AFTER_S)
    ago = f"last update {fmt_age(age)} ago" if age is not None else "never updated"
    if state == "replay":
        label, level = "replay (not live)", "info"
        detail = f"source {source}: replayed recording, not live data"
    elif state == "simulated":
        label, level = "simulated (not live)", "info"
        detail = f"source {source}: simulated market, not live data"
    elif state == "connected":
        label, level, detail = "connected", "success", f"source {source}: connected, live"
    elif state in ("reconnecting", "connecting"):
        attempt = as_int(r.get("source_attempt"))
        label, level = f"{state} (attempt {attempt})" if attempt else state, "warning"
        detail = f"source {source}: {label}"
    else:
        label, level, detail = state, "warning", f"source {source}: {state}"
    reconnects = as_int(r.get("reconnects"))
    if reconnects:
        detail += f", {reconnects} reconnects"
    if stopped:
        finished = state in ("replay", "simulated") and writer_running is False
        label = f"{label}, finished" if finished else f"{label.split(' (')[0]} – pipeline stopped"
        level = "info" if finished else "error" if state in LIVE_STATES else "warning"
        detail += f"; the pipeline is not running ({ago})"
    else:
        detail += f"; {ago}"
    return SourceStatusView(label, level, detail)


def connection_log(run: pd.DataFrame) -> pd.DataFrame:
    """The recent connection events the live source keeps in ``source_detail``."""
    rows = []
    if not run.empty:
        try:
            detail = json.loads(as_text(run.iloc[0].get("source_detail")) or "{}")
        except (TypeError, ValueError):
            detail = {}
        for item in detail.get("log") or []:
            if isinstance(item, (list, tuple)) and len(item) >= 2:
                rows.append({"at": pd.Timestamp(float(item[0]), unit="s", tz="UTC"),
                             "event": str(item[1]),
                             "detail": str(item[2]) if len(item) > 2 else ""})
    return pd.DataFrame(rows, columns=["at", "event", "detail"])


# -- KPIs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SymbolKpis:
    last_price: float | None
    change_pct: float | None
    trades: int
    volume: float
    windows: int
    latest_window: pd.Timestamp | None
    latency_p99_ms: float | None
    recv_latency_p99_ms: float | None
    max_latency_p99_ms: float | None
    buy_share_pct: float | None = None


def symbol_kpis(agg: pd.DataFrame) -> SymbolKpis:
    """KPIs of one symbol over its 1-minute windows in range (``agg`` sorted by time)."""
    if agg.empty:
        return SymbolKpis(None, None, 0, 0.0, 0, None, None, None, None)
    first, last = agg.iloc[0], agg.iloc[-1]
    change = (last["close"] / first["open"] - 1) * 100 if first["open"] else None
    return SymbolKpis(
        last_price=float(last["close"]), change_pct=change,
        trades=int(agg["trade_count"].sum()), volume=float(agg["volume"].sum()),
        windows=len(agg), latest_window=last["window_start"],
        latency_p99_ms=_num(last.get("latency_p99_ms")),
        recv_latency_p99_ms=_num(last.get("recv_latency_p99_ms")),
        max_latency_p99_ms=_num(agg["latency_p99_ms"].max()),
        buy_share_pct=(100 * float(agg["buy_volume"].sum()) / float(agg["volume"].sum())
                       if agg["volume"].sum() else None),
    )


def _num(x) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


def as_int(x) -> int:
    """
    >>> as_int(None), as_int(float("nan")), as_int(3.0)
    (0, 0, 3)
    """
    return 0 if x is None or pd.isna(x) else int(x)


def as_text(x) -> str:
    return "" if x is None or (not isinstance(x, str) and pd.isna(x)) else str(x)


def skill_table(skill: pd.DataFrame) -> pd.DataFrame:
    """Adds ``skill = 1 - MAE(model) / MAE(naive)`` (same targets) to a ``Reader.skill`` frame.

    >>> df = pd.DataFrame({"symbol": ["X", "X"], "model": ["naive", "linear"], "n": [4, 4],
    ...     "mae": [2.0, 1.5], "naive_mae": [2.0, 2.0]})
    >>> skill_table(df)["skill"].tolist()
    [0.0, 0.25]
    """
    out = skill.copy()
    if out.empty:
        out["skill"] = pd.Series(dtype=float)
        return out
    mae = out["mae"].astype(float)
    naive = out["naive_mae"].astype(float)
    out["skill"] = (1 - mae / naive).where(naive > 0)
    return out


def best_model(skill: pd.DataFrame, symbol: str) -> tuple[str | None, float | None, int]:
    """The non-naive model with the highest skill for ``symbol`` (name, skill, scored n)."""
    s = skill[(skill["symbol"] == symbol) & (skill["model"] != "naive")] if len(skill) else skill
    if s.empty:
        return None, None, 0
    s = s.sort_values(["skill", "n"], ascending=False, na_position="last")
    r = s.iloc[0]
    return str(r["model"]), _num(r["skill"]), int(r["n"])


def ml_state(status: pd.DataFrame, symbol: str, kind: str) -> str | None:
    """'warming up (h/n windows)', 'failed: …' or None (ready / unknown) for one symbol."""
    if status.empty:
        return None
    s = status[(status["symbol"] == symbol) & (status["kind"] == kind)]
    if s.empty:
        return None
    if (s["state"] == "ready").any():
        return None
    failed = s[s["state"] == "failed"]
    if len(failed) == len(s):
        return "failed: " + "; ".join(f"{r.component} {as_text(r.detail)}".strip()
                                      for r in failed.itertuples())
    warm = s[s["state"] == "warming_up"]
    if len(warm):
        r = warm.sort_values("history", ascending=False).iloc[0]
        return f"warming up ({as_int(r['history'])}/{as_int(r['needed'])} windows)"
    return None


def ml_progress(status: pd.DataFrame, sym: str, kind: str) -> tuple[int, int] | None:
    """(closed windows seen, windows needed) of the furthest warming-up model of ``kind``
    for ``sym``, or None when none of them is warming up."""
    if status.empty:
        return None
    s = status[(status["symbol"] == sym) & (status["kind"] == kind)
               & (status["state"] == "warming_up")]
    if s.empty or (status[(status["symbol"] == sym) & (status["kind"] == kind)]["state"]
                   == "ready").any():
        return None
    r = s.sort_values("history", ascending=False).iloc[0]
    return as_int(r["history"]), as_int(r["needed"])


def top_features(text) -> str:
    """``[{"feature": "volume", "value": 4.2}, ...]`` as ``volume (4.20), ...``."""
    try:
        items = json.loads(text) if isinstance(text, str) else (text or [])
    except ValueError:
        return str(text)
    parts = []
    for it in items:
        if isinstance(it, dict):
            v = it.get("value")
            parts.append(f"{it.get('feature')} ({v:+.2f})" if isinstance(v, (int, float))
                         else str(it.get("feature")))
    return ", ".join(parts)


# -- charts' data ----------------------------------------------------------------------------
def merge_candles(agg: pd.DataFrame, max_candles: int = 720) -> tuple[pd.DataFrame, int]:
    """1-minute windows of one symbol merged into k-minute candles so that at most
    ``max_candles`` are drawn; returns (frame, k). VWAP stays exact (Σ quote / Σ volume).

    >>> t = pd.date_range("2024-01-01", periods=4, freq="min", tz="UTC")
    >>> df = pd.DataFrame({"window_start": t, "open": [1., 2, 3, 4], "high": [2., 3, 4, 5],
    ...     "low": [.5, 1, 2, 3], "close": [2., 3, 4, 5], "volume": [1., 1, 1, 1],
    ...     "quote_volume": [1.5, 2.5, 3.5, 4.5], "buy_volume": [1., 0, 1, 0],
    ...     "sell_volume": [0., 1, 0, 1], "trade_count": [1, 1, 1, 1], "spike_count": [0, 1, 0, 0]})
    >>> m, k = merge_candles(df, max_candles=2)
    >>> k, m["open"].tolist(), m["high"].tolist(), m["vwap"].tolist()
    (2, [1.0, 3.0], [3.0, 5.0], [2.0, 4.0])
    """
    n = len(agg)
    if n <= max_candles:
        return agg, 1
    k = next(m for m in (2, 5, 10, 15, 30, 60, 120, 240, 360, 720, 1440, 10080)
             if n / m <= max_candles or m == 10080)
    g = agg.groupby(agg["window_start"].dt.floor(f"{k}min"), sort=True)
    out = g.agg(open=("open", "first"), high=("high", "max"), low=("low", "min"),
                close=("close", "last"), volume=("volume", "sum"),
                quote_volume=("quote_volume", "sum"), buy_volume=("buy_volume", "sum"),
                sell_volume=("sell_volume", "sum"), trade_count=("trade_count", "sum"),
                spike_count=("spike_count", "sum")).reset_index()
    out["vwap"] = out["quote_volume"] / out["volume"]
    return out, k


def stats_totals(run: pd.DataFrame) -> dict[str, int]:
    """Counters of the latest run summed over its symbols."""
    cols = ("received", "accepted", "rejected", "duplicates", "ignored", "late")
    return {c: int(run[c].fillna(0).sum()) if c in run and len(run) else 0 for c in cols}


def append_history(history: list[dict], run: pd.DataFrame, now: pd.Timestamp,
                   keep: int = 2000) -> list[dict]:
    """Add one sample of the latest run's counters (a new run starts a new history)."""
    if run.empty:
        return history
    run_id = str(run.iloc[0]["run_id"])
    sample = {"run_id": run_id, "at": now, "updated_at": run["updated_at"].max(),
              **stats_totals(run)}
    if history and history[-1]["run_id"] != run_id:
        history = []
    if history and history[-1]["updated_at"] == sample["updated_at"]:
        return history  # nothing new was written
    return (history + [sample])[-keep:]


def history_frame(history: list[dict]) -> pd.DataFrame:
    """Samples with per-second rates between consecutive samples (by the writer's clock)."""
    df = pd.DataFrame(history)
    if df.empty:
        return df
    dt = df["updated_at"].diff().dt.total_seconds()
    for c in ("received", "accepted", "rejected"):
        df[f"{c}_per_s"] = (df[c].diff() / dt).where(dt > 0)
    return df
