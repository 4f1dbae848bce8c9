"""Window features shared by training, live scoring and evaluation (no train/serve skew).

Input is a symbol's closed 1-minute windows in time order as ``Bars`` (from ``agg_1m`` rows
or from kline files); output is one row of features per window, computed only from that
window and the windows *before* it (a test proves that truncating the series after row t
leaves row t unchanged). Rolling statistics count windows (rows), not minutes: after a gap
in the data the previous window is the last one that exists.

>>> b = Bars.from_rows("X", [{"window_start_ms": i * 60_000, "open": 1.0, "high": 1.0 + i,
...     "low": 1.0, "close": 1.0 + i, "volume": 2.0, "quote_volume": 2.0 + 2 * i,
...     "trade_count": 4, "buy_volume": 1.5, "spike_count": 0} for i in range(3)])
>>> f = compute(b)
>>> f["vwap"].tolist(), float(f["imbalance"][0]), bool(np.isnan(f["ret_log"][0]))
([1.0, 2.0, 3.0], 0.5, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: windows of history the robust z-scores compare against (median / MAD of the previous N)
ROBUST_N = 30
#: fewest previous windows a robust z-score needs before it is defined
ROBUST_MIN = 10
#: rows a symbol needs before every feature is defined (the live warm-up floor)
WARMUP_WINDOWS = ROBUST_N + 1
#: rows a row's features depend on, itself included: a robust z-score of the log return
#: reads the ROBUST_N returns before it, and the oldest of those the VWAP before that
ROW_SPAN = ROBUST_N + 2
MAD_SCALE = 1.4826  # MAD -> standard deviation for normal data
Z_CLIP = 100.0  # robust z-scores are clipped to ±Z_CLIP
#: smallest scale of a log-ratio z-score: 5 % (volume, count, range) / 0.1 bp (returns)
LOG_FLOOR = 0.05
RET_FLOOR = 1e-5

#: every feature, in the order of ``compute``'s output (the dashboard's "contributing features")
FEATURES = (
    "vwap", "ret_log", "change", "change_pct", "ma5", "ma10", "std5", "std10",
    "ma5_rel", "ma10_rel", "std5_rel", "std10_rel", "volume_z", "count_z", "log_volume_z",
    "log_count_z", "ret_z", "range_z", "value_per_trade", "spike_rate", "imbalance",
    "range_pct", "vwap_minus_close", "vwap_close_bps",
)
#: scale-free inputs of the forecasters: the seed features (rolling means 5/10, rolling std 5,
#: price change, change %, volume z-score), made relative to the current VWAP
FORECAST_FEATURES = ("ma5_rel", "ma10_rel", "std5_rel", "ret_log", "change_pct", "volume_z")
#: inputs of the anomaly detectors: each is ~N(0, 1)-scaled against the symbol's own history
ANOMALY_FEATURES = ("ret_z", "log_volume_z", "log_count_z", "range_z", "imbalance")


@dataclass(frozen=True, slots=True)
class Bars:
    """One symbol's 1-minute windows, column by column, sorted by ``start_ms``."""

    symbol: str
    start_ms: np.ndarray  # int64, window start (Unix ms)
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray  # base asset
    quote_volume: np.ndarray
    trade_count: np.ndarray  # float64 (counts)
    buy_volume: np.ndarray  # taker-buy base volume
    spike_count: np.ndarray  # float64, NaN when the input does not know (klines)

    def __len__(self) -> int:
        return len(self.start_ms)

    @property
    def vwap(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.volume > 0, self.quote_volume / self.volume, np.nan)

    @classmethod
    def from_rows(cls, symbol: str, rows: Iterable[Mapping]) -> Bars:
        """From ``agg_1m``-like mappings: ``window_start_ms``, ``window_start_us`` (engine rows)
        or a ``window_start`` datetime (rows read from a store)."""
        rows = list(rows)

        def col(name: str, default: float = np.nan) -> np.ndarray:
            return np.array([_num(r.get(name), default) for r in rows], np.float64)

        starts = np.array([_start_ms(r) for r in rows], np.int64)
        return cls(symbol, starts, col("open"), col("high"), col("low"), col("close"),
                   col("volume"), col("quote_volume"), col("trade_count"),
                   col("buy_volume"), col("spike_count")).sorted()

    @classmethod
    def from_columns(cls, symbol: str, cols: Mapping[str, np.ndarray]) -> Bars:
        n = len(cols["start_ms"])
        nan = np.full(n, np.nan)
        get = {f.name: np.asarray(cols.get(f.name, nan), np.float64) for f in fields(cls)
               if f.name not in ("symbol", "start_ms")}
        return cls(symbol, np.asarray(cols["start_ms"], np.int64), **get).sorted()

    def sorted(self) -> Bars:
        if len(self) < 2 or bool(np.all(np.diff(self.start_ms) > 0)):
            return self
        # one row per window: the last occurrence of a start wins (a corrected re-emission)
        order = np.argsort(self.start_ms, kind="stable")
        s = self.start_ms[order]
        keep = order[np.append(s[1:] != s[:-1], True)]
        return self.take(keep)

    def take(self, idx) -> Bars:
        return Bars(self.symbol, *(getattr(self, f.name)[idx] for f in fields(self)[1:]))

    def tail(self, n: int) -> Bars:
        return self.take(slice(max(0, len(self) - n), None))

    def append(self, other: Bars) -> Bars:
        return Bars(self.symbol, *(np.concatenate([getattr(self, f.name), getattr(other, f.name)])
                                   for f in fields(self)[1:])).sorted()


def _num(v, default: float) -> float:
    return default if v is None else float(v)


def _start_ms(r: Mapping) -> int:
    if "window_start_ms" in r:
        return int(r["window_start_ms"])
    if "window_start_us" in r:  # as the engine emits windows
        return int(r["window_start_us"]) // 1000
    return round(r["window_start"].timestamp() * 1000)  # a datetime read from a store


def _rolling(x: np.ndarray, n: int, fn) -> np.ndarray:
    """fn over the window of the last n rows *including* row t; NaN until n rows exist."""
    out = np.full(len(x), np.nan)
    if len(x) >= n:
        out[n - 1 :] = fn(sliding_window_view(x, n), axis=1)
    return out


def _row_nanmedian(w: np.ndarray) -> np.ndarray:
    """The median of each row's non-NaN values (every row has one at least): the same
    values as ``np.nanmedian(w, axis=1)``, which goes through masked arrays for short rows
    (0.56 vs 0.04 ms a call on 30-row windows here, measured)."""
    s = np.sort(w, axis=1)  # NaN sort last
    k = np.count_nonzero(~np.isnan(w), axis=1)
    rows = np.arange(len(s))
    return (s[rows, (k - 1) // 2] + s[rows, k // 2]) / 2


def robust_z(x: np.ndarray, n: int = ROBUST_N, min_n: int = ROBUST_MIN,
             floor: float = 0.0, rel_floor: float = 1e-9) -> np.ndarray:
    """(x_t - median) / (1.4826 MAD) over the previous ``n`` rows (row t itself excluded),
    clipped to ±``Z_CLIP``.

    NaN until ``min_n`` previous rows exist; NaN values in the history are skipped. The
    scale never drops below ``floor`` nor ``rel_floor`` × |median|: real minutes can be flat
    for a while (a one-tick range ten times in a row), and without a floor the next
    ordinary minute would score in the millions.

    >>> z = robust_z(np.array([1.0, 2, 1, 2, 1, 2, 1, 2, 1, 2, 10]), n=10, min_n=10)
    >>> bool(np.isnan(z[9])), round(float(z[10]), 2)
    (True, 11.47)
    """
    m = len(x)
    out = np.full(m, np.nan)
    if m <= min_n:
        return out
    padded = np.concatenate([np.full(n, np.nan), x[:-1]])
    win = sliding_window_view(padded, n)  # win[t] = x[t-n : t]
    enough = np.sum(~np.isnan(win), axis=1) >= min_n
    idx = np.flatnonzero(enough)
    if len(idx):
        w = win[idx]
        med = _row_nanmedian(w)
        mad = _row_nanmedian(np.abs(w - med[:, None])) * MAD_SCALE
        scale = np.maximum(np.maximum(np.abs(med) * rel_floor, floor), 1e-12)
        out[idx] = np.clip((x[idx] - med) / np.maximum(mad, scale), -Z_CLIP, Z_CLIP)
    return out


def compute(bars: Bars, min_history: int = ROBUST_MIN) -> dict[str, np.ndarray]:
    """Every feature in ``FEATURES`` for every row of ``bars`` (NaN where undefined).

    ``min_history``: previous windows a robust z-score needs (a live run configured with a
    shorter warm-up lowers it; training and evaluation keep the default)."""
    k = max(1, min_history)
    vwap = bars.vwap
    prev = np.concatenate([[np.nan], vwap[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        ret_log = np.log(vwap / prev)
        change = vwap - prev
        change_pct = change / prev * 100.0
        ma5, ma10 = _rolling(vwap, 5, np.mean), _rolling(vwap, 10, np.mean)
        std5, std10 = _rolling(vwap, 5, np.std), _rolling(vwap, 10, np.std)
        volume = bars.volume
        count = bars.trade_count
        range_pct = (bars.high - bars.low) / bars.low * 100.0
        # a window without trades is as far below normal as the data allows (no look-ahead)
        log_volume = np.log(np.maximum(volume, 1e-12))
        log_count = np.log(np.maximum(count, 1e-12))
        buy = bars.buy_volume
        f = {
            "vwap": vwap,
            "ret_log": ret_log,
            "change": change,
            "change_pct": change_pct,
            "ma5": ma5,
            "ma10": ma10,
            "std5": std5,
            "std10": std10,
            "ma5_rel": ma5 / vwap - 1.0,
            "ma10_rel": ma10 / vwap - 1.0,
            "std5_rel": std5 / vwap,
            "std10_rel": std10 / vwap,
            "volume_z": robust_z(volume, min_n=k, rel_floor=0.01),
            "count_z": robust_z(count, min_n=k, rel_floor=0.01),
            "log_volume_z": robust_z(log_volume, min_n=k, floor=LOG_FLOOR),
            "log_count_z": robust_z(log_count, min_n=k, floor=LOG_FLOOR),
            "ret_z": robust_z(ret_log, min_n=k, floor=RET_FLOOR),
            "range_z": robust_z(np.log(np.maximum(range_pct, 1e-6)), min_n=k,
                                floor=LOG_FLOOR),
            "value_per_trade": np.where(count > 0, bars.quote_volume / count, np.nan),
            "spike_rate": np.where(count > 0, bars.spike_count / count, np.nan),
            "imbalance": np.where(volume > 0, (2.0 * buy - volume) / volume, np.nan),
            "range_pct": range_pct,
            "vwap_minus_close": vwap - bars.close,
            "vwap_close_bps": (vwap / bars.close - 1.0) * 1e4,
        }
    return f


def matrix(feats: Mapping[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """The named feature columns as a 2-D array (rows x len(names))."""
    return np.column_stack([np.asarray(feats[n], np.float64) for n in names])


def row(feats: Mapping[str, np.ndarray], i: int, names: tuple[str, ...] = FEATURES) -> dict:
    """Row ``i`` of ``compute``'s output as a mapping (what ``predict_one`` takes)."""
    return {n: float(feats[n][i]) for n in names}


def vector(x: Mapping[str, float], names: tuple[str, ...]) -> np.ndarray | None:
    """``x`` in ``names`` order, or None when a value is missing or not finite (what a
    model's ``predict_one`` / ``score_one`` turns a feature mapping into).

    >>> vector({"a": 1.0, "b": 2}, ("b", "a")).tolist(), vector({"a": float("nan")}, ("a",))
    ([2.0, 1.0], None)
    """
    try:
        v = np.array([float(x[n]) for n in names], np.float64)
    except (KeyError, TypeError, ValueError):
        return None
    return v if bool(np.all(np.isfinite(v))) else None


def complete(x: Mapping[str, float]) -> bool:
    """True when every value is a finite number (a model can use the row)."""
    return all(np.isfinite(v) for v in x.values())


def next_log_return(bars: Bars) -> np.ndarray:
    """The forecast target per row t: ln(VWAP[t+1] / VWAP[t]) (NaN for the last row)."""
    v = bars.vwap
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.append(np.log(v[1:] / v[:-1]), np.nan)


class FeatureState:
    """One symbol's recent windows for live scoring: ``push`` a closed window, get its
    features computed by the same ``compute`` as training, over the ``ROW_SPAN`` rows the
    newest window's features read (the only rows kept: the same values as over the whole
    history, which the live-equals-batch test checks)."""

    def __init__(self, symbol: str, min_history: int = ROBUST_MIN):
        self.symbol = symbol
        self.min_history = min_history
        self.bars: Bars | None = None
        self.seen = 0  # windows pushed since start (history size for warm-up decisions)

    @property
    def last_start_ms(self) -> int | None:
        return None if self.bars is None or not len(self.bars) else int(self.bars.start_ms[-1])

    def push(self, bars: Bars) -> list[tuple[int, dict[str, float]]]:
        """Add the windows newer than the last one pushed (older ones are re-emissions and
        are ignored); returns ``(start_ms, features)`` for each new window, oldest first."""
        last = self.last_start_ms
        if last is not None:
            bars = bars.take(bars.start_ms > last)
        out = []
        for i in range(len(bars)):
            one = bars.take(slice(i, i + 1))
            self.bars = one if self.bars is None else self.bars.append(one)
            self.bars = self.bars.tail(ROW_SPAN)
            self.seen += 1
            feats = compute(self.bars, self.min_history)
            out.append((int(one.start_ms[0]), row(feats, len(self.bars) - 1)))
        return out
