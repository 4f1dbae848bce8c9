"""Aggregate columns of a window, with hand-computed expectations.

The reference window (all in [0 s, 60 s) after T0), threshold 2 %:

====  ======  ====  ======  =========================  ================
 id   price   qty   maker   side                       spike vs previous
====  ======  ====  ======  =========================  ================
  1   100.0   1.0   False   buy  (taker bought)        first: no
  2   101.5   2.0   True    sell (buyer was maker)     +1.5 %: no
  4    98.0   1.0   False   buy                        -3.45 %: yes
  5   101.0   0.5   True    sell                       +3.06 %: yes
====  ======  ====  ======  =========================  ================

n = 4; open 100 (id 1), close 101 (id 5); high 101.5, low 98; volume 4.5;
quote volume 100 + 203 + 98 + 50.5 = 451.5; vwap 451.5 / 4.5 = 100.333...;
mean 400.5 / 4 = 100.125; deviations -0.125, 1.375, -2.125, 0.875 -> squares sum 7.1875,
sample stddev sqrt(7.1875 / 3); buy 2.0, sell 2.5, ratio 0.8; intensity 4 / 60;
range (101.5 - 98) / 98 * 100 = 350 / 98; return (101 - 100) / 100 * 100 = 1.0;
ids 1..5 with 4 present -> missing 1.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from cs_unit_helpers import T, at, config, run, windows_of

from cryptostream.processing.aggregates import PaneAgg, segment_aggregates
from cryptostream.sources.trade_csv import read_trade_csv

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"

REFERENCE = [
    T(1, 100.0, 1.0, at(1.0), maker=False),
    T(2, 101.5, 2.0, at(2.0), maker=True),
    T(4, 98.0, 1.0, at(3.0), maker=False),
    T(5, 101.0, 0.5, at(4.0), maker=True),
]

EXPECTED = {
    "trade_count": 4,
    "open": 100.0,
    "close": 101.0,
    "high": 101.5,
    "low": 98.0,
    "volume": 4.5,
    "quote_volume": 451.5,
    "vwap": 451.5 / 4.5,
    "avg_price": 100.125,
    "price_stddev": math.sqrt(7.1875 / 3),
    "buy_volume": 2.0,
    "sell_volume": 2.5,
    "buy_sell_ratio": 0.8,
    "trade_intensity": 4 / 60,
    "spike_count": 2,
    "first_trade_id": 1,
    "last_trade_id": 5,
    "range_pct": 350 / 98,
    "return_pct": 1.0,
    "missing_trades": 1,
    "complete": False,  # id 3 never came: the window says so
}

EXACT = {"trade_count", "spike_count", "first_trade_id", "last_trade_id", "missing_trades",
         "complete"}


def check_row(row: dict, expected: dict) -> None:
    for col, want in expected.items():
        got = row[col]
        if want is None:
            assert got is None, f"{col}: expected None, got {got!r}"
        elif col in EXACT:
            assert got == want, f"{col}: expected {want}, got {got}"
        else:
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12), f"{col}: {got} != {want}"


def test_every_aggregate_column_of_the_reference_window():
    _, out = run([REFERENCE], cfg=config(spike=0.02))
    check_row(windows_of(out, "agg_1m")[0], EXPECTED)


def test_reference_window_via_sliding_windows_has_the_same_values_except_intensity():
    _, out = run([REFERENCE], cfg=config(spike=0.02))
    rows = windows_of(out, "agg_5m_1m")
    assert sorted(rows) == [-240, -180, -120, -60, 0]
    for w in rows.values():
        check_row(w, {**EXPECTED, "trade_intensity": 4 / 300})


def test_reference_window_split_over_two_minutes_of_a_5m_window():
    # same four trades, ids 1, 2 in minute 0 and ids 4, 5 in minute 1: the 5m windows that
    # hold both minutes must merge the two partial aggregates into the same values
    trades = [
        T(1, 100.0, 1.0, at(1.0)),
        T(2, 101.5, 2.0, at(2.0), maker=True),
        T(4, 98.0, 1.0, at(61.0)),
        T(5, 101.0, 0.5, at(62.0), maker=True),
    ]
    _, out = run([trades], cfg=config(spike=0.02))
    five = windows_of(out, "agg_5m_1m")
    for start in (-180, -120, -60, 0):
        check_row(five[start], {**EXPECTED, "trade_intensity": 4 / 300})
    one = windows_of(out, "agg_1m")
    check_row(one[0], {"trade_count": 2, "open": 100.0, "close": 101.5, "volume": 3.0,
                       "buy_volume": 1.0, "sell_volume": 2.0, "buy_sell_ratio": 0.5,
                       "price_stddev": math.sqrt(1.125), "missing_trades": 0,
                       "return_pct": 1.5, "range_pct": 1.5})
    check_row(one[60], {"trade_count": 2, "open": 98.0, "close": 101.0, "spike_count": 2,
                        "avg_price": 99.5, "first_trade_id": 4, "last_trade_id": 5})


def test_open_close_by_trade_id_when_arrival_order_differs():
    # arrival 1, 5, 2, 4: ids 2..4 are a gap when 5 arrives, then 2 and 4 fill it
    trades = [REFERENCE[0], REFERENCE[3], REFERENCE[1], REFERENCE[2]]
    _, out = run([trades], cfg=config(spike=0.5))
    w = windows_of(out, "agg_1m")[0]
    check_row(w, {k: v for k, v in EXPECTED.items() if k != "spike_count"})
    assert w["spike_count"] == 0


def test_single_trade_window():
    _, out = run([[T(7, 250.0, 0.4, at(10))]])
    check_row(windows_of(out, "agg_1m")[0], {
        "trade_count": 1, "open": 250.0, "close": 250.0, "high": 250.0, "low": 250.0,
        "volume": 0.4, "quote_volume": 100.0, "vwap": 250.0, "avg_price": 250.0,
        "price_stddev": None, "buy_volume": 0.4, "sell_volume": 0.0, "buy_sell_ratio": None,
        "trade_intensity": 1 / 60, "spike_count": 0, "first_trade_id": 7, "last_trade_id": 7,
        "range_pct": 0.0, "return_pct": 0.0, "missing_trades": 0,
    })


def test_only_sells_gives_zero_ratio_and_only_buys_gives_none():
    sells = [T(1, 10.0, 1.0, at(1), maker=True), T(2, 10.0, 3.0, at(2), maker=True)]
    _, out = run([sells])
    w = windows_of(out, "agg_1m")[0]
    assert (w["buy_volume"], w["sell_volume"], w["buy_sell_ratio"]) == (0.0, 4.0, 0.0)
    assert w["price_stddev"] == 0.0
    buys = [T(1, 10.0, 1.0, at(1)), T(2, 10.0, 3.0, at(2))]
    _, out = run([buys])
    w = windows_of(out, "agg_1m")[0]
    assert (w["buy_volume"], w["sell_volume"], w["buy_sell_ratio"]) == (4.0, 0.0, None)


def test_negative_return_and_range():
    trades = [T(1, 200.0, 1.0, at(1)), T(2, 250.0, 1.0, at(2)), T(3, 150.0, 1.0, at(3))]
    _, out = run([trades], cfg=config(spike=1.0))
    w = windows_of(out, "agg_1m")[0]
    # return (150 - 200) / 200 = -25 %; range (250 - 150) / 150 = 66.67 %
    assert w["return_pct"] == pytest.approx(-25.0, rel=1e-12)
    assert w["range_pct"] == pytest.approx(200.0 / 3.0, rel=1e-12)
    assert w["price_stddev"] == pytest.approx(50.0, rel=1e-12)  # mean 200, devs 0, 50, -50


def test_stddev_is_accurate_at_btc_prices_across_panes():
    # 60000.01 .. 60000.04 in four different minutes of one 5m window:
    # deviations ±0.015, ±0.005 -> sum of squares 0.0005 -> sample stddev sqrt(0.0005 / 3)
    trades = [T(i + 1, 60000.0 + (i + 1) / 100, 1.0, at(5 + 60 * i)) for i in range(4)]
    _, out = run([trades])
    w = windows_of(out, "agg_5m_1m")[0]
    assert w["trade_count"] == 4
    assert w["price_stddev"] == pytest.approx(math.sqrt(0.0005 / 3), rel=1e-7)
    assert w["avg_price"] == pytest.approx(60000.025, rel=1e-12)


def test_pane_merge_equals_aggregate_of_all_trades():
    kw = {"spike": np.zeros(2, bool), "latency_ms": np.zeros(2),
          "recv_latency_ms": np.full(2, np.nan)}
    a = segment_aggregates(pane=np.array([0, 0]), trade_id=np.array([3, 1]),
                           price=np.array([30.0, 10.0]), qty=np.array([1.0, 1.0]),
                           is_buyer_maker=np.array([False, True]), **kw)[0]
    b = segment_aggregates(pane=np.array([60, 60]), trade_id=np.array([2, 4]),
                           price=np.array([20.0, 40.0]), qty=np.array([2.0, 2.0]),
                           is_buyer_maker=np.array([False, False]), **kw)[60]
    r = PaneAgg.initialize().agg(b).agg(a).result(window_s=120)
    # prices 10 (id1), 20 (id2), 30 (id3), 40 (id4): mean 25, sample var 500/3
    check_row(r, {
        "trade_count": 4, "open": 10.0, "close": 40.0, "high": 40.0, "low": 10.0,
        "volume": 6.0, "quote_volume": 10.0 + 40.0 + 30.0 + 80.0, "vwap": 160.0 / 6.0,
        "avg_price": 25.0, "price_stddev": math.sqrt(500.0 / 3.0), "buy_volume": 5.0,
        "sell_volume": 1.0, "buy_sell_ratio": 5.0, "trade_intensity": 4 / 120,
        "first_trade_id": 1, "last_trade_id": 4, "missing_trades": 0,
        "range_pct": 300.0, "return_pct": 300.0,
    })


def _reference_row(rows: list[list[str]]) -> dict:
    """Plain-Python aggregate of official CSV rows (id, price, qty, quoteQty, time, maker)."""
    rows = sorted(rows, key=lambda r: int(r[0]))
    p = [float(r[1]) for r in rows]
    q = [float(r[2]) for r in rows]
    mk = [r[5] == "True" for r in rows]
    vol = math.fsum(q)
    qv = math.fsum(a * b for a, b in zip(p, q))
    sell = math.fsum(x for x, m in zip(q, mk) if m)
    buy = math.fsum(x for x, m in zip(q, mk) if not m)
    return {
        "trade_count": len(rows), "open": p[0], "close": p[-1], "high": max(p), "low": min(p),
        "volume": vol, "quote_volume": qv, "vwap": qv / vol, "avg_price": statistics.fmean(p),
        "price_stddev": statistics.stdev(p) if len(p) > 1 else None,
        "buy_volume": buy, "sell_volume": sell, "buy_sell_ratio": buy / sell if sell else None,
        "first_trade_id": int(rows[0][0]), "last_trade_id": int(rows[-1][0]),
        "range_pct": (max(p) - min(p)) / min(p) * 100,
        "return_pct": (p[-1] - p[0]) / p[0] * 100,
        "missing_trades": int(rows[-1][0]) - int(rows[0][0]) + 1 - len(rows),
    }


@pytest.mark.parametrize("table,size_s", [("agg_1m", 60), ("agg_5m_1m", 300)])
def test_real_btcusdt_windows_match_a_plain_python_reference(table, size_s):
    path = REAL / "BTCUSDT-trades-2024-08-08.csv"
    rows = list(csv.reader(path.open()))
    _, out = run(list(read_trade_csv(path, "BTCUSDT", "t")))
    got = {w["window_start_us"] // 1000: w for w in out.windows[table]}
    starts_ms = set()
    for r in rows:
        t = int(r[4])
        s = (t // 60_000) * 60_000
        while s > t - size_s * 1000:
            starts_ms.add(s)
            s -= 60_000
    assert set(got) == starts_ms
    for s in sorted(starts_ms):
        inside = [r for r in rows if s <= int(r[4]) < s + size_s * 1000]
        exp = _reference_row(inside)
        exp["trade_intensity"] = len(inside) / size_s
        check_row(got[s], exp)
