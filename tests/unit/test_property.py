"""Property test: the Processor equals a brute-force, record-at-a-time recomputation.

Random streams for 1-3 symbols: trade ids mostly consecutive (some never sent: gaps), trade
times non-decreasing in id with many ties, arrival disorder mostly within the allowed
lateness (some beyond it: late), re-sent copies (duplicates), a few invalid copies (qty 0),
cut into random batches. The reference below follows the issue's rules literally:

per symbol, in arrival order: validate; a seen id is a duplicate; otherwise the id is seen and
the record is late when the pane (1 min) holding it ends at or before the watermark
``max accepted trade time so far - allowed lateness`` just before it; otherwise accepted,
spike when ``|p / previous accepted p - 1| > threshold``. Every window with >= 1 accepted
trade is emitted, aggregates computed with ``statistics`` and ``math.fsum``.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field

from cs_unit_helpers import T0_US, T, assert_reconciled, config, run, split
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from cryptostream.model import DEFAULT_WINDOWS, US_PER_MS, US_PER_S, RejectReason

LATENESS_US = 2 * US_PER_S
PANE_US = 60 * US_PER_S
THRESHOLD = 0.02
SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
BASE_PRICE = {"BTCUSDT": 60_000.0, "ETHUSDT": 2_600.0, "BNBUSDT": 500.0}
QTYS = (0.001, 0.01, 0.02, 0.5, 1.0, 2.25)
TIME_STEPS_MS = (0, 0, 0, 1, 3, 250, 900, 1_500, 5_000, 20_000, 61_000)


# -- generation ---------------------------------------------------------------------------


@st.composite
def symbol_stream(draw, symbol: str, clean_start: bool) -> list[tuple[int, int, T]]:
    """(arrival key µs, sequence, record) for one symbol."""
    n = draw(st.integers(0, 30))
    t = T0_US + draw(st.integers(0, 59_999)) * US_PER_MS
    trade_id = draw(st.integers(1, 10_000))
    price = BASE_PRICE[symbol]
    trades: list[T] = []
    for _ in range(n):
        trade_id += draw(st.sampled_from((1, 1, 1, 1, 1, 1, 2, 4)))  # >1: ids never sent
        t += draw(st.sampled_from(TIME_STEPS_MS)) * US_PER_MS
        move = draw(st.sampled_from((0, 0, 1, -1, 5, -5, 300, -300)))  # basis points
        price = round(price * (1 + move / 10_000), 2)
        trades.append(T(trade_id, price, draw(st.sampled_from(QTYS)), t,
                        maker=draw(st.booleans()), symbol=symbol))
    out: list[tuple[int, int, T]] = []
    seq = 0
    for k, tr in enumerate(trades):
        kind = draw(st.sampled_from(("now",) * 6 + ("within",) * 3 + ("beyond",)))
        if clean_start and k == 0:
            kind = "now"
        delay_ms = {"now": 0, "within": draw(st.integers(1, 1_999)),
                    "beyond": draw(st.integers(2_001, 150_000))}[kind]
        out.append((tr.t_us + delay_ms * US_PER_MS, seq, tr))
        seq += 1
        if draw(st.integers(0, 9)) == 0 and (kind == "now" or not clean_start):
            copy_delay = draw(st.integers(0, 5_000))
            out.append((tr.t_us + (delay_ms + copy_delay) * US_PER_MS, seq, tr))  # re-sent
            seq += 1
        if draw(st.integers(0, 19)) == 0:
            bad = T(tr.id, tr.price, 0.0, tr.t_us, tr.maker, symbol)  # invalid: qty 0
            out.append((tr.t_us + draw(st.integers(0, 3_000)) * US_PER_MS, seq, bad))
            seq += 1
    return out


@st.composite
def streams(draw, clean_start: bool):
    k = draw(st.integers(1, 3))
    symbols = draw(st.permutations(SYMBOLS))[:k]
    keyed = []
    for i, sym in enumerate(symbols):
        keyed += [(key, i, seq, rec) for key, seq, rec in draw(symbol_stream(sym, clean_start))]
    keyed.sort(key=lambda x: (x[0], x[1], x[2]))
    records = [rec for *_, rec in keyed]
    sizes = draw(st.lists(st.integers(1, 12), max_size=20))
    return records, sizes


# -- reference ----------------------------------------------------------------------------


@dataclass
class Ref:
    received: int = 0
    accepted: list[tuple] = field(default_factory=list)  # (id, price, qty, t, maker, spike)
    duplicates: int = 0
    rejected: Counter = field(default_factory=Counter)
    gaps: list[tuple[int, int]] = field(default_factory=list)
    seen: set = field(default_factory=set)
    hwm: int | None = None
    max_t: int | None = None
    last_price: float | None = None


def reference(records: list[T]) -> dict[str, Ref]:
    refs: dict[str, Ref] = {}
    for r in records:
        s = refs.setdefault(r.symbol, Ref())
        s.received += 1
        if not (r.qty > 0):
            s.rejected[RejectReason.NON_POSITIVE_QTY] += 1
            continue
        if r.id in s.seen:
            s.duplicates += 1
            continue
        s.seen.add(r.id)
        if s.hwm is None or r.id > s.hwm:
            if s.hwm is not None and r.id > s.hwm + 1:
                s.gaps.append((s.hwm + 1, r.id - 1))
            s.hwm = r.id
        wm = None if s.max_t is None else s.max_t - LATENESS_US
        pane_end = (r.t_us // PANE_US + 1) * PANE_US
        if wm is not None and pane_end <= wm:
            s.rejected[RejectReason.LATE] += 1
            continue
        spike = s.last_price is not None and abs(r.price / s.last_price - 1.0) > THRESHOLD
        s.last_price = r.price
        s.accepted.append((r.id, r.price, r.qty, r.t_us, r.maker, spike))
        s.max_t = r.t_us if s.max_t is None else max(s.max_t, r.t_us)
    return refs


def reference_windows(refs: dict[str, Ref]) -> dict[tuple[str, str, int], dict]:
    rows = {}
    for spec in DEFAULT_WINDOWS:
        size, slide = spec.size_us, spec.slide_us
        for sym, ref in refs.items():
            buckets: dict[int, list[tuple]] = {}
            for tr in ref.accepted:
                s = (tr[3] // slide) * slide
                while s > tr[3] - size:
                    buckets.setdefault(s, []).append(tr)
                    s -= slide
            for start, trs in buckets.items():
                trs = sorted(trs)  # by trade id
                p = [x[1] for x in trs]
                q = [x[2] for x in trs]
                vol = math.fsum(q)
                qv = math.fsum(a * b for a, b in zip(p, q))
                buy = math.fsum(x[2] for x in trs if not x[4])
                sell = math.fsum(x[2] for x in trs if x[4])
                rows[(spec.table, sym, start)] = {
                    "trade_count": len(trs),
                    "open": p[0], "close": p[-1], "high": max(p), "low": min(p),
                    "volume": vol, "quote_volume": qv, "vwap": qv / vol,
                    "avg_price": statistics.fmean(p),
                    "price_stddev": statistics.stdev(p) if len(p) >= 2 else None,
                    "buy_volume": buy, "sell_volume": sell,
                    "buy_sell_ratio": buy / sell if sell > 0 else None,
                    "trade_intensity": len(trs) / spec.size_s,
                    "spike_count": sum(1 for x in trs if x[5]),
                    "first_trade_id": trs[0][0], "last_trade_id": trs[-1][0],
                    "range_pct": (max(p) - min(p)) / min(p) * 100.0,
                    "return_pct": (p[-1] - p[0]) / p[0] * 100.0,
                    "missing_trades": trs[-1][0] - trs[0][0] + 1 - len(trs),
                    "window_end_us": start + size,
                }
    return rows


# -- comparison ---------------------------------------------------------------------------

EXACT = ("trade_count", "spike_count", "first_trade_id", "last_trade_id", "missing_trades",
         "window_end_us")


def close_enough(col: str, got, want, scale: float) -> bool:
    if want is None or got is None:
        return got is None and want is None
    if col == "price_stddev":  # near 0 only an absolute bound at the price scale makes sense
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12 * scale)
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)


def check(records: list[T], sizes: list[int]) -> None:
    refs = reference(records)
    for ref in refs.values() if currently_in_test_context() else ():
        event(f"late: {min(ref.rejected[RejectReason.LATE], 2)}")
        event(f"duplicates: {min(ref.duplicates, 2)}")
        event(f"gaps: {min(len(ref.gaps), 2)}")
        event(f"accepted: {min(len(ref.accepted) // 10 * 10, 20)}+")
    proc, out = run(split(records, sizes), cfg=config(lateness_s=2, spike=THRESHOLD))

    # counters and reconciliation
    assert_reconciled(proc)
    for sym, ref in refs.items():
        c = proc.counters.get(sym)
        assert c is not None, sym
        got = (c.received, c.accepted, c.duplicates, dict(c.rejected), c.gaps, c.gap_trades)
        want = (ref.received, len(ref.accepted), ref.duplicates, dict(ref.rejected),
                len(ref.gaps), sum(b - a + 1 for a, b in ref.gaps))
        assert got == want, f"{sym}: (received, accepted, dup, rejected, gaps, gap_trades)"

    # accepted trades and their spike flags
    got_acc: dict[str, list[tuple[int, bool]]] = {}
    for a in out.trades:
        got_acc.setdefault(a.symbol, []).extend(
            zip((int(i) for i in a.trade_id.tolist()), (bool(f) for f in a.is_price_spike)))
    for sym, ref in refs.items():
        assert got_acc.get(sym, []) == [(x[0], x[5]) for x in ref.accepted], sym

    # recorded gaps
    got_gaps = {(g.symbol, g.from_id, g.to_id) for g in out.gaps}
    want_gaps = {(sym, a, b) for sym, ref in refs.items() for a, b in ref.gaps}
    assert got_gaps == want_gaps

    # windows: same set, each emitted once, same values
    want_rows = reference_windows(refs)
    got_rows = {}
    for table, rows in out.windows.items():
        for r in rows:
            key = (table, r["symbol"], r["window_start_us"])
            assert key not in got_rows, f"window emitted twice: {key}"
            got_rows[key] = r
    assert set(got_rows) == set(want_rows), "different windows"
    for key, want in want_rows.items():
        got = got_rows[key]
        scale = want["high"]
        for col, w in want.items():
            g = got[col]
            if col in EXACT:
                assert g == w, f"{key} {col}: {g} != {w}"
            else:
                assert close_enough(col, g, w, scale), f"{key} {col}: {g} != {w}"


SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(streams(clean_start=False))
def test_processor_matches_record_at_a_time_reference(stream):
    records, sizes = stream
    check(records, sizes)


@SETTINGS
@given(streams(clean_start=True))
def test_processor_matches_reference_when_each_symbol_starts_with_its_lowest_id(stream):
    """Same property; each symbol's first arrival is its lowest id, and only records that
    arrive on time are re-sent (isolates the rest of the rules from those two cases)."""
    records, sizes = stream
    check(records, sizes)


def test_reference_sanity():
    """The reference itself on a hand-checked stream (so a wrong reference cannot hide)."""
    b = "BTCUSDT"
    recs = [T(1, 100.0, 1.0, T0_US + 1 * US_PER_S, symbol=b),
            T(3, 100.0, 1.0, T0_US + 70 * US_PER_S, symbol=b),  # gap 2; watermark 68 s
            T(2, 100.0, 1.0, T0_US + 30 * US_PER_S, symbol=b),  # fill, but minute 0 final
            T(3, 100.0, 1.0, T0_US + 70 * US_PER_S, symbol=b),  # duplicate
            T(4, 103.0, 0.0, T0_US + 71 * US_PER_S, symbol=b),  # invalid
            T(4, 103.0, 1.0, T0_US + 71 * US_PER_S, symbol=b)]  # spike, +3 %
    ref = reference(recs)[b]
    assert ref.received == 6 and ref.duplicates == 1
    assert ref.rejected == {RejectReason.LATE: 1, RejectReason.NON_POSITIVE_QTY: 1}
    assert [(x[0], x[5]) for x in ref.accepted] == [(1, False), (3, False), (4, True)]
    assert ref.gaps == [(2, 2)]
    rows = reference_windows(reference(recs))
    assert rows[("agg_1m", b, T0_US + 60 * US_PER_S)]["trade_count"] == 2
    assert rows[("agg_1m", b, T0_US + 60 * US_PER_S)]["missing_trades"] == 0
    assert len([k for k in rows if k[0] == "agg_5m_1m"]) == 6
    check(recs, [2, 4])
