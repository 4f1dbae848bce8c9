"""Fit one model on a symbol's history and measure it walk-forward (for ``train``)."""

from __future__ import annotations

import datetime as dt

from cryptostream.ml.detectors import DETECTOR_NAMES, build_detectors
from cryptostream.ml.evaluate import EvalConfig, evaluate_symbol
from cryptostream.ml.features import (
    ANOMALY_FEATURES,
    FORECAST_FEATURES,
    Bars,
    compute,
    matrix,
    next_log_return,
)
from cryptostream.ml.forecasters import build_forecasters


def fit_and_measure(name: str, bars: Bars, warmup: int = 120, contamination: float = 0.05,
                    seed: int = 0) -> tuple[object, dict]:
    """The model ``name`` fitted on all of ``bars``, and its metadata: training span,
    features, and walk-forward metrics over the same history (skill vs naive for
    forecasters, precision/recall/fpr on injected events for detectors)."""
    if len(bars) <= warmup + 1:
        raise ValueError(f"{len(bars)} windows are too few for a warm-up of {warmup}")
    detector = name in DETECTOR_NAMES
    cfg = EvalConfig(models=None if detector else ("naive", name),
                     detectors=(name,) if detector else ("isolation_forest",),
                     warmup=warmup, contamination=contamination, seed=seed)
    result = evaluate_symbol(bars, cfg)
    feats = compute(bars)
    if detector:
        obj = build_detectors([name], contamination=contamination, seed=seed)[0]
        obj.fit(matrix(feats, ANOMALY_FEATURES))
        metrics = result.anomaly[name]
        features = ANOMALY_FEATURES
    else:
        obj = build_forecasters([name], seed=seed)[0]
        x, y = matrix(feats, FORECAST_FEATURES)[:-1], next_log_return(bars)[:-1]
        obj.fit(x, y)
        metrics = result.forecast["models"][name]
        features = FORECAST_FEATURES
    meta = {
        "name": name, "kind": "detector" if detector else "forecaster", "symbol": bars.symbol,
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "train_first_ms": int(bars.start_ms[0]), "train_last_ms": int(bars.start_ms[-1]),
        "n_train": len(bars), "features": list(features), "metrics": metrics,
        "evaluation": {"warmup": warmup, "first_target_ms": result.forecast["first_target_ms"],
                       "last_target_ms": result.forecast["last_target_ms"]},
    }
    return obj, meta
