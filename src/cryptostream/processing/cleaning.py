"""Per-trade cleaning: validation, bounded deduplication with gap accounting, spike flags.

Everything here is vectorised over a batch; per-record Python runs only on the rare slow
path (ids out of order, duplicates, or a gap being filled), so clean live data costs a few
numpy passes per batch.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from cryptostream.model import (
    NO_TIME,
    REASON_INDEX,
    SYMBOL_RE,
    RejectReason,
    SymbolCodes,
    TradeBatch,
)

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
        elif isinstance(symbols, SymbolCodes):
            bad_codes = [k for k, s in enumerate(symbols.names) if not SYMBOL_RE.match(s)]
            if bad_codes:
                mark(np.isin(symbols.codes, bad_codes), RejectReason.BAD_SYMBOL)
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
    #: The watermark just before the gap was seen: while a backfill may still bring the
    #: missing ids, the symbol's watermark is held here (see ``Watermark.hold``).
    hold_wm_us: int = 0
    #: False for the ids below the first trade seen (a stream that starts out of order):
    #: tracked so they can still be accepted, but not reported as a gap.
    published: bool = True

    @property
    def count(self) -> int:
        return self.to_id - self.from_id + 1


@dataclass(slots=True)
class Hole:
    """Ids ``from_id..to_id`` of gap ``origin`` that have not arrived (yet)."""

    from_id: int
    to_id: int
    origin: Gap


NEG_TIME = -(2**62)
NO_HOLD = 2**62
MIN_ID = -(2**62)
#: Retired id ranges remembered per symbol (to tell a very late record from a duplicate).
MAX_EXPIRED = 1024


@dataclass(slots=True)
class Watermark:
    """Event-time progress of one symbol: the max trade time seen and the watermark.

    ``closed_before(lateness, pane)`` is the start of the first pane that is not final yet:
    a trade earlier than it would fall into a window already written (``late``).
    """

    max_t: int = NEG_TIME
    wm: int = NEG_TIME
    #: Upper bound on the watermark while a gap's backfill is pending (``NO_HOLD``: none).
    hold: int = NO_HOLD

    def current(self, lateness_us: int) -> int:
        return min(max(self.wm, self.max_t - lateness_us), self.hold)

    @staticmethod
    def closed_before(wm: int, pane_us: int) -> int:
        return (wm // pane_us) * pane_us


@dataclass(slots=True)
class DedupState:
    """Bounded dedup state of one symbol: id high-water mark, floor, and open holes.

    Binance trade ids are strictly consecutive per symbol, so "seen" is
    ``floor <= id <= hwm`` minus the ids of open holes. Ids below the first id seen are new
    while that first trade's pane is open (a stream may start out of order). A hole stays
    open (its ids can still arrive and be accepted) until the pane of the trade after its gap
    is final; then it moves to a short ``expired`` history, so that a very late fill is
    judged on its time (late, or accepted) rather than counted as a duplicate; a retired id
    is seen once it arrives. At most ``max_open_gaps`` holes
    stay open per symbol.
    """

    hwm: int | None = None
    floor: int | None = None
    floor_time_us: int = NEG_TIME
    floor_open: bool = True
    holes: list[Hole] = field(default_factory=list)  # sorted by from_id, disjoint
    expired: list[tuple[int, int]] = field(default_factory=list)  # at most MAX_EXPIRED

    def find_hole(self, trade_id: int) -> int:
        """Index of the open hole holding ``trade_id``, or -1."""
        i = bisect.bisect_right([h.from_id for h in self.holes], trade_id) - 1
        if i >= 0 and self.holes[i].to_id >= trade_id:
            return i
        return -1

    def take_expired(self, trade_id: int) -> bool:
        """True if ``trade_id`` is a never-seen id of an expired range; it is seen from now on."""
        for k, (lo, hi) in enumerate(self.expired):
            if lo <= trade_id <= hi:
                pieces = [r for r in ((lo, trade_id - 1), (trade_id + 1, hi)) if r[0] <= r[1]]
                self.expired[k : k + 1] = pieces
                return True
        return False

    def _retire(self, lo: int, hi: int) -> None:
        self.expired.append((lo, hi))
        if len(self.expired) > MAX_EXPIRED:
            del self.expired[0]

    def open_gap(self, gap: Gap, max_open_gaps: int) -> None:
        bisect.insort(self.holes, Hole(gap.from_id, gap.to_id, gap), key=lambda h: h.from_id)
        while len(self.holes) > max_open_gaps:
            h = self.holes.pop(0)
            self._retire(h.from_id, h.to_id)

    def expire(self, closed_before_us: int) -> None:
        """Retire the holes (and the region below the floor) that only final panes can hold."""
        if self.floor_open and self.floor is not None and self.floor_time_us < closed_before_us:
            self.floor_open = False
            self._retire(MIN_ID, self.floor - 1)
        if self.holes:
            keep = []
            for h in self.holes:
                if h.origin.after_trade_time_us < closed_before_us:
                    self._retire(h.from_id, h.to_id)
                else:
                    keep.append(h)
            self.holes = keep


@dataclass(slots=True)
class Classified:
    duplicate: np.ndarray  # bool per record
    late: np.ndarray  # bool per record: its pane was final when it arrived
    new_gaps: list[Gap]
    filled_gaps: list[Gap]  # earlier gaps whose fill count changed


def classify(
    state: DedupState,
    mark: Watermark,
    symbol: str,
    trade_id: np.ndarray,
    trade_time_us: np.ndarray,
    now_us: int,
    lateness_us: int,
    pane_us: int,
    max_open_gaps: int,
    hold_gaps: bool = False,
) -> Classified:
    """Duplicate and late flags for valid records of one symbol, in arrival order.

    Per-record semantics, whatever the batch boundaries: record i is judged against the
    state left by records 0..i-1. Updates ``state`` and ``mark``. With ``hold_gaps`` (a
    source that backfills), a new gap caps ``mark.hold`` at the watermark just before it, so
    the missing ids are not judged late when the backfill brings them.

    >>> st, wm = DedupState(), Watermark()
    >>> r = classify(st, wm, "BTCUSDT", np.array([1, 2, 5, 2, 4]), np.arange(5) * 1000, 0,
    ...              2_000_000, 60_000_000, 100)
    >>> r.duplicate.tolist(), [(g.from_id, g.to_id, g.filled) for g in r.new_gaps]
    ([False, False, False, True, False], [(3, 4, 1)])
    """
    n = len(trade_id)
    if n == 0:
        no = np.zeros(0, np.bool_)
        return Classified(no, no, [], [])
    hwm = state.hwm
    if not state.holes and (hwm is None or trade_id[0] > hwm):
        d = np.diff(trade_id)
        if np.all(d > 0):
            return _classify_fast(state, mark, symbol, trade_id, trade_time_us, d, now_us,
                                  lateness_us, pane_us, max_open_gaps, hold_gaps)
    return _classify_slow(state, mark, symbol, trade_id, trade_time_us, now_us, lateness_us,
                          pane_us, max_open_gaps, hold_gaps)


def _classify_fast(state, mark, symbol, trade_id, t, d, now_us, lateness_us, pane_us,
                   max_open_gaps, hold_gaps) -> Classified:
    """Strictly increasing new ids: no duplicates; lateness from a running max."""
    n = len(trade_id)
    hwm = state.hwm
    cm = np.maximum.accumulate(t)
    prev_max = np.empty_like(cm)
    prev_max[0] = mark.max_t
    prev_max[1:] = np.maximum(cm[:-1], mark.max_t)
    wm_before = np.minimum(np.maximum(prev_max - lateness_us, mark.wm), mark.hold)
    gaps = []
    if hwm is None:
        state.floor, state.floor_time_us = int(trade_id[0]), int(t[0])
    elif trade_id[0] > hwm + 1:
        gaps.append((0, hwm + 1))
    gaps.extend((k + 1, int(trade_id[k]) + 1) for k in np.flatnonzero(d > 1).tolist())
    found = []
    for k, from_id in gaps:
        g = Gap(symbol, from_id, int(trade_id[k]) - 1, now_us, int(t[k]),
                hold_wm_us=int(wm_before[k]))
        if hold_gaps and g.hold_wm_us < mark.hold:
            mark.hold = g.hold_wm_us
            wm_before[k:] = np.minimum(wm_before[k:], g.hold_wm_us)
        state.open_gap(g, max_open_gaps)
        found.append(g)
    state.hwm = int(trade_id[-1])
    late = (t // pane_us + 1) * pane_us <= wm_before
    mark.max_t = max(mark.max_t, int(cm[-1]))
    mark.wm = mark.current(lateness_us)
    return Classified(np.zeros(n, np.bool_), late, found, [])


def _classify_slow(state, mark, symbol, trade_id, t, now_us, lateness_us, pane_us,
                   max_open_gaps, hold_gaps) -> Classified:
    """Record by record. An id is new when above the high-water mark, in an open hole, below
    the floor while the stream's start is still open, or in a retired range (seen from then
    on); otherwise it is a duplicate. A new record is late when its pane is final."""
    n = len(trade_id)
    dup = np.zeros(n, np.bool_)
    late = np.zeros(n, np.bool_)
    new_gaps: list[Gap] = []
    touched: dict[int, Gap] = {}
    times = t.tolist()
    last_closed = None
    for i, tid in enumerate(trade_id.tolist()):
        ti = times[i]
        wm = mark.current(lateness_us)
        closed = Watermark.closed_before(wm, pane_us)
        if closed != last_closed:
            state.expire(closed)
            last_closed = closed
        is_late = ti < closed
        hwm = state.hwm
        if hwm is None:
            state.hwm = state.floor = tid
            state.floor_time_us = ti
        elif tid > hwm:
            if tid > hwm + 1:
                g = Gap(symbol, hwm + 1, tid - 1, now_us, ti, hold_wm_us=wm)
                if hold_gaps:
                    mark.hold = min(mark.hold, wm)
                state.open_gap(g, max_open_gaps)
                new_gaps.append(g)
            state.hwm = tid
        elif tid < state.floor and state.floor_open:
            if tid < state.floor - 1:  # ids between this and the old floor may still come
                state.open_gap(Gap(symbol, tid + 1, state.floor - 1, now_us, state.floor_time_us,
                                   published=False), max_open_gaps)
            state.floor, state.floor_time_us = tid, ti
        else:
            j = state.find_hole(tid)
            if j >= 0:
                h = state.holes[j]
                pieces = [Hole(lo, hi, h.origin)
                          for lo, hi in ((h.from_id, tid - 1), (tid + 1, h.to_id)) if lo <= hi]
                state.holes[j : j + 1] = pieces
                if not is_late and h.origin.published:
                    h.origin.filled += 1
                    touched[id(h.origin)] = h.origin
            elif not state.take_expired(tid):
                dup[i] = True
                continue
        if is_late:
            late[i] = True
        elif ti > mark.max_t:
            mark.max_t = ti
    mark.wm = mark.current(lateness_us)
    new_gaps = [g for g in new_gaps if g.published]
    filled = [g for g in touched.values() if all(g is not x for x in new_gaps)]
    return Classified(dup, late, new_gaps, filled)


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
    # |p/prev - 1| > threshold, written without the division's rounding at the boundary
    return np.abs(price - prev) > threshold * prev
