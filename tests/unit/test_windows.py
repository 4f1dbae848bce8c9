"""Event-time windows: bounds, watermark, lateness, emission, sliding windows, idle symbols,
µs files and independence from batch boundaries.

Default windows: ``agg_1m`` (60 s tumbling) and ``agg_5m_1m`` (300 s every 60 s); allowed
lateness 2 s. Times are seconds after T0 = 2024-08-09T00:00:00Z, a multiple of 300 s.
Expected values are worked out by hand in the comments.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from cs_unit_helpers import (
    NOW_US,
    T0_US,
    T,
    accepted_ids,
    assert_reconciled,
    assert_same_windows,
    at,
    config,
    counters_of,
    json_line,
    run,
    source_batch,
    split,
    windows_of,
)

from cryptostream.model import US_PER_S, RejectReason, WindowSpec
from cryptostream.processing.engine import Output, Processor
from cryptostream.sources.binance_messages import decode_lines
from cryptostream.sources.trade_csv import read_trade_csv

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"


def counts(out: Output, table: str, symbol: str | None = None) -> dict[int, int]:
    return {k: w["trade_count"] for k, w in windows_of(out, table, symbol).items()}


# -- bounds -------------------------------------------------------------------------------


def test_windows_are_epoch_aligned_half_open_intervals():
    # 59.999 s -> [0, 60); 60.000 s exactly -> [60, 120); 119.999 s -> [60, 120)
    trades = [T(1, 100.0, 1.0, at(59.999)), T(2, 101.0, 1.0, at(60.0)),
              T(3, 102.0, 1.0, at(119.999))]
    _, out = run([trades])
    rows = windows_of(out, "agg_1m")
    assert counts(out, "agg_1m") == {0: 1, 60: 2}
    assert rows[60]["window_start_us"] == T0_US + 60 * US_PER_S
    assert rows[60]["window_end_us"] == T0_US + 120 * US_PER_S
    assert (rows[60]["first_trade_id"], rows[60]["last_trade_id"]) == (2, 3)


def test_windows_of_a_non_default_size_are_aligned_to_the_epoch():
    # 15 s tumbling windows: 7 s -> [0, 15); 16 s -> [15, 30); 44.5 s -> [30, 45)
    cfg = config(windows=(WindowSpec("agg_15s", 15, 15),))
    _, out = run([[T(1, 1.0, 1.0, at(7)), T(2, 1.0, 1.0, at(16)), T(3, 1.0, 1.0, at(44.5))]],
                 cfg=cfg)
    assert counts(out, "agg_15s") == {0: 1, 15: 1, 30: 1}


def test_only_windows_with_trades_are_emitted():
    # trades at 10 s and 430 s: nothing in between for agg_1m
    _, out = run([[T(1, 100.0, 1.0, at(10)), T(2, 100.0, 1.0, at(430))]])
    assert counts(out, "agg_1m") == {0: 1, 420: 1}
    for w in out.windows["agg_5m_1m"]:
        assert w["trade_count"] >= 1


def test_windows_are_per_symbol():
    trades = [T(1, 100.0, 1.0, at(10)), T(1, 2000.0, 3.0, at(20), symbol="ETHUSDT"),
              T(2, 101.0, 1.0, at(30))]
    _, out = run([trades])
    assert counts(out, "agg_1m", "BTCUSDT") == {0: 2}
    assert counts(out, "agg_1m", "ETHUSDT") == {0: 1}
    eth = windows_of(out, "agg_1m", "ETHUSDT")[0]
    assert (eth["open"], eth["volume"]) == (2000.0, 3.0)


# -- ties and ordering --------------------------------------------------------------------


def test_ties_on_the_same_millisecond_open_close_by_trade_id():
    # id 10 at 5 s, then ids 11..14 all at 30.000 s arriving as 13, 11, 14, 12
    trades = [
        T(10, 50.0, 1.0, at(5)),
        T(13, 53.0, 1.0, at(30)),
        T(11, 51.0, 1.0, at(30)),
        T(14, 54.0, 1.0, at(30)),
        T(12, 52.0, 1.0, at(30)),
    ]
    proc, out = run([trades])
    w = windows_of(out, "agg_1m")[0]
    assert (w["open"], w["close"]) == (50.0, 54.0)
    assert (w["first_trade_id"], w["last_trade_id"], w["missing_trades"]) == (10, 14, 0)
    assert proc.counters["BTCUSDT"].duplicates == 0


def test_ties_inside_one_window_open_is_lowest_id_even_when_it_arrives_last():
    # window [60,120): ids 21..24 all at 70.000 s, id 21 arrives last
    trades = [T(20, 10.0, 1.0, at(5)), T(23, 13.0, 1.0, at(70)), T(22, 12.0, 1.0, at(70)),
              T(24, 14.0, 1.0, at(70)), T(21, 11.0, 1.0, at(70))]
    _, out = run([trades])
    w = windows_of(out, "agg_1m")[60]
    assert (w["open"], w["close"], w["first_trade_id"], w["last_trade_id"]) == (
        11.0, 14.0, 21, 24)


def test_open_close_follow_trade_id_not_trade_time():
    # id 31 has a later time than id 32 (within lateness): open is still id 31's price
    trades = [T(30, 10.0, 1.0, at(61)), T(31, 11.0, 1.0, at(70.5)), T(32, 12.0, 1.0, at(70.1))]
    _, out = run([trades])
    w = windows_of(out, "agg_1m")[60]
    assert (w["open"], w["close"]) == (10.0, 12.0)
    trades = [T(30, 10.0, 1.0, at(61)), T(32, 12.0, 1.0, at(62)), T(31, 11.0, 1.0, at(119.5))]
    _, out = run([trades])
    w = windows_of(out, "agg_1m")[60]
    assert (w["open"], w["close"]) == (10.0, 12.0)


# -- lateness -----------------------------------------------------------------------------


def test_out_of_order_within_lateness_is_accepted_into_its_own_window():
    # max time 61.0 -> watermark 59.0 < 60: [0,60) still open, 59.5 s lands in it
    trades = [T(1, 100.0, 1.0, at(10)), T(2, 101.0, 1.0, at(61.0)), T(3, 99.0, 2.0, at(59.5))]
    proc, out = run([trades])
    assert counts(out, "agg_1m") == {0: 2, 60: 1}
    w0 = windows_of(out, "agg_1m")[0]
    assert (w0["close"], w0["volume"], w0["low"]) == (99.0, 3.0, 99.0)
    assert proc.counters["BTCUSDT"].late == 0


def test_late_beyond_lateness_is_rejected_counted_and_window_unchanged():
    # max time 62.5 -> watermark 60.5 >= 60: [0,60) is final, 59.9 s is late
    trades = [T(1, 100.0, 1.0, at(10)), T(2, 101.0, 1.0, at(62.5)), T(3, 500.0, 9.0, at(59.9))]
    proc, out = run([trades])
    c = proc.counters["BTCUSDT"]
    assert (c.received, c.accepted, c.late, c.duplicates) == (3, 2, 1, 0)
    assert c.rejected == {RejectReason.LATE: 1}
    assert [(r.reason.value, r.trade_id, r.trade_time_us) for r in out.rejects] == [
        ("late", 3, at(59.9))]
    assert counts(out, "agg_1m") == {0: 1, 60: 1}
    w0 = windows_of(out, "agg_1m")[0]
    assert (w0["high"], w0["volume"], w0["last_trade_id"]) == (100.0, 1.0, 1)
    # the sliding windows that contain 59.9 s are unchanged as well
    for w in out.windows["agg_5m_1m"]:
        assert w["high"] <= 101.0 and 3 not in (w["first_trade_id"], w["last_trade_id"])
    assert_reconciled(proc)


def test_lateness_boundary_is_inclusive_of_window_end():
    # watermark exactly 60.000 (max 62.000): pane [0,60) ends at the watermark -> late
    proc, out = run([[T(1, 1.0, 1.0, at(10)), T(2, 1.0, 1.0, at(62.0)), T(3, 1.0, 1.0, at(59))]])
    assert proc.counters["BTCUSDT"].late == 1
    # watermark 59.999: not final yet -> accepted
    proc, out = run([[T(1, 1.0, 1.0, at(10)), T(2, 1.0, 1.0, at(61.999)),
                      T(3, 1.0, 1.0, at(59))]])
    assert proc.counters["BTCUSDT"].late == 0
    assert counts(out, "agg_1m") == {0: 2, 60: 1}


def test_late_trade_in_a_later_batch_is_rejected():
    proc, out = run([[T(1, 1.0, 1.0, at(10)), T(2, 1.0, 1.0, at(65))], [T(3, 1.0, 1.0, at(30))]])
    assert proc.counters["BTCUSDT"].late == 1
    assert counts(out, "agg_1m") == {0: 1, 60: 1}


def test_allowed_lateness_is_configurable():
    trades = [T(1, 1.0, 1.0, at(10)), T(2, 1.0, 1.0, at(69)), T(3, 1.0, 1.0, at(50))]
    proc, _ = run([trades], cfg=config(lateness_s=10))  # watermark 59 -> accepted
    assert proc.counters["BTCUSDT"].late == 0
    proc, _ = run([trades], cfg=config(lateness_s=8))  # watermark 61 -> late
    assert proc.counters["BTCUSDT"].late == 1


# -- emission -----------------------------------------------------------------------------


def test_window_is_emitted_once_when_the_watermark_reaches_its_end():
    proc = Processor(config())
    o1 = proc.process(source_batch([T(1, 100.0, 1.0, at(10))]), NOW_US)
    o2 = proc.process(source_batch([T(2, 100.0, 1.0, at(61.999))]), NOW_US)  # wm 59.999
    assert o1.window_count == 0 and o2.window_count == 0
    assert proc.counters["BTCUSDT"].watermark_us == at(59.999)
    o3 = proc.process(source_batch([T(3, 100.0, 1.0, at(62.0))]), NOW_US)  # wm 60.000
    assert counts(o3, "agg_1m") == {0: 1}
    # sliding windows ending at 60 s: only [-240, 60)
    assert counts(o3, "agg_5m_1m") == {-240: 1}
    o4 = proc.process(source_batch([T(4, 100.0, 1.0, at(90))]), NOW_US)
    assert "agg_1m" not in o4.windows or counts(o4, "agg_1m") == {}
    o5 = proc.close(NOW_US)
    assert counts(o5, "agg_1m") == {60: 3}
    total = Output()
    for o in (o1, o2, o3, o4, o5):
        total.extend(o)
    windows_of(total, "agg_1m")  # raises if a window was emitted twice
    windows_of(total, "agg_5m_1m")


def test_close_emits_every_open_window_including_partial_last_ones():
    proc = Processor(config())
    out = proc.process(source_batch([T(1, 1.0, 1.0, at(10)), T(2, 1.0, 1.0, at(125))]), NOW_US)
    assert counts(out, "agg_1m") == {0: 1}
    closing = proc.close(NOW_US)
    assert counts(closing, "agg_1m") == {120: 1}
    # 5m windows containing 125 s start at -120..120; those containing 10 s at -240..0;
    # [-240,60) was already final (watermark 123 >= 60)
    emitted_before = set(counts(out, "agg_5m_1m"))
    assert emitted_before == {-240, -180}  # ends 60 and 120 <= 123
    assert counts(closing, "agg_5m_1m") == {-120: 2, -60: 2, 0: 2, 60: 1, 120: 1}
    assert proc.open_windows() == 0


def test_partial_windows_at_the_start_are_emitted():
    # one trade at 30 s: it is in the 5 sliding windows starting -240, -180, -120, -60, 0
    _, out = run([[T(1, 100.0, 2.0, at(30))]])
    rows = windows_of(out, "agg_5m_1m")
    assert sorted(rows) == [-240, -180, -120, -60, 0]
    for w in rows.values():
        assert w["window_end_us"] - w["window_start_us"] == 300 * US_PER_S
        assert w["trade_count"] == 1
        assert w["trade_intensity"] == pytest.approx(1 / 300, rel=1e-12)


# -- sliding windows ----------------------------------------------------------------------


def test_sliding_5m_1m_each_trade_is_in_exactly_five_windows():
    # trades at 30 s (id 1), 90 s (id 2), 400 s (id 3)
    #  id 1 in starts -240..0; id 2 in starts -180..60; id 3 in starts 120..360
    trades = [T(1, 100.0, 1.0, at(30)), T(2, 110.0, 2.0, at(90)), T(3, 120.0, 1.0, at(400))]
    _, out = run([trades])
    rows = windows_of(out, "agg_5m_1m")
    expected = {
        -240: (1, 1, 1), -180: (2, 1, 2), -120: (2, 1, 2), -60: (2, 1, 2), 0: (2, 1, 2),
        60: (1, 2, 2), 120: (1, 3, 3), 180: (1, 3, 3), 240: (1, 3, 3), 300: (1, 3, 3),
        360: (1, 3, 3),
    }
    got = {k: (w["trade_count"], w["first_trade_id"], w["last_trade_id"]) for k, w in rows.items()}
    assert got == expected
    assert sum(w["trade_count"] for w in rows.values()) == 3 * 5
    w = rows[0]  # ids 1 and 2: volume 3, vwap (100 + 220) / 3
    assert (w["volume"], w["open"], w["close"], w["high"], w["low"]) == (3.0, 100.0, 110.0,
                                                                        110.0, 100.0)
    assert w["vwap"] == pytest.approx(320.0 / 3.0, rel=1e-12)
    assert w["trade_intensity"] == pytest.approx(2 / 300, rel=1e-12)
    assert counts(out, "agg_1m") == {0: 1, 60: 1, 360: 1}


def test_sliding_window_missing_trades_across_panes():
    # ids 1,2 in minute 0 and 5,6 in minute 1: each 1m window has no hole, the 5m ones have 2
    trades = [T(1, 1.0, 1.0, at(1)), T(2, 1.0, 1.0, at(2)), T(5, 1.0, 1.0, at(61)),
              T(6, 1.0, 1.0, at(62))]
    _, out = run([trades])
    assert {k: w["missing_trades"] for k, w in windows_of(out, "agg_1m").items()} == {0: 0, 60: 0}
    five = windows_of(out, "agg_5m_1m")
    assert five[0]["missing_trades"] == 2 and five[-240]["missing_trades"] == 0
    assert five[60]["missing_trades"] == 0


# -- idle symbols -------------------------------------------------------------------------


def test_quiet_symbol_windows_close_with_advance_idle():
    proc = Processor(config())
    # ETHUSDT trades once at 10 s (arrives at wall 11 s); BTCUSDT keeps trading
    proc.process(source_batch([T(1, 2000.0, 1.0, at(10), symbol="ETHUSDT")]), at(11))
    proc.process(source_batch([T(1, 100.0, 1.0, at(10)), T(2, 100.0, 1.0, at(65))]), at(66))
    assert proc.counters["BTCUSDT"].watermark_us == at(63)
    assert proc.counters["ETHUSDT"].watermark_us == at(8)
    # wall 20 s: ETH quiet for 9 s < idle timeout 10 s -> nothing moves
    o = proc.advance_idle(at(20), 10 * US_PER_S)
    assert o.window_count == 0 and proc.counters["ETHUSDT"].watermark_us == at(8)
    # wall 71 s: ETH quiet 60 s -> watermark 10 - 2 + 60 = 68 s; BTC quiet 5 s -> unchanged
    o = proc.advance_idle(at(71), 10 * US_PER_S)
    assert proc.counters["ETHUSDT"].watermark_us == at(68)
    assert proc.counters["BTCUSDT"].watermark_us == at(63)
    assert counts(o, "agg_1m", "ETHUSDT") == {0: 1}
    assert counts(o, "agg_5m_1m", "ETHUSDT") == {-240: 1}
    assert counts(o, "agg_1m", "BTCUSDT") == {}
    # the ETH window is final now: a trade for it is late
    o = proc.process(source_batch([T(2, 2000.0, 1.0, at(30), symbol="ETHUSDT")]), at(72))
    assert [(r.reason.value, r.symbol) for r in o.rejects] == [("late", "ETHUSDT")]
    assert_reconciled(proc)


def test_advance_idle_scales_with_replay_speed():
    proc = Processor(config())
    proc.process(source_batch([T(1, 1.0, 1.0, at(10))]), at(10))
    # 15 s of wall time at 10x: trade time advanced 150 s -> watermark 10 - 2 + 150 = 158
    o = proc.advance_idle(at(25), 10 * US_PER_S, speed=10.0)
    assert proc.counters["BTCUSDT"].watermark_us == at(158)
    assert counts(o, "agg_1m") == {0: 1}


# -- µs files -----------------------------------------------------------------------------


def test_microsecond_2025_file_lands_in_the_right_window():
    sbs = list(read_trade_csv(REAL / "BTCUSDT-trades-2025-01-01-first210.csv", "BTCUSDT", "t"))
    proc, out = run(sbs)
    rows = out.windows["agg_1m"]
    assert len(rows) == 1
    w = rows[0]
    # 2025-01-01T00:00:00Z = 1735689600 s; all 210 trades are in its first 5.5 s
    assert w["window_start_us"] == 1_735_689_600 * US_PER_S
    assert w["window_end_us"] == 1_735_689_660 * US_PER_S
    assert (w["trade_count"], w["first_trade_id"], w["last_trade_id"]) == (
        210, 4359935386, 4359935595)
    assert (w["open"], w["close"], w["high"], w["low"]) == (93576.0, 93562.01, 93576.01, 93562.01)
    assert w["missing_trades"] == 0
    assert len(out.windows["agg_5m_1m"]) == 5
    assert proc.counters["BTCUSDT"].accepted == 210


def test_microsecond_precision_at_a_window_boundary(tmp_path):
    # 2025 file (µs): 1735689659.999999 s is in [.., 60), 1735689660.000000 s is in [60, ..)
    p = tmp_path / "BTCUSDT-trades-2025-01-01.csv"
    p.write_text(
        "1,90000.0,0.1,9000.0,1735689659999999,True,True\n"
        "2,90001.0,0.2,18000.2,1735689660000000,False,True\n"
    )
    _, out = run(list(read_trade_csv(p, "BTCUSDT", "t")))
    got = {w["window_start_us"] // US_PER_S: w["trade_count"] for w in out.windows["agg_1m"]}
    assert got == {1_735_689_600: 1, 1_735_689_660: 1}


def test_real_btcusdt_minute_counts():
    sbs = list(read_trade_csv(REAL / "BTCUSDT-trades-2024-08-08.csv", "BTCUSDT", "t"))
    proc, out = run(sbs)
    assert counts(out, "agg_1m") == {-360: 875, -300: 1255, -240: 1011, -180: 2069,
                                     -120: 3216, -60: 1312, 0: 19}
    five = counts(out, "agg_5m_1m")
    assert len(five) == 11
    assert five[-300] == 1255 + 1011 + 2069 + 3216 + 1312
    w = windows_of(out, "agg_1m")[-60]
    assert (w["first_trade_id"], w["last_trade_id"], w["open"], w["close"]) == (
        3735691685, 3735692996, 61717.64, 61685.99)
    assert (w["high"], w["low"]) == (61743.5, 61666.17)
    c = proc.counters["BTCUSDT"]
    assert (c.accepted, c.duplicates, c.late, c.gaps) == (9757, 0, 0, 0)


# -- batch-split independence ---------------------------------------------------------------


def _messy_stream() -> list[T]:
    """Two symbols; ties, disorder within lateness, duplicates, a gap filled later, a gap
    never filled, late records, windows across several minutes."""
    b = "BTCUSDT"
    e = "ETHUSDT"
    return [
        T(100, 60000.0, 0.5, at(1.0), symbol=b),
        T(101, 60010.0, 0.2, at(1.0), symbol=b, maker=True),
        T(500, 3000.0, 2.0, at(2.0), symbol=e),
        T(103, 60020.0, 0.1, at(3.5), symbol=b),  # gap 102
        T(101, 60010.0, 0.2, at(1.0), symbol=b, maker=True),  # duplicate
        T(104, 60030.0, 0.4, at(59.0), symbol=b),
        T(106, 60040.0, 0.3, at(61.0), symbol=b),  # gap 105
        T(102, 60015.0, 0.7, at(2.0), symbol=b),  # fills 102, in time (wm 59)
        T(501, 3001.0, 1.0, at(58.0), symbol=e, maker=True),
        T(105, 60035.0, 0.6, at(60.5), symbol=b),  # fills 105
        T(107, 60100.0, 1.0, at(62.5), symbol=b),  # wm 60.5: [0,60) final
        T(108, 60000.0, 1.0, at(59.5), symbol=b),  # late
        T(502, 3002.0, 1.0, at(61.0), symbol=e),
        T(500, 3000.0, 2.0, at(2.0), symbol=e),  # duplicate
        T(109, 60200.0, 1.0, at(125.0), symbol=b),
        T(110, 60210.0, 1.0, at(125.0), symbol=b, maker=True),
        T(503, 3010.0, 1.0, at(59.9), symbol=e),  # ETH wm 59: accepted
        T(112, 60220.0, 1.0, at(126.0), symbol=b),  # gap 111 never filled
        T(113, 60230.0, 1.0, at(121.0), symbol=b),  # wm 124 < 180: accepted into [120,180)
        T(504, 3020.0, 1.0, at(200.0), symbol=e),
        T(505, 3021.0, 1.0, at(100.0), symbol=e),  # ETH late (wm 198)
        T(114, 60240.0, 1.0, at(400.0), symbol=b),
    ]


@pytest.mark.parametrize(
    "sizes",
    [[22], [1] * 22, [2] * 11, [3, 7, 1, 5, 6], [11, 11], [5, 1, 1, 1, 14], [13, 9]],
    ids=lambda s: "-".join(map(str, s)),
)
def test_results_do_not_depend_on_batch_boundaries(sizes):
    stream = _messy_stream()
    ref_proc, ref = run([stream])
    proc, out = run(split(stream, sizes))
    assert_same_windows(out, ref)
    assert counters_of(proc) == counters_of(ref_proc)
    assert sorted(accepted_ids(out, "BTCUSDT")) == sorted(accepted_ids(ref, "BTCUSDT"))
    assert sorted((r.reason.value, r.trade_id) for r in out.rejects) == sorted(
        (r.reason.value, r.trade_id) for r in ref.rejects)


def test_messy_stream_hand_computed_counters():
    proc, out = run([_messy_stream()])
    btc, eth = proc.counters["BTCUSDT"], proc.counters["ETHUSDT"]
    # BTC: 15 received; 1 duplicate (101); 1 late (108); accepted 13
    assert (btc.received, btc.accepted, btc.duplicates, btc.late) == (15, 13, 1, 1)
    # gaps: 102, 105 (later filled), 111 (never filled)
    assert (btc.gaps, btc.gap_trades) == (3, 3)
    # ETH: 7 received; 1 duplicate (500); 1 late (505 at 100 s after 200 s)
    assert (eth.received, eth.accepted, eth.duplicates, eth.late) == (7, 5, 1, 1)
    assert counts(out, "agg_1m", "BTCUSDT") == {0: 5, 60: 3, 120: 4, 360: 1}
    assert counts(out, "agg_1m", "ETHUSDT") == {0: 3, 60: 1, 180: 1}
    w = windows_of(out, "agg_1m", "BTCUSDT")[120]
    assert (w["first_trade_id"], w["last_trade_id"], w["missing_trades"]) == (109, 113, 1)
    assert_reconciled(proc)


def test_fill_of_a_final_gap_then_its_copy_counts_the_same_for_any_split():
    """ids 1, 3 (gap 2), 4 at 70 s (watermark 68: [0,60) final), then id 2 (at 5 s) twice.

    Record by record: the first id 2 is late (its minute is final), the second copy is a
    duplicate of it. The counters must be the same whether the batch boundary falls before
    the id-2 records or not.
    """
    stream = [T(1, 1.0, 1.0, at(1)), T(3, 1.0, 1.0, at(10)), T(4, 1.0, 1.0, at(70)),
              T(2, 1.0, 1.0, at(5)), T(2, 1.0, 1.0, at(5))]
    one_proc, _ = run([stream])
    two_proc, _ = run(split(stream, [3, 2]))
    assert counters_of(one_proc) == counters_of(two_proc)
    c = one_proc.counters["BTCUSDT"]
    assert (c.accepted, c.late, c.duplicates) == (3, 1, 1)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_real_file_random_batch_splits_give_identical_windows(seed):
    sbs = list(read_trade_csv(REAL / "ETHUSDT-trades-2024-08-08.csv", "ETHUSDT", "t"))
    whole = sbs[0].trades
    ref_proc, ref = run(sbs)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(whole)), 40))
    bounds = [0, *cuts, len(whole)]
    import numpy as np

    from cryptostream.model import SourceBatch

    parts = [SourceBatch(whole.take(np.arange(a, b))) for a, b in itertools.pairwise(bounds)]
    proc, out = run(parts)
    assert_same_windows(out, ref)
    assert counters_of(proc) == counters_of(ref_proc)


def test_json_path_gives_the_same_windows_as_direct_batches():
    stream = [t for t in _messy_stream() if t.t_us % 1000 == 0]
    lines = [json_line(t) for t in stream]
    proc_j, out_j = run([decode_lines(lines[:9], "ws", 0), decode_lines(lines[9:], "ws", 9)])
    proc_d, out_d = run([stream])
    assert_same_windows(out_j, out_d)
    assert counters_of(proc_j) == counters_of(proc_d)

