"""Per-trade cleaning: validation, bounded deduplication with gap accounting, spike flags.

Everything here is vectorised over a batch; per-record Python runs only on the rare slow
path (ids out of order, duplicates, or a gap being filled), so clean live data costs a few
numpy passes per batch.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from cryptostream.model import NO_TIME, REASON_INDEX, SYMBOL_RE, RejectReason, TradeBatch

# Trade times outside [2010-01-01, 2100-01-01) cannot be Binance trades: such a record would
# otherwise drag the watermark years ahead and turn every later trade into a late one.
MIN_TRADE_TIME_US = 1_262_304_000_000_000
MAX_TRADE_TIME_US = 4_102_444_800_000_000


def validate(batch: TradeBatch, max_clock_skew_us: int) -> np.ndarray:
    """Reason index per record (0 = valid), extending what the decoder already found."""
    status = batch.status.copy()
    ok = status == 0

    def mark(mask: np.ndarray, reason: RejectReason) -> None:
        nonlocal ok
        hit = ok & mask
        status[hit] = REASON_INDEX[reason]
        ok = ok & ~hit

    if len(batch):
        symbols = batch.symbol
        if isinstance(symbols, str):
            if not SYMBOL_RE.match(symbols):
                mark(np.ones(len(batch), np.bool_), RejectReason.BAD_SYMBOL)
        else:
            uniq = set(symbols.tolist())
            bad = [s for s in uniq if not (isinstance(s, str) and SYMBOL_RE.match(s))]
            if bad:
                mark(np.isin(symbols, np.array(bad, dtype=object)), RejectReason.BAD_SYMBOL)
        price, qty = batch.price, batch.qty
        mark(~(np.isfinite(price) & np.isfinite(qty)), RejectReason.NON_FINITE)
        mark(~(price > 0), RejectReason.NON_POSITIVE_PRICE)
        mark(~(qty > 0), RejectReason.NON_POSITIVE_QTY)
        t = batch.trade_time_us
        mark((t < MIN_TRADE_TIME_US) | (t >= MAX_TRADE_TIME_US), RejectReason.BAD_TYPE)
        if max_clock_skew_us > 0:
            recv = batch.recv_time_us
            has = recv != NO_TIME
            skew = np.abs(t - np.where(has, recv, t))
            mark(has & (skew > max_clock_skew_us), RejectReason.CLOCK_SKEW)
    return status


@dataclass(slots=True)
class Gap:
    """Trade ids ``from_id..to_id`` (inclusive) were missing when ``to_id + 1`` arrived."""

    symbol: str
    from_id: int
    to_id: int
    detected_at_us: int
    after_trade_time_us: int
    filled: int = 0

    @property
    def count(self) -> int:
        return self.to_id - self.from_id + 1


@dataclass(slots=True)
class Hole:
    """Ids ``from_id..to_id`` of gap ``origin`` that have not arrived (yet)."""

    from_id: int
    to_id: int
    origin: Gap


@dataclass(slots=True)
class DedupState:
    """Bounded dedup state of one symbol: the id high-water mark plus the open holes.

    Binance trade ids are strictly consecutive per symbol, so "seen" is ``id <= hwm`` minus
    the ids of open holes. A hole stays open (its ids can still arrive and be accepted) until
    the pane of the trade after its gap is final; then it moves to a short ``expired``
    history, so that a very late fill is rejected as ``late`` rather than counted as a
    duplicate. At most ``max_open_gaps`` holes stay open per symbol.
    """

    hwm: int | None = None
    holes: list[Hole] = field(default_factory=list)  # sorted by from_id, disjoint
    expired: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=1024))

    def find_hole(self, trade_id: int) -> int:
        """Index of the open hole holding ``trade_id``, or -1."""
        i = bisect.bisect_right([h.from_id for h in self.holes], trade_id) - 1
        if i >= 0 and self.holes[i].to_id >= trade_id:
            return i
        return -1

    def in_expired(self, trade_id: int) -> bool:
        return any(lo <= trade_id <= hi for lo, hi in self.expired)

    def open_gap(self, gap: Gap, max_open_gaps: int) -> None:
        self.holes.append(Hole(gap.from_id, gap.to_id, gap))
        while len(self.holes) > max_open_gaps:
            h = self.holes.pop(0)
            self.expired.append((h.from_id, h.to_id))

    def expire(self, closed_before_us: int) -> None:
        """Close holes whose ids could only fall into final windows."""
        if self.holes:
            keep = []
            for h in self.holes:
                if h.origin.after_trade_time_us < closed_before_us:
                    self.expired.append((h.from_id, h.to_id))
                else:
                    keep.append(h)
            self.holes = keep


@dataclass(slots=True)
class DedupResult:
    duplicate: np.ndarray  # bool per record
    late_fill: np.ndarray  # bool: id of an expired hole (to be rejected as late)
    new_gaps: list[Gap]
    filled_gaps: list[Gap]  # gaps whose fill count changed


def dedup(
    state: DedupState,
    symbol: str,
    trade_id: np.ndarray,
    trade_time_us: np.ndarray,
    now_us: int,
    max_open_gaps: int,
) -> DedupResult:
    """Classify ids as new or duplicate and record gaps; updates ``state``.

    >>> st = DedupState()
    >>> r = dedup(st, "BTCUSDT", np.array([1, 2, 5, 2, 4]), np.arange(5), 0, 100)
    >>> r.duplicate.tolist(), [(g.from_id, g.to_id, g.filled) for g in r.new_gaps]
    ([False, False, False, True, False], [(3, 4, 1)])
    """
    n = len(trade_id)
    no = np.zeros(n, np.bool_)
    if n == 0:
        return DedupResult(no, no, [], [])
    hwm = state.hwm
    if not state.holes and (hwm is None or trade_id[0] > hwm):
        d = np.diff(trade_id)
        if np.all(d > 0):  # fast path: strictly increasing, all new
            gaps = []
            if hwm is not None and trade_id[0] > hwm + 1:
                gaps.append(Gap(symbol, hwm + 1, int(trade_id[0]) - 1, now_us, int(trade_time_us[0])))
            for k in np.flatnonzero(d > 1).tolist():
                gaps.append(
                    Gap(symbol, int(trade_id[k]) + 1, int(trade_id[k + 1]) - 1, now_us,
                        int(trade_time_us[k + 1]))
                )
            state.hwm = int(trade_id[-1])
            for g in gaps:
                state.open_gap(g, max_open_gaps)
            return DedupResult(no, no, gaps, [])
    return _dedup_slow(state, symbol, trade_id, trade_time_us, now_us, max_open_gaps)


def _dedup_slow(
    state: DedupState,
    symbol: str,
    trade_id: np.ndarray,
    trade_time_us: np.ndarray,
    now_us: int,
    max_open_gaps: int,
) -> DedupResult:
    n = len(trade_id)
    dup = np.zeros(n, np.bool_)
    late = np.zeros(n, np.bool_)
    new_gaps: list[Gap] = []
    touched: dict[int, Gap] = {}
    for i, tid in enumerate(trade_id.tolist()):
        hwm = state.hwm
        if hwm is None or tid > hwm:
            if hwm is not None and tid > hwm + 1:
                g = Gap(symbol, hwm + 1, tid - 1, now_us, int(trade_time_us[i]))
                state.open_gap(g, max_open_gaps)
                new_gaps.append(g)
            state.hwm = tid
            continue
        j = state.find_hole(tid)
        if j >= 0:
            h = state.holes[j]
            h.origin.filled += 1
            touched[id(h.origin)] = h.origin
            pieces = []
            if h.from_id < tid:
                pieces.append(Hole(h.from_id, tid - 1, h.origin))
            if tid < h.to_id:
                pieces.append(Hole(tid + 1, h.to_id, h.origin))
            state.holes[j : j + 1] = pieces
            continue
        if state.in_expired(tid):
            late[i] = True
            continue
        dup[i] = True
    return DedupResult(dup, late, new_gaps, [g for g in touched.values() if g not in new_gaps])


def spike_flags(price: np.ndarray, last_price: float | None, threshold: float) -> np.ndarray:
    """``|price / previous accepted price - 1| > threshold`` for each accepted trade.

    >>> spike_flags(np.array([100.0, 103.0, 103.5]), 100.0, 0.02).tolist()
    [False, True, False]
    """
    if len(price) == 0:
        return np.zeros(0, np.bool_)
    prev = np.empty_like(price)
    prev[1:] = price[:-1]
    prev[0] = last_price if last_price is not None else price[0]
    return np.abs(price / prev - 1.0) > threshold
