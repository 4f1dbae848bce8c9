"""Cleaning stage: validation, deduplication by (symbol, trade id), gaps, clock skew, spikes.

Every expectation below is written by hand from the issue's rules, not computed by the code.
Times are seconds after T0 = 2024-08-09T00:00:00Z (see ``cs_unit_helpers``).
"""

from __future__ import annotations

import numpy as np
import pytest
from cs_unit_helpers import (
    NOW_US,
    T,
    accepted_ids,
    assert_reconciled,
    at,
    config,
    run,
    source_batch,
    windows_of,
)

from cryptostream.model import REASON_INDEX, RejectReason
from cryptostream.processing.cleaning import DedupState, Watermark, classify, spike_flags, validate
from cryptostream.processing.engine import Processor


def reasons(out) -> list[tuple[str, int | None]]:
    return [(r.reason.value, r.trade_id) for r in out.rejects]


# -- validation ---------------------------------------------------------------------------


def test_valid_trades_are_accepted_and_counted():
    proc, out = run([[T(1, 100.0, 0.5, at(1)), T(2, 100.5, 1.5, at(2))]])
    c = proc.counters["BTCUSDT"]
    assert (c.received, c.accepted, c.duplicates, c.rejected_total, c.ignored) == (2, 2, 0, 0, 0)
    assert accepted_ids(out) == [1, 2]
    assert out.rejects == []


@pytest.mark.parametrize(
    ("price", "qty", "reason"),
    [
        (0.0, 1.0, "non_positive_price"),
        (-101.5, 1.0, "non_positive_price"),
        (100.0, 0.0, "non_positive_qty"),
        (100.0, -0.25, "non_positive_qty"),
        (float("nan"), 1.0, "non_finite"),
        (float("inf"), 1.0, "non_finite"),
        (100.0, float("nan"), "non_finite"),
        (100.0, float("-inf"), "non_finite"),
    ],
)
def test_bad_price_or_qty_is_rejected_with_its_reason(price, qty, reason):
    good = T(1, 100.0, 1.0, at(1))
    bad = T(2, price, qty, at(2))
    proc, out = run([[good, bad]])
    c = proc.counters["BTCUSDT"]
    assert reasons(out) == [(reason, 2)]
    assert c.rejected == {RejectReason(reason): 1}
    assert (c.received, c.accepted) == (2, 1)
    # the bad record never reaches a window
    w = windows_of(out, "agg_1m")[0]
    assert (w["trade_count"], w["volume"], w["high"], w["low"]) == (1, 1.0, 100.0, 100.0)
    assert_reconciled(proc)


@pytest.mark.parametrize("symbol", ["btcusdt", "B", "BTC-USDT", "A" * 21, "", "BTCUSDT "])
def test_bad_symbol_is_rejected_and_counted_under_unknown(symbol):
    proc, out = run([[T(1, 100.0, 1.0, at(1)), T(7, 100.0, 1.0, at(2), symbol=symbol)]])
    assert reasons(out) == [("bad_symbol", 7)]
    # a garbage symbol must not create its own statistics row: it is counted under ""
    assert set(proc.counters) == {"BTCUSDT", ""}
    assert proc.counters[""].rejected == {RejectReason.BAD_SYMBOL: 1}
    assert proc.counters["BTCUSDT"].accepted == 1
    assert_reconciled(proc)


@pytest.mark.parametrize("symbol", ["AB", "1INCHUSDT", "A" * 20])
def test_symbol_boundaries_that_are_valid(symbol):
    proc, out = run([[T(1, 100.0, 1.0, at(1), symbol=symbol)]])
    assert out.rejects == []
    assert proc.counters[symbol].accepted == 1


def test_trade_time_outside_plausible_range_is_rejected_and_does_not_move_watermark():
    # a time in the year ~2200 (e.g. a µs value read as ms) must not make every later trade late
    far_future_us = 7_258_118_400_000_000  # 2200-01-01
    trades = [T(1, 100.0, 1.0, at(1)), T(2, 100.0, 1.0, far_future_us), T(3, 100.0, 1.0, at(3))]
    proc, out = run([trades])
    assert reasons(out) == [("bad_type", 2)]
    assert accepted_ids(out) == [1, 3]
    assert proc.counters["BTCUSDT"].max_trade_time_us == at(3)


def test_decoder_status_is_kept_by_validation():
    """A record the decoder already marked (missing field) keeps that reason."""
    sb = source_batch([T(1, 100.0, 1.0, at(1)), T(2, -5.0, 1.0, at(2))])
    missing = REASON_INDEX[RejectReason.MISSING_FIELD]
    sb.trades.status[1] = missing
    status = validate(sb.trades, 0)
    assert status.tolist() == [0, missing]
    _proc, out = run([sb])
    assert reasons(out) == [("missing_field", 2)]


# -- clock skew ---------------------------------------------------------------------------


def test_clock_skew_rejects_only_beyond_the_limit_in_both_directions():
    trades = [
        T(1, 100.0, 1.0, at(10), recv_us=at(15)),  # +5.000 s: allowed (<= limit)
        T(2, 100.0, 1.0, at(11), recv_us=at(16.001)),  # +5.001 s: skew
        T(3, 100.0, 1.0, at(12), recv_us=at(6.999)),  # -5.001 s: skew (receive clock behind)
        T(4, 100.0, 1.0, at(13), recv_us=at(11.73)),  # -1.27 s: normal for the recorder
        T(5, 100.0, 1.0, at(14)),  # no receive time: not checked
    ]
    proc, out = run([trades], cfg=config(skew_s=5.0))
    assert reasons(out) == [("clock_skew", 2), ("clock_skew", 3)]
    c = proc.counters["BTCUSDT"]
    assert c.rejected == {RejectReason.CLOCK_SKEW: 2}
    assert accepted_ids(out) == [1, 4, 5]
    assert windows_of(out, "agg_1m")[0]["trade_count"] == 3
    assert_reconciled(proc)


def test_clock_skew_check_disabled_with_zero():
    trades = [T(1, 100.0, 1.0, at(10), recv_us=at(500))]
    proc, out = run([trades], cfg=config(skew_s=0))
    assert out.rejects == []
    assert proc.counters["BTCUSDT"].accepted == 1


# -- duplicates ---------------------------------------------------------------------------


def test_duplicates_are_counted_and_not_stored_twice():
    b1 = [T(1, 100.0, 1.0, at(1)), T(2, 101.0, 2.0, at(2)), T(2, 101.0, 2.0, at(2))]
    b2 = [T(1, 100.0, 1.0, at(1)), T(3, 102.0, 3.0, at(3)), T(2, 101.0, 2.0, at(2))]
    proc, out = run([b1, b2])
    c = proc.counters["BTCUSDT"]
    assert (c.received, c.accepted, c.duplicates, c.rejected_total) == (6, 3, 3, 0)
    assert accepted_ids(out) == [1, 2, 3]
    w = windows_of(out, "agg_1m")[0]
    assert w["trade_count"] == 3
    assert w["volume"] == pytest.approx(6.0, rel=1e-12)
    assert w["quote_volume"] == pytest.approx(100.0 + 202.0 + 306.0, rel=1e-12)
    # duplicates are not rejects: they are counted, not stored in the rejects table
    assert out.rejects == []
    assert_reconciled(proc)


def test_duplicate_with_different_content_keeps_the_first_version():
    b = [T(1, 100.0, 1.0, at(1)), T(1, 999.0, 7.0, at(1))]
    proc, out = run([b])
    w = windows_of(out, "agg_1m")[0]
    assert (w["trade_count"], w["high"], w["volume"]) == (1, 100.0, 1.0)
    assert proc.counters["BTCUSDT"].duplicates == 1


def test_same_trade_id_in_two_symbols_is_not_a_duplicate():
    b = [T(5, 100.0, 1.0, at(1)), T(5, 2000.0, 1.0, at(1), symbol="ETHUSDT")]
    proc, _out = run([b])
    assert proc.counters["BTCUSDT"].accepted == 1
    assert proc.counters["ETHUSDT"].accepted == 1
    assert proc.counters["BTCUSDT"].duplicates == proc.counters["ETHUSDT"].duplicates == 0


def test_ids_below_the_first_id_seen_are_new_not_duplicates():
    """Out-of-order arrival at the very start of a stream: ids 10, 11 were never seen."""
    b = [T(12, 101.0, 1.0, at(10)), T(10, 100.0, 2.0, at(10)), T(11, 102.0, 1.0, at(10))]
    proc, out = run([b])
    c = proc.counters["BTCUSDT"]
    assert (c.accepted, c.duplicates) == (3, 0)
    w = windows_of(out, "agg_1m")[0]
    assert (w["trade_count"], w["first_trade_id"], w["last_trade_id"]) == (3, 10, 12)
    assert (w["open"], w["close"]) == (100.0, 101.0)


# -- gaps ---------------------------------------------------------------------------------


def test_gap_is_recorded_with_bounds_and_count():
    b = [T(1, 100.0, 1.0, at(1)), T(2, 100.0, 1.0, at(2)), T(5, 100.0, 1.0, at(3)),
         T(6, 100.0, 1.0, at(4)), T(10, 100.0, 1.0, at(5))]
    proc, out = run([b])
    gaps = sorted({(g.symbol, g.from_id, g.to_id, g.count) for g in out.gaps})
    assert gaps == [("BTCUSDT", 3, 4, 2), ("BTCUSDT", 7, 9, 3)]
    c = proc.counters["BTCUSDT"]
    assert (c.gaps, c.gap_trades) == (2, 5)
    assert windows_of(out, "agg_1m")[0]["missing_trades"] == 5


def test_gap_across_batches_is_recorded():
    _proc, out = run([[T(1, 100.0, 1.0, at(1))], [T(4, 100.0, 1.0, at(2))]])
    assert [(g.from_id, g.to_id, g.count) for g in out.gaps] == [(2, 3, 2)]


def test_late_fill_of_a_gap_is_accepted_and_not_a_duplicate():
    proc = Processor(config())
    o1 = proc.process(source_batch([T(1, 100.0, 1.0, at(1)), T(2, 100.0, 1.0, at(2)),
                                    T(5, 100.0, 1.0, at(4)), T(6, 100.0, 1.0, at(5))]), NOW_US)
    assert [(g.from_id, g.to_id, g.count) for g in o1.gaps] == [(3, 4, 2)]
    o2 = proc.process(source_batch([T(3, 100.0, 2.0, at(3))]), NOW_US)
    c = proc.counters["BTCUSDT"]
    assert (c.accepted, c.duplicates, c.rejected_total) == (5, 0, 0)
    assert accepted_ids(o2) == [3]
    # the gap is reported as partly filled, its recorded size does not change
    filled = [(g.from_id, g.to_id, g.filled) for g in o2.gaps]
    assert filled == [(3, 4, 1)]
    assert (c.gaps, c.gap_trades) == (1, 2)
    # a second copy of the fill is now a duplicate
    proc.process(source_batch([T(3, 100.0, 2.0, at(3))]), NOW_US)
    assert (c.accepted, c.duplicates) == (5, 1)
    w = windows_of(proc.close(NOW_US), "agg_1m")[0]
    assert (w["trade_count"], w["missing_trades"], w["volume"]) == (5, 1, 6.0)
    assert_reconciled(proc)


def test_gap_filled_inside_the_same_batch():
    b = [T(1, 100.0, 1.0, at(1)), T(4, 100.0, 1.0, at(2)), T(3, 100.0, 1.0, at(2)),
         T(2, 100.0, 1.0, at(1.5)), T(3, 100.0, 1.0, at(2))]
    proc, out = run([b])
    c = proc.counters["BTCUSDT"]
    assert (c.accepted, c.duplicates, c.gaps, c.gap_trades) == (4, 1, 1, 2)
    w = windows_of(out, "agg_1m")[0]
    assert (w["trade_count"], w["missing_trades"]) == (4, 0)


def dedup(st, mark, symbol, ids, times, now_us, max_open_gaps):
    return classify(st, mark, symbol, ids, times, now_us, 2_000_000, 60_000_000, max_open_gaps)


def test_dedup_function_classifies_ids_and_gaps():
    st, mark = DedupState(), Watermark()
    r = dedup(st, mark, "BTCUSDT", np.array([100, 101, 104, 101, 102]), np.arange(5) + at(1), 0,
              100)
    assert r.duplicate.tolist() == [False, False, False, True, False]
    assert [(g.from_id, g.to_id, g.count, g.filled) for g in r.new_gaps] == [(102, 103, 2, 1)]
    r2 = dedup(st, mark, "BTCUSDT", np.array([103, 103, 105]), np.arange(3) + at(1), 0, 100)
    assert r2.duplicate.tolist() == [False, True, False]
    assert r2.new_gaps == []


# -- spikes -------------------------------------------------------------------------------


def test_spike_flag_against_previous_accepted_price():
    # 100 -> 102.5 (+2.5 %: spike) -> 102.6 (+0.098 %) -> 100.0 (-2.53 %: spike) -> 98.1 (-1.9 %)
    prices = [100.0, 102.5, 102.6, 100.0, 98.1]
    b = [T(i + 1, p, 1.0, at(i + 1)) for i, p in enumerate(prices)]
    _proc, out = run([b], cfg=config(spike=0.02))
    flags = [f for a in out.trades for f in a.is_price_spike.tolist()]
    assert flags == [False, True, False, True, False]
    assert windows_of(out, "agg_1m")[0]["spike_count"] == 2


def test_spike_uses_previous_accepted_price_not_rejected_or_duplicate_records():
    b = [
        T(1, 100.0, 1.0, at(1)),
        T(1, 200.0, 1.0, at(1)),  # duplicate with a wild price: not a reference
        T(2, -3.0, 1.0, at(2)),  # invalid: not a reference
        T(3, 101.0, 1.0, at(3)),  # +1 % against 100: no spike
        T(4, 95.0, 1.0, at(4)),  # -5.9 %: spike
    ]
    _proc, out = run([b], cfg=config(spike=0.02))
    flags = [f for a in out.trades for f in a.is_price_spike.tolist()]
    assert flags == [False, False, True]


def test_spike_reference_carries_across_batches():
    _proc, out = run([[T(1, 100.0, 1.0, at(1))], [T(2, 103.0, 1.0, at(2))]], cfg=config(spike=0.02))
    flags = [f for a in out.trades for f in a.is_price_spike.tolist()]
    assert flags == [False, True]


def test_first_trade_of_a_symbol_is_never_a_spike():
    assert spike_flags(np.array([50_000.0]), None, 0.02).tolist() == [False]


def test_move_of_exactly_the_threshold_is_not_a_spike():
    # |102 / 100 - 1| = 0.02 exactly, and the rule is "> threshold"; same for 51000 / 50000.
    assert spike_flags(np.array([102.0]), 100.0, 0.02).tolist() == [False]
    assert spike_flags(np.array([51_000.0]), 50_000.0, 0.02).tolist() == [False]


def test_spike_threshold_is_configurable():
    b = [T(1, 100.0, 1.0, at(1)), T(2, 100.6, 1.0, at(2))]
    _, out = run([b], cfg=config(spike=0.005))
    assert [f for a in out.trades for f in a.is_price_spike.tolist()] == [False, True]
    _, out = run([b], cfg=config(spike=0.01))
    assert [f for a in out.trades for f in a.is_price_spike.tolist()] == [False, False]


def test_max_open_gaps_keeps_state_bounded():
    # 50 separate gaps with a bound of 10: at most 10 holes stay open
    b = [T(1 + 2 * k, 100.0, 1.0, at(1 + k * 0.01)) for k in range(51)]
    proc, _out = run([b], cfg=config(max_open_gaps=10), close=False)
    assert len(proc.states["BTCUSDT"].dedup.holes) <= 10
    assert proc.counters["BTCUSDT"].gaps == 50
