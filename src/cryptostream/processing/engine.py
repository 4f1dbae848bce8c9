"""The processor: cleans batches of trades and turns them into final event-time windows.

Semantics are those of a record-at-a-time pipeline (so results never depend on how the
stream was cut into batches), computed a batch at a time:

* per symbol, a record is first validated, then deduplicated by trade id, then checked for
  lateness against the watermark *as it stood just before that record*
  (``max trade time so far - allowed lateness``);
* a trade is ``late`` when the pane (finest window slice) holding it is already final,
  which is exactly when some window containing it has been written;
* a window ``[start, end)`` is final, and written once, when the watermark reaches ``end``;
  at the end of a finite input every open window is written.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from cryptostream.model import (
    NO_TIME,
    REASON_CODES,
    SYMBOL_RE,
    US_PER_S,
    Rejected,
    RejectReason,
    SourceBatch,
    SymbolCodes,
    TradeBatch,
    WindowSpec,
)
from cryptostream.processing.aggregates import PaneAgg, segment_aggregates
from cryptostream.processing.cleaning import (
    MAX_TRADE_TIME_US,
    MIN_TRADE_TIME_US,
    NEG_TIME,
    NO_HOLD,
    DedupState,
    Gap,
    Watermark,
    classify,
    spike_flags,
    validate,
)

_NEG = NEG_TIME
END_OF_TIME_US = 2**62

SKEW_EVERY_US = 1_000_000


@dataclass(slots=True)
class EngineConfig:
    """What the processor needs to know (a slice of the settings)."""

    windows: tuple[WindowSpec, ...]
    allowed_lateness_us: int = 2 * US_PER_S
    max_clock_skew_us: int = 0
    spike_threshold: float = 0.02
    max_open_gaps: int = 10_000
    #: Wall time a gap may hold its symbol's windows open while a backfill brings the
    #: missing ids (0: never hold, as for replays, whose gaps are final).
    gap_wait_us: int = 0
    #: validate, deduplicate, flag spikes and enrich only: no lateness and no windows (the
    #: Kafka ``ingest`` role; the ``process`` role windows the clean trades)
    clean_only: bool = False


@dataclass(slots=True)
class SymbolCounters:
    """Per-symbol counts; ``received == accepted + rejected + duplicates + ignored``."""

    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    ignored: int = 0
    rejected: Counter = field(default_factory=Counter)
    gaps: int = 0
    gap_trades: int = 0
    max_trade_time_us: int | None = None
    watermark_us: int | None = None
    gaps_open: int = 0
    last_recv_skew_ms: float | None = None
    #: processing time of the last skew estimate (refreshed at most once a second)
    skew_at_us: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def late(self) -> int:
        return self.rejected.get(RejectReason.LATE, 0)


@dataclass(slots=True)
class SymbolState:
    dedup: DedupState = field(default_factory=DedupState)
    last_price: float | None = None
    mark: Watermark = field(default_factory=Watermark)
    panes: dict[int, PaneAgg] = field(default_factory=dict)  # pane start (us) -> partial
    emitted_until: dict[str, int] = field(default_factory=dict)  # table -> watermark
    last_arrival_us: int | None = None


@dataclass(slots=True)
class AcceptedTrades:
    """Accepted, enriched trades of one symbol, as columns."""

    symbol: str
    source: str
    trade_id: np.ndarray
    price: np.ndarray
    qty: np.ndarray
    trade_time_us: np.ndarray
    is_buyer_maker: np.ndarray
    is_price_spike: np.ndarray
    event_time_us: np.ndarray
    recv_time_us: np.ndarray
    processed_at_us: int
    latency_ms: np.ndarray
    recv_latency_ms: np.ndarray
    offset: np.ndarray | None = None  # source offsets of the trades

    def __len__(self) -> int:
        return len(self.trade_id)


@dataclass(slots=True)
class Output:
    """Everything one call of the processor produced, ready for the sinks."""

    trades: list[AcceptedTrades] = field(default_factory=list)
    rejects: list[Rejected] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    windows: dict[str, list[dict]] = field(default_factory=dict)
    #: reference ticks polled beside the trades (CoinGecko), passed through to the sinks
    reference_prices: list = field(default_factory=list)
    #: rows of the ML tables (``model.ML_TABLES``) derived from closed windows, by table
    ml: dict[str, list[dict]] = field(default_factory=dict)

    def extend(self, other: Output) -> None:
        self.trades.extend(other.trades)
        self.reference_prices.extend(other.reference_prices)
        self.rejects.extend(other.rejects)
        self.gaps.extend(other.gaps)
        for table, rows in other.windows.items():
            self.windows.setdefault(table, []).extend(rows)
        for table, rows in other.ml.items():
            self.ml.setdefault(table, []).extend(rows)

    @property
    def window_count(self) -> int:
        return sum(len(r) for r in self.windows.values())


class Processor:
    """Stateful cleaner + windower for any number of symbols (state per symbol).

    Lifecycle: ``process`` for each batch, ``advance_idle`` on a timer in live modes,
    ``close`` at the end of a finite input (writes every open window). Never raises on bad
    records: they come back as ``Output.rejects`` and are counted in ``counters``.
    """

    def __init__(self, config: EngineConfig):
        if not config.windows:
            raise ValueError("at least one window spec is required")
        self.config = config
        sizes = [w.size_us for w in config.windows] + [w.slide_us for w in config.windows]
        self.pane_us = math.gcd(*sizes)
        self.max_size_us = max(w.size_us for w in config.windows)
        self.states: dict[str, SymbolState] = {}
        self.counters: dict[str, SymbolCounters] = {}

    # -- public API -------------------------------------------------------------------
    def process(self, sb: SourceBatch, now_us: int) -> Output:
        out = Output()
        for sym, k in sb.ignored.items():
            c = self._counters(sym)
            c.received += k
            c.ignored += k
        for rej in sb.rejects:
            c = self._counters(rej.symbol)
            c.received += 1
            c.rejected[rej.reason] += 1
            out.rejects.append(rej)
        batch = sb.trades
        if len(batch) == 0:
            return out
        status = validate(batch, self.config.max_clock_skew_us)
        bad = np.flatnonzero(status)
        if bad.size:
            for i in bad.tolist():
                reason = REASON_CODES[status[i]]
                rej = self._reject(batch, i, reason, _detail(reason, batch, i))
                c = self._counters(rej.symbol)
                c.received += 1
                c.rejected[rej.reason] += 1
                out.rejects.append(rej)
            batch = batch.take(np.flatnonzero(status == 0))
        if len(batch) == 0:
            return out
        for sym, idx in _group_by_symbol(batch.symbol):
            part = batch if idx is None else batch.take(idx)
            self._process_symbol(sym, part, now_us, out)
        return out

    def advance_idle(self, now_us: int, idle_timeout_us: int, speed: float = 1.0) -> Output:
        """Advance the watermark of symbols quiet for ``idle_timeout_us`` of wall time.

        The watermark moves by the wall time elapsed since the symbol's last trade (times
        ``speed`` for a paced replay), so a quiet symbol's windows still close.
        """
        out = Output()
        if self.config.clean_only:
            return out
        for sym, st in self.states.items():
            if st.last_arrival_us is None or st.mark.max_t == _NEG:
                continue
            before = st.mark.wm
            self._refresh_hold(st, now_us)
            elapsed = now_us - st.last_arrival_us
            if elapsed >= idle_timeout_us:
                wm = st.mark.max_t - self.config.allowed_lateness_us + int(elapsed * speed)
                st.mark.wm = max(st.mark.wm, min(wm, st.mark.hold))
            if st.mark.wm > before:
                self._emit(sym, st, now_us, out)
        return out

    def close(self, now_us: int) -> Output:
        """End of a finite input: every open window becomes final and is written."""
        out = Output()
        if self.config.clean_only:
            return out
        for sym, st in self.states.items():
            st.mark.hold = NO_HOLD
            st.mark.wm = END_OF_TIME_US
            self._emit(sym, st, now_us, out)
        return out

    def open_windows(self) -> int:
        return sum(len(st.panes) for st in self.states.values())

    # -- internals --------------------------------------------------------------------
    def _counters(self, sym: str) -> SymbolCounters:
        c = self.counters.get(sym)
        if c is None:
            c = self.counters[sym] = SymbolCounters()
        return c

    def _reject(self, batch: TradeBatch, i: int, reason: RejectReason, detail: str) -> Rejected:
        sym = batch.symbol_at(i)
        if not isinstance(sym, str) or not SYMBOL_RE.match(sym):
            sym = ""  # counted under "(unknown)": never let garbage symbols grow the stats
        rt = int(batch.recv_time_us[i])
        return Rejected(
            source=batch.source,
            source_offset=int(batch.offset[i]),
            symbol=sym,
            reason=reason,
            detail=detail,
            raw=batch.raw_payload(i),
            trade_id=int(batch.trade_id[i]),
            trade_time_us=int(batch.trade_time_us[i]),
            recv_time_us=None if rt == NO_TIME else rt,
        )

    def _process_symbol(self, sym: str, b: TradeBatch, now_us: int, out: Output) -> None:
        cfg = self.config
        st = self.states.get(sym)
        if st is None:
            st = self.states[sym] = SymbolState()
            for w in cfg.windows:
                st.emitted_until[w.table] = _NEG
        c = self._counters(sym)
        n = len(b)
        c.received += n
        st.last_arrival_us = now_us
        d = classify(st.dedup, st.mark, sym, b.trade_id, b.trade_time_us, now_us,
                     cfg.allowed_lateness_us, self.pane_us, cfg.max_open_gaps,
                     hold_gaps=cfg.gap_wait_us > 0)
        for g in d.new_gaps:
            c.gaps += 1
            c.gap_trades += g.count
        out.gaps.extend(d.new_gaps)
        out.gaps.extend(d.filled_gaps)
        c.duplicates += int(d.duplicate.sum())
        late = d.late if not cfg.clean_only else np.zeros(n, np.bool_)
        for i in np.flatnonzero(late).tolist():
            out.rejects.append(
                self._reject(b, i, RejectReason.LATE, f"window already final (watermark {st.mark.wm} µs)")
            )
        if late.any():
            c.rejected[RejectReason.LATE] += int(late.sum())
        ai = np.flatnonzero(~(d.duplicate | late))
        if ai.size:
            self._accept(sym, st, c, b, ai, now_us, out)
        c.max_trade_time_us = st.mark.max_t if st.mark.max_t != _NEG else None
        self._refresh_hold(st, now_us)
        if cfg.clean_only:  # no windows: only keep the dedup state bounded
            st.dedup.expire(Watermark.closed_before(st.mark.wm, self.pane_us))
        else:
            self._emit(sym, st, now_us, out)

    def _accept(self, sym, st: SymbolState, c: SymbolCounters, b: TradeBatch, ai, now_us, out):
        cfg = self.config
        price = b.price[ai]
        qty = b.qty[ai]
        t = b.trade_time_us[ai]
        if b.is_price_spike is not None:
            spike = b.is_price_spike[ai]
        else:
            spike = spike_flags(price, st.last_price, cfg.spike_threshold)
        st.last_price = float(price[-1])
        recv = b.recv_time_us[ai]
        has_recv = recv != NO_TIME
        latency_ms = (now_us - t) / 1000.0
        recv_latency_ms = np.where(has_recv, (recv - t) / 1000.0, np.nan)
        # the skew (median receive - trade time of a batch) is shown with the stats, which
        # are written once a second: a median per batch cost a tenth of live processing
        if now_us - c.skew_at_us >= SKEW_EVERY_US and has_recv.any():
            c.last_recv_skew_ms = float(np.median(recv_latency_ms[has_recv]))
            c.skew_at_us = now_us
        c.accepted += len(ai)
        trade_id = b.trade_id[ai]
        mk = b.is_buyer_maker[ai]
        out.trades.append(
            AcceptedTrades(
                sym, b.source, trade_id, price, qty, t, mk, spike,
                b.event_time_us[ai], recv, now_us, latency_ms, recv_latency_ms, b.offset[ai],
            )
        )
        if cfg.clean_only:
            return
        pane = (t // self.pane_us) * self.pane_us
        parts = segment_aggregates(pane, trade_id, price, qty, mk, spike, latency_ms, recv_latency_ms)
        panes = st.panes
        for ps, agg in parts.items():
            cur = panes.get(ps)
            if cur is None:
                panes[ps] = agg
            else:
                cur.agg(agg)

    def _refresh_hold(self, st: SymbolState, now_us: int) -> None:
        """Hold the watermark at the oldest gap still waiting for its backfill (if any)."""
        wait = self.config.gap_wait_us
        if wait <= 0 or st.mark.hold == NO_HOLD:
            return
        st.mark.hold = min((h.origin.hold_wm_us for h in st.dedup.holes
                            if h.origin.published and now_us - h.origin.detected_at_us < wait),
                           default=NO_HOLD)
        st.mark.wm = st.mark.current(self.config.allowed_lateness_us)

    def _emit(self, sym: str, st: SymbolState, now_us: int, out: Output) -> None:
        wm = st.mark.wm
        c = self._counters(sym)
        c.watermark_us = wm if wm != _NEG else None
        c.gaps_open = len({id(h.origin) for h in st.dedup.holes if h.origin.published})
        if wm == _NEG:
            return
        pane_us = self.pane_us
        for w in self.config.windows:
            eu = st.emitted_until[w.table]
            if wm <= eu or not st.panes:
                st.emitted_until[w.table] = max(eu, wm)
                continue
            size, slide = w.size_us, w.slide_us
            starts: set[int] = set()
            for ps in st.panes:
                s = (ps // slide) * slide
                while s > ps - size:
                    if eu < s + size <= wm:
                        starts.add(s)
                    s -= slide
            rows = out.windows.setdefault(w.table, [])
            for s in sorted(starts):
                agg = PaneAgg.initialize()
                p = s
                while p < s + size:
                    part = st.panes.get(p)
                    if part is not None:
                        agg.agg(part)
                    p += pane_us
                if agg.n == 0:
                    continue
                row = agg.result(window_s=w.size_s)
                row["symbol"] = sym
                row["window_start_us"] = s
                row["window_end_us"] = s + size
                row["emitted_at_us"] = now_us
                rows.append(row)
            st.emitted_until[w.table] = wm
        for ps in [p for p in st.panes if p + self.max_size_us <= wm]:
            del st.panes[ps]
        st.dedup.expire(Watermark.closed_before(wm, pane_us))


def _detail(reason: RejectReason, b: TradeBatch, i: int) -> str:
    """What was wrong with record ``i``, in words a user can act on."""
    if reason in (RejectReason.NON_FINITE, RejectReason.NON_POSITIVE_PRICE,
                  RejectReason.NON_POSITIVE_QTY):
        return f"price={b.price[i]!r} qty={b.qty[i]!r}"
    if reason == RejectReason.BAD_SYMBOL:
        return f"symbol {b.symbol_at(i)!r} does not match ^[A-Z0-9]{{2,20}}$"
    if reason == RejectReason.CLOCK_SKEW:
        skew_s = (int(b.trade_time_us[i]) - int(b.recv_time_us[i])) / 1e6
        return f"trade time is {skew_s:+.3f} s from the receive time (raise --max-clock-skew?)"
    if reason == RejectReason.BAD_TYPE:
        t = int(b.trade_time_us[i])
        if not MIN_TRADE_TIME_US <= t < MAX_TRADE_TIME_US:
            return f"trade time {t} µs is outside 2010..2100"
        return "a field could not be converted to its type"
    if reason == RejectReason.MISSING_FIELD:
        return "a required trade field (s, t, p, q, T, m) is absent or null"
    return ""


def _group_by_symbol(symbols: np.ndarray | SymbolCodes | str):
    """Yield (symbol, indices or None when the whole batch is that symbol)."""
    if isinstance(symbols, str):
        yield symbols, None
        return
    if isinstance(symbols, SymbolCodes):
        present = np.flatnonzero(np.bincount(symbols.codes, minlength=len(symbols.names)))
        if len(present) == 1:
            yield symbols.names[present[0]], None
            return
        for k in present.tolist():
            yield symbols.names[k], np.flatnonzero(symbols.codes == k)
        return
    first = symbols[0]
    if (symbols == first).all():
        yield first, None
        return
    for sym in dict.fromkeys(symbols.tolist()):
        yield sym, np.flatnonzero(symbols == sym)
