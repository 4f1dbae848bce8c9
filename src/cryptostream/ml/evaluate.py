"""Walk-forward evaluation of every forecaster and detector, per symbol -> ``metrics.json``.

Forecasts: every model is scored on the same targets — each 1-minute window from the
``warmup``-th on whose VWAP (quote volume / volume) and the previous window's are defined —
predicted from the windows before it only (``walkforward.forecast_walk_forward``). Skill is
``1 - MAE / MAE_naive``: positive means better than persistence, and it is reported
whatever its sign. Detectors: events (price jumps 1–5 %, volume bursts 5–20×, trade-count
droughts) are injected into the real series (``inject.inject_events``, seeded), and each
detector, trained walk-forward on the injected series, is scored on them: precision, recall
and false-positive rate over the windows after the warm-up.

The output follows the command contract of ``cryptostream evaluate``::

    {"forecast": {SYMBOL: {"first_target_ms", "last_target_ms",
                           "models": {MODEL: {"mae", "rmse", "mape", "directional_accuracy",
                                              "skill", "n"}}}},
     "anomaly": {SYMBOL: {DETECTOR: {"precision", "recall", "fpr", "n_injected"}}},
     "meta": {...settings, inputs, fallbacks, versions...}}

``mape`` is a fraction (0.001 = 0.1 %), as scikit-learn's ``mean_absolute_percentage_error``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cryptostream.ml.detectors import build_detectors
from cryptostream.ml.features import Bars
from cryptostream.ml.forecasters import build_forecasters
from cryptostream.ml.inject import inject_events
from cryptostream.ml.walkforward import (
    detect_walk_forward,
    detection_metrics,
    forecast_metrics,
    forecast_walk_forward,
    skill,
)


@dataclass(frozen=True)
class EvalConfig:
    models: tuple[str, ...] | None = None  # None: every forecaster available (lstm w/ torch)
    detectors: tuple[str, ...] | None = None
    warmup: int = 120
    retrain_every: int = 60
    history: int | None = None  # batch forecasters: rolling window of rows; None = expanding
    detector_retrain_every: int = 240
    detector_history: int = 1440
    contamination: float = 0.05
    inject_rate: float = 0.02
    seed: int = 0


@dataclass
class SymbolResult:
    symbol: str
    forecast: dict
    anomaly: dict
    runs: dict = field(default_factory=dict)  # raw series for the plots


def evaluate_symbol(bars: Bars, cfg: EvalConfig,
                    progress: Callable[[str, int, int], None] | None = None) -> SymbolResult:
    """Forecast and anomaly evaluation of one symbol's windows."""
    sym = bars.symbol
    models = build_forecasters(list(cfg.models) if cfg.models else None, seed=cfg.seed)
    fr = forecast_walk_forward(
        bars, models, warmup=cfg.warmup, retrain_every=cfg.retrain_every, history=cfg.history,
        progress=(lambda d, t: progress(f"{sym} forecasts", d, t)) if progress else None)
    targets = np.asarray(fr.start_ms, np.int64)
    if len(targets) == 0:
        raise ValueError(f"{sym}: {len(bars)} windows leave no target after a warm-up of "
                         f"{cfg.warmup}; give more history or a smaller --warmup")
    naive = forecast_metrics(fr.predicted["naive"], fr.actual, fr.base)
    per_model = {}
    for m in models:
        met = forecast_metrics(fr.predicted[m.name], fr.actual, fr.base)
        met["skill"] = skill(met["mae"], naive["mae"])
        per_model[m.name] = {k: _f(met[k]) for k in
                             ("mae", "rmse", "mape", "directional_accuracy", "skill")}
        per_model[m.name]["n"] = int(met["n"])
    forecast = {"first_target_ms": int(targets[0]), "last_target_ms": int(targets[-1]),
                "models": per_model}

    injected, labels, events = inject_events(bars, seed=cfg.seed, rate=cfg.inject_rate,
                                             start=cfg.warmup)
    detectors = build_detectors(list(cfg.detectors) if cfg.detectors else None,
                                contamination=cfg.contamination, seed=cfg.seed)
    dr = detect_walk_forward(
        injected, detectors, warmup=cfg.warmup, retrain_every=cfg.detector_retrain_every,
        history=cfg.detector_history,
        progress=(lambda d, t: progress(f"{sym} detectors", d, t)) if progress else None)
    anomaly = {}
    for d in detectors:
        met = detection_metrics(np.asarray(dr.flags[d.name], bool), labels[dr.rows])
        anomaly[d.name] = {"precision": _f(met["precision"]), "recall": _f(met["recall"]),
                           "fpr": _f(met["fpr"]), "n_injected": int(met["n_injected"])}
    runs = {"forecast": fr, "detect": dr, "injected": injected, "labels": labels,
            "events": events, "fallbacks": dict(getattr(fr, "fallbacks", {}))}
    return SymbolResult(sym, forecast, anomaly, runs)


def evaluate(inputs: dict[str, Bars], cfg: EvalConfig,
             progress: Callable[[str, int, int], None] | None = None) -> tuple[dict, list]:
    """``metrics.json`` content and the per-symbol results (for the report)."""
    results = [evaluate_symbol(b, cfg, progress) for _, b in sorted(inputs.items())]
    metrics = {
        "forecast": {r.symbol: r.forecast for r in results},
        "anomaly": {r.symbol: r.anomaly for r in results},
        "meta": {
            "warmup_windows": cfg.warmup, "retrain_every": cfg.retrain_every,
            "history": cfg.history, "contamination": cfg.contamination,
            "inject_rate": cfg.inject_rate, "seed": cfg.seed,
            "windows": {r.symbol: len(inputs[r.symbol]) for r in results},
            "fallbacks": {r.symbol: r.runs["fallbacks"] for r in results},
            "target": "next 1-min window VWAP = quote_volume / volume",
            "mape_unit": "fraction",
        },
    }
    return metrics, results


def _f(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None
