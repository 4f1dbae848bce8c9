"""Next-window VWAP forecasters: persistence, batch and online linear models, and the factory.

Every forecaster predicts the *log return* ln(VWAP[t+1] / VWAP[t]) from the feature mapping
of window t (``features.FORECAST_FEATURES``); the caller turns it into a price. ``None``
means "cannot predict yet" (cold start or an undefined feature) and the caller falls back to
persistence (a log return of 0).

>>> naive = NaiveForecaster()
>>> naive.predict_one({"ret_log": float("nan")})
0.0
>>> lin = LinearForecaster()
>>> lin.predict_one(dict.fromkeys(FORECAST_FEATURES, 0.0)) is None  # not fitted yet
True
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(200, len(FORECAST_FEATURES)))
>>> lin.fit(X, 0.001 * X[:, 3])
>>> round(lin.predict_one(dict(zip(FORECAST_FEATURES, [0, 0, 0, 0.5, 0, 0]))), 6)
0.0005
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..errors import ConfigError, MissingDependency
from .features import FORECAST_FEATURES, vector

FORECASTER_NAMES = ("naive", "linear", "online_linear", "lstm")


def feature_vector(x: Mapping[str, float]) -> np.ndarray | None:
    """``x`` in ``FORECAST_FEATURES`` order, or None when a value is missing or not finite."""
    return vector(x, FORECAST_FEATURES)


def finite_rows(X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the rows of ``X`` (and ``y``) holding only finite values."""
    X = np.asarray(X, np.float64)
    ok = np.all(np.isfinite(X), axis=1) if X.ndim == 2 else np.zeros(0, bool)
    if y is not None:
        ok &= np.isfinite(np.asarray(y, np.float64))
    return ok


class NaiveForecaster:
    """Persistence: the next VWAP equals the current one (a log return of 0.0), always ready.

    It ignores its inputs, so it predicts 0.0 even when a feature is undefined: it is the
    baseline every other model is scored against and the fallback when they return ``None``.
    """

    name = "naive"
    batch = False

    def fit(self, X: np.ndarray, y: np.ndarray) -> None:
        """Nothing to learn."""

    def learn_one(self, x: Mapping[str, float], y: float) -> None:
        """Nothing to learn."""

    def predict_one(self, x: Mapping[str, float]) -> float:
        return 0.0


class LinearForecaster:
    """Ordinary least squares (scikit-learn ``LinearRegression``) on ``FORECAST_FEATURES``.

    ``fit`` drops the rows holding a non-finite value and replaces the previous fit; with fewer
    than ``min_rows`` usable rows the model is left unfitted. ``predict_one`` returns ``None``
    until a fit succeeded or when ``x`` holds NaN, and clips its prediction to the largest
    absolute target seen in training (a guard against extreme feature values on fat-tailed
    data). ``learn_one`` does nothing: the caller re-fits on a rolling history.
    """

    name = "linear"
    batch = True

    def __init__(self, min_rows: int = 30):
        self.min_rows = min_rows
        self.model = None  # sklearn LinearRegression once fitted
        self.y_abs_max = math.inf
        self.n_train = 0

    def fit(self, X: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import LinearRegression

        X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
        ok = finite_rows(X, y)
        self.model, self.y_abs_max, self.n_train = None, math.inf, int(ok.sum())
        if self.n_train < max(self.min_rows, len(FORECAST_FEATURES) + 1):
            return
        self.model = LinearRegression().fit(X[ok], y[ok])
        self.y_abs_max = float(np.max(np.abs(y[ok])))

    def learn_one(self, x: Mapping[str, float], y: float) -> None:
        """A batch model: learning happens in ``fit``."""

    def predict_one(self, x: Mapping[str, float]) -> float | None:
        v = feature_vector(x)
        if self.model is None or v is None:
            return None
        r = float(self.model.intercept_ + v @ self.model.coef_)
        return min(max(r, -self.y_abs_max), self.y_abs_max)


def _clip_z(x: dict) -> dict:
    """Standardized features clipped to ±5 so one extreme window cannot derail SGD."""
    return {k: min(max(v, -5.0), 5.0) for k, v in x.items()}


class OnlineLinearForecaster:
    """A River linear regression learned one window at a time (SGD on standardized data).

    Pipeline: ``StandardScaler | clip to ±5 | LinearRegression(SGD(lr), l2)``. The target is
    winsorized to ``clip_sd`` running standard deviations (after 10 samples) and divided by
    its running standard deviation before learning, so heavy-tailed returns neither blow up
    the weights nor dominate them; predictions are scaled back and clipped the same way.
    ``predict_one`` returns ``None`` until ``min_learn`` samples were learned. ``fit`` warm-
    starts: it learns the rows in order (it does not reset the model).

    >>> m = OnlineLinearForecaster(min_learn=2)
    >>> x = dict.fromkeys(FORECAST_FEATURES, 0.1)
    >>> m.predict_one(x) is None
    True
    >>> m.learn_one(x, 0.001); m.learn_one(x, -0.001)
    >>> isinstance(m.predict_one(x), float)
    True
    """

    name = "online_linear"
    batch = False

    def __init__(self, lr: float = 0.001, l2: float = 1e-3, clip_sd: float = 4.0,
                 min_learn: int = 30):
        from river import compose, linear_model, optim, preprocessing, stats

        self.lr, self.l2, self.clip_sd, self.min_learn = lr, l2, clip_sd, min_learn
        self.model = (
            preprocessing.StandardScaler()
            | compose.FuncTransformer(_clip_z)
            | linear_model.LinearRegression(optimizer=optim.SGD(lr), l2=l2, intercept_lr=lr,
                                            clip_gradient=10.0)
        )
        self.y_stats = stats.Var()  # running mean / variance of the winsorized target
        self.n_learned = 0

    def _y_mean_sd(self) -> tuple[float, float]:
        return self.y_stats.mean.get(), math.sqrt(max(self.y_stats.get(), 0.0))

    def fit(self, X: np.ndarray, y: np.ndarray) -> None:
        for xi, yi in zip(np.asarray(X, np.float64), np.asarray(y, np.float64)):
            self.learn_one(dict(zip(FORECAST_FEATURES, xi.tolist())), float(yi))

    def learn_one(self, x: Mapping[str, float], y: float) -> None:
        v = feature_vector(x)
        if v is None or not math.isfinite(y):
            return
        mean, sd = self._y_mean_sd()
        if self.y_stats.mean.n >= 10 and sd > 0:
            y = min(max(y, mean - self.clip_sd * sd), mean + self.clip_sd * sd)
        self.y_stats.update(y)
        _, sd = self._y_mean_sd()
        self.n_learned += 1
        if sd > 0:
            self.model.learn_one(dict(zip(FORECAST_FEATURES, v.tolist())), y / sd)

    def predict_one(self, x: Mapping[str, float]) -> float | None:
        v = feature_vector(x)
        if v is None or self.n_learned < self.min_learn:
            return None
        mean, sd = self._y_mean_sd()
        r = float(self.model.predict_one(dict(zip(FORECAST_FEATURES, v.tolist())))) * sd
        if not math.isfinite(r):
            return None
        return min(max(r, mean - self.clip_sd * sd), mean + self.clip_sd * sd)


def torch_available() -> bool:
    """True when the optional ``torch`` extra imports."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def build_forecasters(names: tuple[str, ...] | list[str] | None = None, seed: int = 0) -> list:
    """New forecasters by name (default: all of ``FORECASTER_NAMES``, in that order).

    With ``names=None`` the "lstm" model is silently left out when torch is not installed;
    asking for it explicitly without torch raises ``MissingDependency``. An unknown name
    raises ``ConfigError``.

    >>> [m.name for m in build_forecasters(["naive", "linear"])]
    ['naive', 'linear']
    """
    wanted = FORECASTER_NAMES if names is None else tuple(names)
    unknown = [n for n in wanted if n not in FORECASTER_NAMES]
    if unknown:
        raise ConfigError(f"unknown forecaster {', '.join(map(repr, unknown))}; "
                          f"choose from {', '.join(FORECASTER_NAMES)}")
    out: list = []
    for n in wanted:
        if n == "naive":
            out.append(NaiveForecaster())
        elif n == "linear":
            out.append(LinearForecaster())
        elif n == "online_linear":
            out.append(OnlineLinearForecaster())
        elif n == "lstm":
            if not torch_available():
                if names is None:
                    continue
                raise MissingDependency("torch", "torch")
            from .lstm import GRUForecaster

            out.append(GRUForecaster(seed=seed))
    return out
