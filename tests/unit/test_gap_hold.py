"""Windows wait for a pending backfill: a gap holds its symbol's watermark (live sources)."""

from __future__ import annotations

from dataclasses import replace

from cs_unit_helpers import NOW_US, T, at, config, source_batch, windows_of

from cryptostream.processing.engine import Output, Processor

US = 1_000_000
WAIT_US = 30 * US


def _trades(ids_times):
    return [T(i, 100.0 + i, 1.0, at(s)) for i, s in ids_times]


BEFORE = _trades([(1, 10), (2, 50)])  # minute 0
MISSING = _trades([(3, 59), (4, 61)])  # minute 0 and minute 1: the stream skipped them
AFTER = _trades([(5, 125), (6, 190)])  # minutes 2 and 3: far past the lateness


def _proc(wait_us: int) -> Processor:
    return Processor(replace(config(), gap_wait_us=wait_us))


def _feed(proc: Processor, trades, now_us: int) -> Output:
    return proc.process(source_batch(trades), now_us)


def test_without_a_hold_the_missing_trades_come_too_late():
    proc = _proc(0)
    _feed(proc, BEFORE, NOW_US)
    _feed(proc, AFTER, NOW_US)
    out = _feed(proc, MISSING, NOW_US)
    assert [r.reason.value for r in out.rejects] == ["late", "late"]


def test_a_gap_holds_windows_until_its_backfill_fills_it():
    proc = _proc(WAIT_US)
    out = Output()
    out.extend(_feed(proc, BEFORE, NOW_US))
    out.extend(_feed(proc, AFTER, NOW_US))
    # the jump from 2 to 5 is a gap; nothing after the watermark before it may close
    assert windows_of(out, "agg_1m") == {}
    assert proc.counters["BTCUSDT"].gaps_open == 1
    out.extend(_feed(proc, MISSING, NOW_US + US))  # the backfill arrives one second later
    assert out.rejects == []
    got = windows_of(out, "agg_1m")
    # the hold is released: minutes 0..2 are final now (watermark 190 s - 2 s), complete
    assert {k: v["trade_count"] for k, v in got.items()} == {0: 3, 60: 1, 120: 1}
    assert got[0]["last_trade_id"] == 3 and got[0]["missing_trades"] == 0
    assert proc.counters["BTCUSDT"].gaps_open == 0
    gaps = {(g.from_id, g.to_id, g.filled) for g in out.gaps}  # the sinks keep the latest
    assert gaps == {(3, 4, 2)}


def test_a_gap_whose_backfill_never_comes_stops_holding_after_the_wait():
    proc = _proc(WAIT_US)
    out = Output()
    out.extend(_feed(proc, BEFORE, NOW_US))
    out.extend(_feed(proc, AFTER, NOW_US))
    out.extend(proc.advance_idle(NOW_US + WAIT_US - 1, idle_timeout_us=3600 * US))
    assert windows_of(out, "agg_1m") == {}
    out.extend(proc.advance_idle(NOW_US + WAIT_US, idle_timeout_us=3600 * US))
    got = windows_of(out, "agg_1m")
    assert {k: v["trade_count"] for k, v in got.items()} == {0: 2, 120: 1}
    assert got[0]["missing_trades"] == 0  # ids 3..4 lie after the window's last trade id
    late = _feed(proc, MISSING, NOW_US + WAIT_US + 1)
    assert [r.reason.value for r in late.rejects] == ["late", "late"]


def test_a_hold_does_not_stop_idle_advance_beyond_it_nor_close_at_the_end():
    proc = _proc(WAIT_US)
    out = Output()
    out.extend(_feed(proc, BEFORE, NOW_US))
    out.extend(_feed(proc, AFTER, NOW_US))
    # quiet for longer than the idle timeout, but the gap is still pending: nothing closes
    out.extend(proc.advance_idle(NOW_US + 10 * US, idle_timeout_us=5 * US))
    assert windows_of(out, "agg_1m") == {}
    out.extend(proc.close(NOW_US + 11 * US))
    assert {k: v["trade_count"] for k, v in windows_of(out, "agg_1m").items()} == {
        0: 2, 120: 1, 180: 1}
