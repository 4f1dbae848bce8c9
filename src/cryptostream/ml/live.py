"""The live ML stage: scores every closed 1-minute window as it closes, forecasts the next.

The pipeline hands ``MLStage.on_windows`` the ``agg_1m`` rows of each flush; the stage
returns rows for the ML tables (``model.ML_TABLES``), written by the sinks in the same
transaction as the windows. Per symbol and closed window, in this order:

1. predictions made for this window are scored (``prediction_errors``);
2. the window's features are computed by ``features.compute`` over the recent windows
   (the same code as training: no train/serve skew);
3. online models learn the now-revealed target of the previous window;
4. after ``warmup_windows`` windows, every detector scores the window (``anomalies``),
   then the online detector learns it (it also learns the windows of the warm-up);
5. every forecaster that can predicts the next window's VWAP and close (``predictions``);
6. batch models (linear, isolation forest, GRU) are refitted on the last
   ``history_windows`` windows every ``retrain_every`` windows, in a background thread;
   the new model is swapped in at the symbol's next window (see ``_refit``). Their state
   is in ``ml_status``.

Saved models (``cryptostream train --models-dir``) are loaded at the first window of a
symbol; a file that cannot be loaded is reported (log + ``ml_status`` 'failed') and the
stage goes on without it until the next scheduled refit replaces it. Windows older than the
last one seen for a symbol (re-emissions) are ignored. Failures of one model never stop the
pipeline: they are logged once per model and shown in ``ml_status``.
"""

from __future__ import annotations

import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from cryptostream.errors import ModelError
from cryptostream.ml import persistence
from cryptostream.ml.detectors import HalfSpaceTreesDetector, build_detectors
from cryptostream.ml.features import (
    ANOMALY_FEATURES,
    FORECAST_FEATURES,
    ROBUST_MIN,
    Bars,
    FeatureState,
    complete,
    compute,
    matrix,
    next_log_return,
)
from cryptostream.ml.forecasters import build_forecasters

log = logging.getLogger("cryptostream.ml")

STEP_MS = 60_000
US = 1_000_000


@dataclass(frozen=True)
class MLConfig:
    forecasters: tuple[str, ...] = ("naive", "linear", "online_linear")
    detectors: tuple[str, ...] = ("isolation_forest", "half_space_trees")
    warmup_windows: int = 60
    retrain_every: int = 60
    history_windows: int = 1440
    contamination: float = 0.05
    models_dir: Path | None = None
    seed: int = 0

    @property
    def min_history(self) -> int:
        """Previous windows the robust z-scores need: the default, or half the warm-up when
        that is shorter (so that models have complete rows to learn from before it ends)."""
        return max(2, min(ROBUST_MIN, (self.warmup_windows - 1) // 2))

    @property
    def warm_rows(self) -> int:
        """Windows with every feature defined by the end of the warm-up (the return's
        z-score needs ``min_history`` returns, i.e. one window more)."""
        return max(1, self.warmup_windows - self.min_history - 1)


@dataclass
class _Model:
    name: str
    kind: str  # 'forecaster' | 'detector'
    obj: object | None
    version: str
    batch: bool
    state: str = "warming_up"
    detail: str = ""
    fitted: bool = False
    pending: tuple | None = None  # (future of a background refit, training span)


@dataclass
class _Symbol:
    features: FeatureState
    history: Bars | None = None
    prev_x: dict | None = None
    prev_vwap: float = math.nan
    since_fit: int = 0
    models: dict[str, _Model] = field(default_factory=dict)
    #: target start (ms) -> [(model, version, vwap, close, base_start_ms, base_vwap, base_close)]
    pending: dict[int, list[tuple]] = field(default_factory=dict)


class MLStage:
    """Per-symbol feature state, models and pending predictions (see module docstring)."""

    def __init__(self, config: MLConfig):
        self.cfg = config
        self.symbols: dict[str, _Symbol] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ml-refit")
        # build the models once now, which imports their libraries (river, scikit-learn:
        # ~1 s here): the first closed window of a live run must not wait for that
        build_forecasters(list(config.forecasters), seed=config.seed)
        build_detectors(list(config.detectors), contamination=config.contamination,
                        seed=config.seed)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- the stage ---------------------------------------------------------------------
    def on_windows(self, rows: list[dict], now_us: int) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {"anomalies": [], "predictions": [],
                                      "prediction_errors": [], "ml_status": []}
        by_symbol: dict[str, list[dict]] = {}
        for r in rows:
            by_symbol.setdefault(r["symbol"], []).append(r)
        for sym, rs in by_symbol.items():
            st = self.symbols.get(sym) or self._new_symbol(sym)
            bars = Bars.from_rows(sym, rs)
            for i in range(len(bars)):
                self._one(sym, st, bars.take(slice(i, i + 1)), now_us, out)
            self._status(sym, st, now_us, out)
        return {t: r for t, r in out.items() if r}

    def _new_symbol(self, sym: str) -> _Symbol:
        cfg = self.cfg
        st = _Symbol(FeatureState(sym, min_history=cfg.min_history))
        fresh = "fresh"
        for obj in build_forecasters(list(cfg.forecasters), seed=cfg.seed):
            st.models[obj.name] = _Model(obj.name, "forecaster", self._tune(obj), fresh,
                                         obj.batch)
        for obj in build_detectors(list(cfg.detectors), contamination=cfg.contamination,
                                   seed=cfg.seed):
            st.models[obj.name] = _Model(obj.name, "detector", self._tune(obj), fresh, obj.batch)
        if cfg.models_dir:
            for m in st.models.values():
                self._load_saved(sym, m)
        self.symbols[sym] = st
        return st

    def _load_saved(self, sym: str, m: _Model) -> None:
        path = persistence.latest(self.cfg.models_dir, m.name, sym)
        if path is None:
            return
        try:
            obj, meta = persistence.load(path)
        except ModelError as exc:
            log.error("model %s for %s not used: %s", m.name, sym, exc)
            m.obj, m.state, m.detail = None, "failed", str(exc)[:500]
            return
        m.obj, m.version, m.fitted = obj, meta.get("version", path.stem), True
        m.detail = f"loaded {path.name}"

    def _one(self, sym: str, st: _Symbol, w: Bars, now_us: int, out: dict) -> None:
        cfg = self.cfg
        new = st.features.push(w)
        if not new:
            return  # an older window re-emitted: already scored
        start_ms, x = new[0]
        self._collect(sym, st)
        vwap, close = float(w.vwap[0]), float(w.close[0])
        # 1. score the predictions made for this window
        for (name, version, p_vwap, p_close, base_ms, b_vwap, b_close) in st.pending.pop(start_ms, []):
            for target, pred, actual, base in (("vwap", p_vwap, vwap, b_vwap),
                                                ("close", p_close, close, b_close)):
                if not (math.isfinite(pred) and math.isfinite(actual)):
                    continue
                err = pred - actual
                out["prediction_errors"].append({
                    "symbol": sym, "target_window_start_us": start_ms * 1000, "model": name,
                    "target": target, "predicted": pred, "actual": actual, "error": err,
                    "abs_error": abs(err),
                    "pct_error": abs(err) / abs(actual) * 100.0 if actual else None,
                    "direction_correct": bool(np.sign(pred - base) == np.sign(actual - base)),
                    "model_version": version, "scored_at_us": now_us,
                })
        for t in [t for t in st.pending if t < start_ms]:  # targets that never closed (gap)
            del st.pending[t]
        # 2./3. history and online learning of the revealed target
        st.history = w if st.history is None else st.history.append(w).tail(cfg.history_windows)
        y_prev = math.log(vwap / st.prev_vwap) if st.prev_vwap > 0 and vwap > 0 else math.nan
        fx_prev = _pick(st.prev_x, FORECAST_FEATURES) if st.prev_x else None
        for m in st.models.values():
            if m.kind == "forecaster" and m.obj is not None and fx_prev and math.isfinite(y_prev) \
                    and complete(fx_prev):
                self._guard(sym, m, lambda m=m: m.obj.learn_one(fx_prev, y_prev))
        st.prev_x, st.prev_vwap = x, vwap
        st.since_fit += 1
        seen = st.features.seen
        if seen >= cfg.warmup_windows:
            if st.since_fit >= cfg.retrain_every:  # the schedule: every batch model
                self._refit(sym, st, [m for m in st.models.values() if m.batch])
            elif unfit := [m for m in st.models.values() if m.batch and not m.fitted]:
                self._refit(sym, st, unfit)  # cold start, or replacing a broken one
        warm = seen >= cfg.warmup_windows
        # 4. anomalies (online detectors learn during the warm-up too)
        ax = _pick(x, ANOMALY_FEATURES)
        for m in st.models.values():
            if m.kind != "detector" or m.obj is None:
                continue
            score = None
            if warm and complete(ax):
                score = self._guard(sym, m, lambda m=m: m.obj.score_one(ax))
            if score is not None and math.isfinite(score):
                m.state = "ready"
                thr = getattr(m.obj, "threshold", None)
                top = m.obj.top_features(ax) if hasattr(m.obj, "top_features") else []
                out["anomalies"].append({
                    "symbol": sym, "window_start_us": start_ms * 1000, "detector": m.name,
                    "score": float(score),
                    "threshold": float(thr) if thr is not None and math.isfinite(thr) else None,
                    "is_anomaly": bool(m.obj.is_anomaly(score)), "model_version": m.version,
                    "top_features": json.dumps([{"feature": f, "value": round(float(v), 4)}
                                                for f, v in top]),
                    "scored_at_us": now_us,
                })
            if not m.batch and complete(ax) and m.obj is not None:
                self._guard(sym, m, lambda m=m: m.obj.learn_one(ax))
        if not warm:
            return
        # 5. forecasts of the next window
        fx = _pick(x, FORECAST_FEATURES)
        target = start_ms + STEP_MS
        for m in st.models.values():
            if m.kind != "forecaster" or m.obj is None:
                continue
            r = self._guard(sym, m, lambda m=m: m.obj.predict_one(fx))
            if r is None or not math.isfinite(r):
                continue
            m.state = "ready"
            p_vwap, p_close = vwap * math.exp(r), close * math.exp(r)
            st.pending.setdefault(target, []).append(
                (m.name, m.version, p_vwap, p_close, start_ms, vwap, close))
            for tgt, pred, base in (("vwap", p_vwap, vwap), ("close", p_close, close)):
                out["predictions"].append({
                    "symbol": sym, "target_window_start_us": target * 1000, "model": m.name,
                    "target": tgt, "predicted": pred, "base_window_start_us": start_ms * 1000,
                    "base_value": base, "made_at_us": now_us, "model_version": m.version,
                })

    # -- fitting -----------------------------------------------------------------------
    def _refit(self, sym: str, st: _Symbol, models: list[_Model]) -> None:
        """Fit new instances of ``models`` on the symbol's history. A model that has never
        been fitted is fitted now (it has nothing to score with meanwhile); a scheduled refit
        runs in the background and is swapped in at the symbol's next window — deterministic
        (a replay waits for it there) and without stalling a live pipeline's trades."""
        if len(models) == sum(m.batch for m in st.models.values()):
            st.since_fit = 0
        hist = st.history
        if hist is None or len(hist) < 2:
            return
        feats = compute(hist, self.cfg.min_history)
        xf, y = matrix(feats, FORECAST_FEATURES)[:-1], next_log_return(hist)[:-1]
        xa = matrix(feats, ANOMALY_FEATURES)
        span = (int(hist.start_ms[0]), int(hist.start_ms[-1]), len(hist))
        for m in models:
            if m.pending is not None:
                continue
            job = partial(self._fit_job, m, xf, y, xa)
            if m.fitted:
                m.pending = (self._pool.submit(job), span)
            else:
                self._apply(sym, m, job, span)

    def _collect(self, sym: str, st: _Symbol) -> None:
        """Swap in the refits started at the previous window (waiting for them if needed)."""
        for m in st.models.values():
            if m.pending is not None:
                (future, span), m.pending = m.pending, None
                self._apply(sym, m, future.result, span)

    def _fit_job(self, m: _Model, xf, y, xa):
        fresh = self._fresh(m)
        if m.kind == "forecaster":
            fresh.fit(xf, y)
        else:
            fresh.fit(xa)
        return fresh

    def _apply(self, sym: str, m: _Model, result, span: tuple[int, int, int]) -> None:
        try:
            fresh = result()
        except Exception as exc:  # noqa: BLE001 - one model failing never stops the pipeline
            self._failed(sym, m, exc)
            return
        m.obj, m.version, m.fitted = fresh, persistence.new_version(m.name, fresh), True
        m.detail = f"refit on {span[2]} windows {span[0]}..{span[1]}"
        log.info("model %s for %s %s", m.name, sym, m.detail, extra={
            "event": "model_retrain", "model": m.name, "symbol": sym, "version": m.version})
        if m.state == "failed":
            m.state = "warming_up"
        if self.cfg.models_dir:
            self._save(sym, m, span)

    def _fresh(self, m: _Model):
        cfg = self.cfg
        if m.kind == "forecaster":
            return self._tune(build_forecasters([m.name], seed=cfg.seed)[0])
        return self._tune(build_detectors([m.name], contamination=cfg.contamination,
                                          seed=cfg.seed)[0])

    def _tune(self, obj):
        """A model's own cold start never outlasts the configured warm-up: the rows a model
        needs before it predicts, and HalfSpaceTrees' reference window, are capped by it."""
        rows = self.cfg.warm_rows
        if isinstance(obj, HalfSpaceTreesDetector) and obj.window_size >= rows:
            learn = max(1, rows - 1)  # learned before the first window it scores
            obj = HalfSpaceTreesDetector(contamination=self.cfg.contamination,
                                         window_size=learn, min_learn=learn, seed=self.cfg.seed)
        for attr in ("min_rows", "min_learn"):
            if hasattr(obj, attr):
                setattr(obj, attr, min(getattr(obj, attr), rows))
        return obj

    def _save(self, sym: str, m: _Model, span: tuple[int, int, int]) -> None:
        meta = {"name": m.name, "kind": m.kind, "symbol": sym, "version": m.version,
                "train_first_ms": span[0], "train_last_ms": span[1], "n_train": span[2]}
        path = Path(self.cfg.models_dir) / sym / m.name / f"{m.version}.joblib"
        try:
            persistence.save(m.obj, path, meta)
        except Exception as exc:  # noqa: BLE001 - an unwritable folder must not stop scoring
            log.warning("could not save %s for %s to %s: %s", m.name, sym, path, exc)

    def _guard(self, sym: str, m: _Model, fn):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - see module docstring
            self._failed(sym, m, exc)
            return None

    def _failed(self, sym: str, m: _Model, exc: BaseException) -> None:
        if m.state != "failed":
            log.error("model %s for %s failed and is off until its next refit: %s",
                      m.name, sym, exc)
        m.obj, m.state, m.detail, m.fitted = None, "failed", f"{type(exc).__name__}: {exc}"[:500], False

    def _status(self, sym: str, st: _Symbol, now_us: int, out: dict) -> None:
        for m in st.models.values():
            out["ml_status"].append({
                "symbol": sym, "component": m.name, "kind": m.kind, "state": m.state,
                "history": st.features.seen, "needed": self.cfg.warmup_windows,
                "model_version": m.version, "detail": m.detail, "updated_at_us": now_us,
            })


def _pick(x: dict, names: tuple[str, ...]) -> dict:
    return {n: x[n] for n in names}
