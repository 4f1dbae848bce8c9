"""Mergeable partial aggregates of trades (one per pane) and their final window values.

A pane is the finest event-time slice (the gcd of all window sizes and slides, 60 s by
default). Each pane keeps a partial aggregate that can be *merged*: sliding 5-minute
windows are built from five 1-minute panes instead of aggregating every trade five times.
The mean and the sum of squared deviations (M2) are merged with Chan et al.'s pairwise
formula, which stays accurate to ~1e-12 at BTC prices where the textbook sum-of-squares
variance loses up to 7e-7 (see docs/architecture.md).

Aggregators follow the ``initialize / agg / result`` shape:

>>> import numpy as np
>>> seg = segment_aggregates(
...     pane=np.array([0, 0, 0]), trade_id=np.array([7, 5, 6]),
...     price=np.array([10.0, 12.0, 11.0]), qty=np.array([1.0, 2.0, 1.0]),
...     is_buyer_maker=np.array([False, True, False]), spike=np.zeros(3, bool),
...     latency_ms=np.zeros(3), recv_latency_ms=np.full(3, np.nan))
>>> agg = PaneAgg.initialize().agg(seg[0])
>>> r = agg.result(window_s=60)
>>> (r["open"], r["close"], r["high"], r["trade_count"], r["buy_volume"], r["missing_trades"])
(12.0, 10.0, 12.0, 3, 2.0, 0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class PaneAgg:
    """Partial aggregate of the trades of one symbol in one pane (or a merge of panes)."""

    n: int = 0
    sum_q: float = 0.0
    sum_pq: float = 0.0
    buy_q: float = 0.0
    sell_q: float = 0.0
    mean: float = 0.0
    m2: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    first_id: int = 0
    first_price: float = 0.0
    last_id: int = 0
    last_price: float = 0.0
    spikes: int = 0
    latency: LatencySketch | None = None
    recv_latency: LatencySketch | None = None

    @classmethod
    def initialize(cls) -> PaneAgg:
        return cls()

    def agg(self, other: PaneAgg) -> PaneAgg:
        """Merge ``other`` into this aggregate (in place) and return self."""
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.sum_q, self.sum_pq = other.n, other.sum_q, other.sum_pq
            self.buy_q, self.sell_q = other.buy_q, other.sell_q
            self.mean, self.m2 = other.mean, other.m2
            self.low, self.high = other.low, other.high
            self.first_id, self.first_price = other.first_id, other.first_price
            self.last_id, self.last_price = other.last_id, other.last_price
            self.spikes = other.spikes
            self.latency = LatencySketch.merged(None, other.latency)
            self.recv_latency = LatencySketch.merged(None, other.recv_latency)
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.mean += delta * other.n / n
        self.n = n
        self.sum_q += other.sum_q
        self.sum_pq += other.sum_pq
        self.buy_q += other.buy_q
        self.sell_q += other.sell_q
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        if other.first_id < self.first_id:
            self.first_id, self.first_price = other.first_id, other.first_price
        if other.last_id > self.last_id:
            self.last_id, self.last_price = other.last_id, other.last_price
        self.spikes += other.spikes
        self.latency = LatencySketch.merged(self.latency, other.latency)
        self.recv_latency = LatencySketch.merged(self.recv_latency, other.recv_latency)
        return self

    def result(self, window_s: float) -> dict[str, object]:
        """The stored aggregate columns (without symbol and window bounds)."""
        n = self.n
        sell = self.sell_q
        lat = LatencySketch.stats_of(self.latency)
        rlat = LatencySketch.stats_of(self.recv_latency)
        return {
            "trade_count": n,
            "open": self.first_price,
            "high": self.high,
            "low": self.low,
            "close": self.last_price,
            "volume": self.sum_q,
            "quote_volume": self.sum_pq,
            "vwap": self.sum_pq / self.sum_q,
            "avg_price": self.mean,
            "price_stddev": math.sqrt(self.m2 / (n - 1)) if n >= 2 else None,
            "buy_volume": self.buy_q,
            "sell_volume": sell,
            "buy_sell_ratio": self.buy_q / sell if sell > 0 else None,
            "trade_intensity": n / window_s,
            "spike_count": self.spikes,
            "first_trade_id": self.first_id,
            "last_trade_id": self.last_id,
            "range_pct": (self.high - self.low) / self.low * 100.0,
            "return_pct": (self.last_price - self.first_price) / self.first_price * 100.0,
            "missing_trades": self.last_id - self.first_id + 1 - n,
            # no trade id missing between the window's first and last: a window left with a
            # hole (data truly lost, backfill impossible) says so rather than passing as whole
            "complete": self.last_id - self.first_id + 1 == n,
            "latency_avg_ms": lat[0],
            "latency_p50_ms": lat[1],
            "latency_p99_ms": lat[2],
            "latency_max_ms": lat[3],
            "recv_latency_avg_ms": rlat[0],
            "recv_latency_p50_ms": rlat[1],
            "recv_latency_p99_ms": rlat[2],
            "recv_latency_max_ms": rlat[3],
        }


class LatencySketch:
    """Mergeable latency summary: exact count, mean and max; p50/p99 within ~1.1 %.

    Values (ms, may be negative: a recorder's clock can run behind the exchange) fall into
    log-spaced buckets, 64 per power of two, so the state of a window is a few hundred
    (bucket, count) pairs whatever its trade count (bounded memory, cheap merges).

    >>> sk = LatencySketch.of(np.array([1.0, 2.0, 3.0, 100.0]))
    >>> avg, p50, p99, mx = LatencySketch.stats_of(sk)
    >>> (avg, mx, abs(p50 - 2.5) / 2.5 < 0.3)
    (26.5, 100.0, True)
    """

    SUB = 64
    #: merged parts kept side by side before they are combined (merging is then a list
    #: concatenation: a live batch merges into its pane without sorting buckets)
    MAX_PARTS = 32
    #: a batch of more values than this is bucketed at once rather than kept raw
    MAX_RAW = 32
    __slots__ = ("_parts", "count", "max", "total")

    def __init__(self, count: int, total: float, mx: float, keys: np.ndarray,
                 counts: np.ndarray | None):
        self.count, self.total, self.max = count, total, mx
        # (keys, counts) pairs; keys may repeat across and (counts None: one each) within
        self._parts: list[tuple[np.ndarray, np.ndarray | None]] = [(keys, counts)]

    @property
    def keys(self) -> np.ndarray:
        """Distinct bucket keys, ascending."""
        return self._compact()[0]

    @property
    def counts(self) -> np.ndarray:
        """Values per bucket of ``keys``."""
        return self._compact()[1]

    def _compact(self) -> tuple[np.ndarray, np.ndarray]:
        parts = self._parts
        if len(parts) > 1 or parts[0][1] is None:
            keys = np.concatenate([k for k, _ in parts]) if len(parts) > 1 else parts[0][0]
            weights = np.concatenate([np.ones(len(k), np.int64) if c is None else c
                                      for k, c in parts])
            keys, inv = np.unique(keys, return_inverse=True)
            counts = np.bincount(inv, weights=weights, minlength=len(keys)).astype(np.int64)
            self._parts = [(keys, counts)]
        return self._parts[0]  # type: ignore[return-value]

    @classmethod
    def bucket(cls, values: np.ndarray) -> np.ndarray:
        b = np.floor(np.log2(np.abs(values) + 1.0) * cls.SUB).astype(np.int64) + 1
        return np.where(values < 0, -b, b)

    @classmethod
    def value(cls, keys: np.ndarray) -> np.ndarray:
        mag = np.exp2((np.abs(keys) - 0.5) / cls.SUB) - 1.0
        return np.where(keys < 0, -mag, mag)

    @classmethod
    def of(cls, values: np.ndarray, buckets: np.ndarray | None = None) -> LatencySketch | None:
        keep = ~np.isnan(values)
        if not keep.all():
            values = values[keep]
            if buckets is not None:
                buckets = buckets[keep]
        if values.size == 0:
            return None
        keys = cls.bucket(values) if buckets is None else buckets
        sk = cls(int(values.size), float(values.sum()), float(values.max()), keys, None)
        if values.size > cls.MAX_RAW:  # raw buckets are kept only for small batches
            sk._compact()
        return sk

    @staticmethod
    def merged(a: LatencySketch | None, b: LatencySketch | None) -> LatencySketch | None:
        if b is None:
            return a
        out = LatencySketch.__new__(LatencySketch)
        if a is None:
            out.count, out.total, out.max, out._parts = b.count, b.total, b.max, list(b._parts)
            return out
        out.count, out.total, out.max = a.count + b.count, a.total + b.total, max(a.max, b.max)
        out._parts = a._parts + b._parts
        if len(out._parts) > LatencySketch.MAX_PARTS:
            out._compact()
        return out

    @staticmethod
    def stats_of(sk: LatencySketch | None) -> tuple[float | None, ...]:
        """(mean, p50, p99, max) or four Nones."""
        if sk is None:
            return (None, None, None, None)
        vals = LatencySketch.value(sk.keys)
        order = np.argsort(vals, kind="stable")
        cum = np.cumsum(sk.counts[order])
        def q(p: float) -> float:
            return float(vals[order][np.searchsorted(cum, p * (sk.count - 1), side="right")])
        return (sk.total / sk.count, min(q(0.5), sk.max), min(q(0.99), sk.max), sk.max)


def segment_aggregates(
    pane: np.ndarray,
    trade_id: np.ndarray,
    price: np.ndarray,
    qty: np.ndarray,
    is_buyer_maker: np.ndarray,
    spike: np.ndarray,
    latency_ms: np.ndarray,
    recv_latency_ms: np.ndarray,
) -> dict[int, PaneAgg]:
    """Partial aggregates of accepted trades, one per distinct value of ``pane``.

    Vectorised: one sort (skipped when the input is already ordered by pane, then trade id,
    as live data almost always is) and a handful of ``reduceat`` calls.
    """
    n = len(pane)
    if n == 0:
        return {}
    d_pane = np.diff(pane)
    ordered = bool(np.all(d_pane >= 0)) and bool(
        np.all((np.diff(trade_id) > 0) | (d_pane > 0))
    )
    if not ordered:
        order = np.lexsort((trade_id, pane))
        pane, trade_id, price, qty = pane[order], trade_id[order], price[order], qty[order]
        is_buyer_maker, spike = is_buyer_maker[order], spike[order]
        latency_ms, recv_latency_ms = latency_ms[order], recv_latency_ms[order]
        d_pane = np.diff(pane)
    starts = np.concatenate(([0], np.flatnonzero(d_pane) + 1))
    ends = np.concatenate((starts[1:], [n]))
    counts = ends - starts
    pq = price * qty
    sum_q = np.add.reduceat(qty, starts)
    sum_pq = np.add.reduceat(pq, starts)
    sell_mask = is_buyer_maker.astype(bool)
    sell_q = np.add.reduceat(np.where(sell_mask, qty, 0.0), starts)
    buy_q = np.add.reduceat(np.where(sell_mask, 0.0, qty), starts)
    # Two-pass mean and M2 inside each segment: exact enough (~1e-15) and mergeable.
    mean = np.add.reduceat(price, starts) / counts
    dev = price - np.repeat(mean, counts)
    m2 = np.add.reduceat(dev * dev, starts)
    # A second correction pass removes the rounding of the first mean (Bjorck).
    corr = np.add.reduceat(dev, starts) / counts
    mean = mean + corr
    m2 = m2 - corr * corr * counts
    low = np.minimum.reduceat(price, starts)
    high = np.maximum.reduceat(price, starts)
    spikes = np.add.reduceat(spike.astype(np.int64), starts)
    lat_b = LatencySketch.bucket(latency_ms)
    out: dict[int, PaneAgg] = {}
    for k in range(len(starts)):
        s, e = int(starts[k]), int(ends[k])
        out[int(pane[s])] = PaneAgg(
            n=int(counts[k]),
            sum_q=float(sum_q[k]),
            sum_pq=float(sum_pq[k]),
            buy_q=float(buy_q[k]),
            sell_q=float(sell_q[k]),
            mean=float(mean[k]),
            m2=max(float(m2[k]), 0.0),
            low=float(low[k]),
            high=float(high[k]),
            first_id=int(trade_id[s]),
            first_price=float(price[s]),
            last_id=int(trade_id[e - 1]),
            last_price=float(price[e - 1]),
            spikes=int(spikes[k]),
            latency=LatencySketch.of(latency_ms[s:e], lat_b[s:e]),
            recv_latency=LatencySketch.of(recv_latency_ms[s:e]),
        )
    return out
