"""The ``Forecaster`` and ``AnomalyDetector`` seams every model implements.

Both follow River's one-at-a-time protocol so the same object serves the walk-forward
evaluation and the live pipeline:

* **Forecaster** — ``predict_one(x) -> float | None`` returns the predicted *log return*
  of the next window's VWAP over the current window's VWAP (``None`` while the model cannot
  predict yet: cold start); ``learn_one(x, y)`` learns from one revealed outcome (online
  models) or buffers it; ``fit(X, y)`` (re)trains a batch model on a history and replaces
  its state (online models may ignore it or warm-start). ``x`` is a feature mapping
  (``features.FORECAST_FEATURES``), ``X`` a 2-D float array in that column order.
* **AnomalyDetector** — ``score_one(x) -> float | None`` (higher = more anomalous; ``None``
  while warming up), ``is_anomaly(score) -> bool`` against the detector's calibrated
  threshold, ``learn_one(x)`` and ``fit(X)`` as above. ``x`` uses ``features.ANOMALY_FEATURES``.

Lifecycle: construct with hyper-parameters (and a ``seed`` where randomness is involved) ->
``fit`` on a history and/or ``learn_one`` as windows close -> ``predict_one``/``score_one``
for each new window. Failure behaviour: a model never raises on a feature vector holding
NaN (an undefined feature at the start of a series or after a gap); it returns ``None``
instead. Errors loading a saved model raise ``errors.ModelError`` (see ``ml.persistence``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

Features = Mapping[str, float]


@runtime_checkable
class Forecaster(Protocol):
    #: stable name used in ``predictions.model`` and ``metrics.json`` ("naive", "linear", ...)
    name: str
    #: True when the model only learns in batches (``fit``), False when ``learn_one`` learns
    batch: bool

    def fit(self, X: np.ndarray, y: np.ndarray) -> None: ...

    def learn_one(self, x: Features, y: float) -> None: ...

    def predict_one(self, x: Features) -> float | None: ...


@runtime_checkable
class AnomalyDetector(Protocol):
    name: str
    batch: bool

    def fit(self, X: np.ndarray) -> None: ...

    def learn_one(self, x: Features) -> None: ...

    def score_one(self, x: Features) -> float | None: ...

    def is_anomaly(self, score: float) -> bool: ...
