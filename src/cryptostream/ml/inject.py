"""Synthetic anomaly injection into real or simulated windows, with ground-truth labels.

Three kinds of event, chosen at random (seeded) with equal probability:

* ``price_jump``: a level shift of 1-5 % up or down from row t onward (open, high, low, close
  and quote volume of every row >= t are scaled), so only window t's return is abnormal;
  ``magnitude`` is the price factor (e.g. 1.03 or 0.98).
* ``volume_burst``: volume, quote volume, taker-buy volume and trade count of row t times
  5-20 (``magnitude``); the VWAP and the buy/sell imbalance are unchanged.
* ``drought``: the same columns of row t times 0.01-0.05 (``magnitude``).

``round(rate * rows after start)`` events are placed uniformly at random among the
placements that keep them ``min_gap`` rows apart and none before ``start``.

>>> from cryptostream.ml.features import Bars
>>> n = 200
>>> bars = Bars.from_columns("X", {"start_ms": np.arange(n) * 60_000, "open": np.ones(n),
...     "high": np.ones(n), "low": np.ones(n), "close": np.ones(n), "volume": np.ones(n),
...     "quote_volume": np.ones(n), "trade_count": np.full(n, 10.0), "buy_volume": np.ones(n)})
>>> out, labels, events = inject_events(bars, seed=1, rate=0.05, start=40)
>>> len(events), int(labels.sum()), all(e.row >= 40 for e in events)
(8, 8, True)
>>> rows = labels.nonzero()[0]
>>> {e.kind for e in events} <= set(KINDS), bool(np.diff(rows).min() >= 15)
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .features import WARMUP_WINDOWS, Bars

KINDS = ("price_jump", "volume_burst", "drought")
_ACTIVITY = ("volume", "quote_volume", "buy_volume", "trade_count")


@dataclass(frozen=True, slots=True)
class Event:
    """One injected anomaly: the row it hits, its kind and the factor applied."""

    row: int
    kind: str
    magnitude: float


def event_rows(n_rows: int, rng: np.random.Generator, rate: float, start: int,
               min_gap: int) -> np.ndarray:
    """Sorted rows in [start, n_rows), ``min_gap`` apart, as many as ``rate`` asks for
    (capped at what fits)."""
    span = n_rows - max(start, 0)
    if span <= 0 or rate <= 0:
        return np.zeros(0, np.int64)
    gap = max(int(min_gap), 1)
    n = min(round(rate * span), (span - 1) // gap + 1)
    if n <= 0:
        return np.zeros(0, np.int64)
    # choose n of the m slots, then spread them out: slot k of the sorted draw + k*(gap-1)
    m = span - (n - 1) * (gap - 1)
    slots = np.sort(rng.choice(m, size=n, replace=False))
    return max(start, 0) + slots + np.arange(n) * (gap - 1)


def inject_events(bars: Bars, seed: int, rate: float = 0.02, start: int = WARMUP_WINDOWS,
                  min_gap: int = 15) -> tuple[Bars, np.ndarray, list[Event]]:
    """A copy of ``bars`` with anomalies injected, a boolean label per row, and the events."""
    rng = np.random.default_rng(seed)
    cols = {name: getattr(bars, name).copy() for name in (
        "open", "high", "low", "close", "volume", "quote_volume", "trade_count", "buy_volume")}
    labels = np.zeros(len(bars), bool)
    events: list[Event] = []
    for t in event_rows(len(bars), rng, rate, start, min_gap).tolist():
        kind = KINDS[int(rng.integers(len(KINDS)))]
        if kind == "price_jump":
            size = float(rng.uniform(0.01, 0.05))
            factor = 1.0 + size if rng.random() < 0.5 else 1.0 - size
            for name in ("open", "high", "low", "close", "quote_volume"):
                cols[name][t:] *= factor
        else:
            lo, hi = (5.0, 20.0) if kind == "volume_burst" else (0.01, 0.05)
            factor = float(rng.uniform(lo, hi))
            for name in _ACTIVITY:
                cols[name][t] *= factor
        labels[t] = True
        events.append(Event(t, kind, factor))
    return replace(bars, **cols), labels, events
