"""Walk-forward loops and their metrics, shared by ``cryptostream evaluate`` and the tests.

No look-ahead: the forecast of window j's VWAP uses only windows <= j-1, and a model only
ever learns from outcomes already revealed at that time. The pair (features of row i,
log return i -> i+1) is revealed when window i+1 closes, so before forecasting window j:

* every model got ``learn_one(x_i, y_i)`` for every row i <= j-2, in order (online models
  learn; batch models ignore it or, like the GRU, only buffer ``x``);
* batch models were (re)fitted, every ``retrain_every`` targets, on rows
  ``[max(0, j-1-history), j-1)`` (all rows before j-1 when ``history`` is None). A model
  with a ``min_retrain_every`` attribute (the GRU: seconds per fit) is refitted every
  ``max(retrain_every, model.min_retrain_every)`` targets, and every ``retrain_every``
  targets while it still cannot predict (its last forecast was ``None``).

Detection works the same way: row t is scored by a batch detector fitted on rows
``[max(0, t-history), t)`` (refitted every ``retrain_every`` scored rows) and by online
detectors that have learned every row < t; then online detectors learn row t.

>>> m = forecast_metrics(np.array([101.0, 99.0]), np.array([102.0, 98.0]), np.array([100.0, 100.0]))
>>> m["mae"], m["rmse"], round(m["mape"], 4), m["directional_accuracy"], m["n"]
(1.0, 1.0, 0.01, 1.0, 2)
>>> detection_metrics(np.array([True, True, False, False]), np.array([True, False, True, False]))
{'precision': 0.5, 'recall': 0.5, 'fpr': 0.5, 'n_injected': 2, 'n_flagged': 2, 'n': 4}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .features import (
    ANOMALY_FEATURES,
    FORECAST_FEATURES,
    Bars,
    compute,
    matrix,
    next_log_return,
    row,
)

Progress = Callable[[int, int], None] | None


@dataclass
class ForecastRun:
    """Per target window j: its start, the actual VWAP, the base VWAP (window j-1) and each
    model's predicted VWAP; ``fallbacks[name]`` counts targets where the model returned
    ``None`` and was scored with the naive prediction (the base VWAP) instead."""

    symbol: str
    rows: np.ndarray  # target row indices j
    start_ms: np.ndarray
    actual: np.ndarray
    base: np.ndarray
    predicted: dict[str, np.ndarray] = field(default_factory=dict)
    fallbacks: dict[str, int] = field(default_factory=dict)

    def metrics(self) -> dict[str, dict]:
        """``forecast_metrics`` per model plus ``skill`` against persistence and
        ``fallbacks``."""
        naive_mae = forecast_metrics(self.base, self.actual, self.base)["mae"]
        out = {}
        for name, pred in self.predicted.items():
            m = forecast_metrics(pred, self.actual, self.base)
            m["skill"] = skill(m["mae"], naive_mae)
            m["fallbacks"] = self.fallbacks[name]
            out[name] = m
        return out


@dataclass
class DetectRun:
    """Per scored row t (t >= warmup): each detector's score (NaN where it returned
    ``None``), its flag (``None`` never flags) and ``unscored[name]``, the count of ``None``."""

    symbol: str
    rows: np.ndarray
    start_ms: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    flags: dict[str, np.ndarray] = field(default_factory=dict)
    unscored: dict[str, int] = field(default_factory=dict)

    def metrics(self, labels: np.ndarray) -> dict[str, dict]:
        """``detection_metrics`` per detector, ``labels`` being one boolean per row of the
        bars (only the scored rows count)."""
        lab = np.asarray(labels, bool)[self.rows]
        return {name: {**detection_metrics(f, lab), "unscored": self.unscored[name]}
                for name, f in self.flags.items()}


def _names(models: Sequence) -> list[str]:
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    return names


def forecast_walk_forward(bars: Bars, models: Sequence, warmup: int = 120,
                          retrain_every: int = 60, history: int | None = None,
                          progress: Progress = None) -> ForecastRun:
    """Forecast every window j >= max(warmup, 1) whose VWAP and previous VWAP are defined
    with every model, as described in the module docstring."""
    names = _names(models)
    feats = compute(bars)
    X = matrix(feats, FORECAST_FEATURES)
    y = next_log_return(bars)
    vwap = bars.vwap
    good = np.isfinite(vwap) & (vwap > 0)
    n = len(bars)
    targets = np.array([j for j in range(max(warmup, 1), n) if good[j] and good[j - 1]],
                       np.int64)
    xs = [row(feats, i, FORECAST_FEATURES) for i in range(n)]
    run = ForecastRun(bars.symbol, targets, bars.start_ms[targets], vwap[targets],
                      vwap[targets - 1] if len(targets) else np.zeros(0))
    preds = {name: np.empty(len(targets)) for name in names}
    fallbacks = dict.fromkeys(names, 0)
    every = {name: max(int(retrain_every), int(getattr(m, "min_retrain_every", 1)), 1)
             for name, m in zip(names, models)}
    base_every = max(int(retrain_every), 1)
    cold = dict.fromkeys(names, True)  # the model's last forecast was None
    learned = 0  # rows < learned were passed to learn_one
    for k, j in enumerate(targets.tolist()):
        for i in range(learned, j - 1):  # (x_i, y_i) revealed when window i+1 closed
            for m in models:
                m.learn_one(xs[i], float(y[i]))
        learned = max(learned, j - 1)
        lo = 0 if history is None else max(0, j - 1 - history)
        for name, m in zip(names, models):
            if m.batch and (k % every[name] == 0 or (cold[name] and k % base_every == 0)):
                m.fit(X[lo : j - 1], y[lo : j - 1])
        base = vwap[j - 1]
        for name, m in zip(names, models):
            r = m.predict_one(xs[j - 1])
            cold[name] = r is None or not math.isfinite(r)
            if cold[name]:
                r = 0.0
                fallbacks[name] += 1
            preds[name][k] = base * math.exp(r)
        if progress is not None:
            progress(k + 1, len(targets))
    run.predicted, run.fallbacks = preds, fallbacks
    return run


def detect_walk_forward(bars: Bars, detectors: Sequence, warmup: int = 120,
                        retrain_every: int = 240, history: int | None = 1440,
                        progress: Progress = None) -> DetectRun:
    """Score every row t >= warmup with every detector, as in the module docstring.

    Detectors are independent, so each runs its own pass; a batch detector with a
    ``score_many(X)`` method scores the rows between two refits in one call.
    """
    names = _names(detectors)
    feats = compute(bars)
    A = matrix(feats, ANOMALY_FEATURES)
    n = len(bars)
    rows = np.arange(min(warmup, n), n, dtype=np.int64)
    xs = [row(feats, i, ANOMALY_FEATURES) for i in range(n)]
    run = DetectRun(bars.symbol, rows, bars.start_ms[rows])
    every = max(int(retrain_every), 1)
    total, done = len(rows) * len(detectors), 0
    for name, d in zip(names, detectors):
        scores = np.full(len(rows), np.nan)
        flags = np.zeros(len(rows), bool)
        if d.batch:
            for k0 in range(0, len(rows), every):
                t0 = int(rows[k0])
                lo = 0 if history is None else max(0, t0 - history)
                d.fit(A[lo:t0])
                block = rows[k0 : k0 + every]
                if hasattr(d, "score_many"):
                    s = np.asarray(d.score_many(A[block]), np.float64)
                else:
                    s = np.array([_nan(d.score_one(xs[t])) for t in block.tolist()])
                scores[k0 : k0 + len(block)] = s
                flags[k0 : k0 + len(block)] = [d.is_anomaly(float(v)) if math.isfinite(v)
                                               else False for v in s]
                done += len(block)
                if progress is not None:
                    progress(done, total)
        else:
            for t in range(min(warmup, n)):
                d.learn_one(xs[t])
            for k, t in enumerate(rows.tolist()):
                s = d.score_one(xs[t])
                if s is not None and math.isfinite(s):
                    scores[k], flags[k] = s, bool(d.is_anomaly(s))
                d.learn_one(xs[t])
                done += 1
                if progress is not None:
                    progress(done, total)
        run.scores[name], run.flags[name] = scores, flags
        run.unscored[name] = int(np.isnan(scores).sum())
    return run


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def forecast_metrics(predicted: np.ndarray, actual: np.ndarray, base: np.ndarray) -> dict:
    """MAE, RMSE, MAPE (a fraction, as scikit-learn's ``mean_absolute_percentage_error``),
    directional accuracy (share of targets where sign(predicted - base) equals
    sign(actual - base); persistence predicts no move, so it scores ~0) and ``n``.
    Metrics of an empty set are NaN."""
    p, a, b = (np.asarray(v, np.float64) for v in (predicted, actual, base))
    n = len(a)
    if n == 0:
        return {"mae": math.nan, "rmse": math.nan, "mape": math.nan,
                "directional_accuracy": math.nan, "n": 0}
    err = p - a
    eps = np.finfo(np.float64).eps
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mape": float(np.mean(np.abs(err) / np.maximum(np.abs(a), eps))),
        "directional_accuracy": float(np.mean(np.sign(p - b) == np.sign(a - b))),
        "n": n,
    }


def skill(mae: float, mae_naive: float) -> float:
    """1 - mae / mae_naive: > 0 beats persistence, 0 ties it; NaN when ``mae_naive`` is 0.

    >>> skill(0.9, 1.0)
    0.09999999999999998
    """
    return 1.0 - mae / mae_naive if mae_naive > 0 else math.nan


def detection_metrics(flags: np.ndarray, labels: np.ndarray) -> dict:
    """Precision (0.0 when nothing is flagged), recall (NaN without injected events), false
    positive rate among the normal rows (NaN when there are none), counts."""
    f, lab = np.asarray(flags, bool), np.asarray(labels, bool)
    tp = int(np.sum(f & lab))
    n_flagged, n_injected, n_normal = int(f.sum()), int(lab.sum()), int((~lab).sum())
    return {
        "precision": tp / n_flagged if n_flagged else 0.0,
        "recall": tp / n_injected if n_injected else math.nan,
        "fpr": int(np.sum(f & ~lab)) / n_normal if n_normal else math.nan,
        "n_injected": n_injected,
        "n_flagged": n_flagged,
        "n": len(f),
    }
