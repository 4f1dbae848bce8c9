"""Anomaly detectors on window features: a batch Isolation Forest and online Half-Space Trees.

Both score a window's ``features.ANOMALY_FEATURES`` (robust z-scores of return, log volume,
log trade count and range, plus the taker-buy imbalance): higher = more anomalous, ``None``
while warming up or when a feature is undefined. ``is_anomaly(score)`` compares against a
threshold calibrated so that about ``contamination`` of normal traffic is flagged, and
``top_features(x)`` names the features that explain a flag.

>>> top_features({"ret_z": -8.0, "log_volume_z": 0.5, "log_count_z": 2.0, "range_z": 1.0,
...               "imbalance": 0.1}, k=2)
[('ret_z', -8.0), ('log_count_z', 2.0)]
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from ..errors import ConfigError
from .features import ANOMALY_FEATURES

DETECTOR_NAMES = ("isolation_forest", "half_space_trees")


def anomaly_vector(x: Mapping[str, float]) -> np.ndarray | None:
    """``x`` in ``ANOMALY_FEATURES`` order, or None when a value is missing or not finite."""
    try:
        v = np.array([float(x[n]) for n in ANOMALY_FEATURES], np.float64)
    except (KeyError, TypeError, ValueError):
        return None
    return v if bool(np.all(np.isfinite(v))) else None


def top_features(x: Mapping[str, float], k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` anomaly features with the largest absolute value (they are z-like), largest
    first; undefined values are skipped."""
    items = [(n, float(x[n])) for n in ANOMALY_FEATURES if n in x and math.isfinite(x[n])]
    return sorted(items, key=lambda kv: -abs(kv[1]))[:k]


class IsolationForestDetector:
    """scikit-learn ``IsolationForest`` re-fitted on a history of windows.

    ``fit(X)`` drops rows with a non-finite value (fewer than ``min_rows`` left: unfitted) and
    sets the threshold so that ``contamination`` of the training rows score above it.
    ``score_one`` is ``-score_samples`` (higher = more anomalous); ``None`` before a fit or
    when ``x`` has NaN. ``learn_one`` does nothing (a batch model). ``score_many(X)`` scores
    a block of rows at once (NaN where ``score_one`` gives ``None``), for the walk-forward.
    """

    name = "isolation_forest"
    batch = True

    def __init__(self, contamination: float = 0.05, n_estimators: int = 100,
                 max_samples: int | str = "auto", min_rows: int = 50, seed: int = 0):
        self.contamination, self.n_estimators = contamination, n_estimators
        self.max_samples, self.min_rows, self.seed = max_samples, min_rows, seed
        self.model = None
        self.threshold = math.inf
        self.n_train = 0

    def fit(self, X: np.ndarray) -> None:
        from sklearn.ensemble import IsolationForest

        X = np.asarray(X, np.float64)
        ok = np.all(np.isfinite(X), axis=1) if X.ndim == 2 and len(X) else np.zeros(0, bool)
        self.model, self.threshold, self.n_train = None, math.inf, int(ok.sum())
        if self.n_train < self.min_rows:
            return
        model = IsolationForest(n_estimators=self.n_estimators, max_samples=self.max_samples,
                                contamination=self.contamination, random_state=self.seed)
        self.model = model.fit(X[ok])
        self.threshold = float(-model.offset_)  # score_samples < offset_ <=> flagged

    def learn_one(self, x: Mapping[str, float]) -> None:
        """A batch model: learning happens in ``fit``."""

    def score_one(self, x: Mapping[str, float]) -> float | None:
        v = anomaly_vector(x)
        if self.model is None or v is None:
            return None
        return float(-self.model.score_samples(v[None, :])[0])

    def score_many(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, np.float64)
        out = np.full(len(X), np.nan)
        ok = np.all(np.isfinite(X), axis=1) if len(X) else np.zeros(0, bool)
        if self.model is not None and ok.any():
            out[ok] = -self.model.score_samples(X[ok])
        return out

    def is_anomaly(self, score: float | None) -> bool:
        return score is not None and math.isfinite(score) and score > self.threshold

    def top_features(self, x: Mapping[str, float], k: int = 3) -> list[tuple[str, float]]:
        return top_features(x, k)


def _squash(v: np.ndarray, scale: float) -> dict[str, float]:
    """z-like values -> (0, 1) with a logistic curve: 0 -> 0.5, ±2*scale -> 0.12 / 0.88."""
    u = 1.0 / (1.0 + np.exp(-v / scale))
    return dict(zip(ANOMALY_FEATURES, u.tolist()))


class HalfSpaceTreesDetector:
    """River ``HalfSpaceTrees`` learned window by window, with a rolling-quantile threshold.

    Features are squashed into (0, 1) by a logistic curve (``squash_scale`` z-units per unit
    of logit) so the trees' fixed [0, 1] limits fit them. ``learn_one`` scores the window
    first, adds the score to a rolling ``1 - contamination`` quantile of the last
    ``quantile_window`` scores (the threshold) and, unless the score is above the threshold
    (``protect``), lets the trees learn it, so a burst of anomalies does not become normal.
    ``score_one`` returns ``None`` until ``min_learn`` complete windows were learned and the
    trees' first reference window (``window_size`` windows) is complete; ``is_anomaly`` is
    False until ``min_learn`` scores are in the quantile. ``fit(X)`` learns the rows in order.
    """

    name = "half_space_trees"
    batch = False

    def __init__(self, contamination: float = 0.05, n_trees: int = 25, height: int = 8,
                 window_size: int = 100, squash_scale: float = 2.0,
                 quantile_window: int = 1000, protect: bool = True, min_learn: int = 30,
                 seed: int = 0):
        from river import anomaly, stats

        self.contamination, self.n_trees, self.height = contamination, n_trees, height
        self.window_size, self.squash_scale = window_size, squash_scale
        self.quantile_window, self.protect, self.min_learn = quantile_window, protect, min_learn
        self.seed = seed
        self.model = anomaly.HalfSpaceTrees(
            n_trees=n_trees, height=height, window_size=window_size,
            limits={n: (0.0, 1.0) for n in ANOMALY_FEATURES}, seed=seed)
        self.quantile = stats.RollingQuantile(q=1.0 - contamination,
                                              window_size=quantile_window)
        self.n_learned = 0
        self.n_scores = 0

    @property
    def ready(self) -> bool:
        return self.n_learned >= max(self.min_learn, self.window_size)

    @property
    def threshold(self) -> float:
        if self.n_scores < self.min_learn:
            return math.inf
        q = self.quantile.get()
        return math.inf if q is None else float(q)

    def fit(self, X: np.ndarray) -> None:
        for xi in np.asarray(X, np.float64):
            self.learn_one(dict(zip(ANOMALY_FEATURES, xi.tolist())))

    def learn_one(self, x: Mapping[str, float]) -> None:
        v = anomaly_vector(x)
        if v is None:
            return
        u = _squash(v, self.squash_scale)
        if self.ready:
            score = float(self.model.score_one(u))
            flagged = self.is_anomaly(score)
            self.quantile.update(score)
            self.n_scores += 1
            if flagged and self.protect:
                return
        self.model.learn_one(u)
        self.n_learned += 1

    def score_one(self, x: Mapping[str, float]) -> float | None:
        v = anomaly_vector(x)
        if v is None or not self.ready:
            return None
        return float(self.model.score_one(_squash(v, self.squash_scale)))

    def is_anomaly(self, score: float | None) -> bool:
        return score is not None and math.isfinite(score) and score > self.threshold

    def top_features(self, x: Mapping[str, float], k: int = 3) -> list[tuple[str, float]]:
        return top_features(x, k)


def build_detectors(names: tuple[str, ...] | list[str] | None = None,
                    contamination: float = 0.05, seed: int = 0) -> list:
    """New detectors by name (default: all of ``DETECTOR_NAMES``, in that order); an unknown
    name raises ``ConfigError``.

    >>> [d.name for d in build_detectors()]
    ['isolation_forest', 'half_space_trees']
    """
    wanted = DETECTOR_NAMES if names is None else tuple(names)
    unknown = [n for n in wanted if n not in DETECTOR_NAMES]
    if unknown:
        raise ConfigError(f"unknown detector {', '.join(map(repr, unknown))}; "
                          f"choose from {', '.join(DETECTOR_NAMES)}")
    if not 0.0 < contamination < 0.5:
        raise ConfigError(f"contamination must be in (0, 0.5), got {contamination}")
    out: list = []
    for n in wanted:
        if n == "isolation_forest":
            out.append(IsolationForestDetector(contamination=contamination, seed=seed))
        else:
            out.append(HalfSpaceTreesDetector(contamination=contamination, seed=seed))
    return out
