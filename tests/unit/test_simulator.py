"""Behaviour of the simulated market: determinism, realism, the Source contract and the writers."""

from __future__ import annotations

import csv
import json
import time
from decimal import Decimal

import numpy as np
import pytest

from cryptostream.model import NO_TIME, US_PER_S
from cryptostream.sources.base import Source
from cryptostream.sources.simulator import (
    DEFAULT_START_US,
    SimulatorSource,
    lot_size,
    simulate_arrays,
    tick_size,
    write_trade_csv,
    write_ws_jsonl,
)

FIELDS = ("trade_id", "price", "qty", "trade_time_us", "event_time_us", "is_buyer_maker")


@pytest.fixture(scope="module")
def hour() -> dict[str, np.ndarray]:
    return simulate_arrays("BTCUSDT", duration_s=3600, seed=11)


def collect(src: SimulatorSource) -> dict[str, np.ndarray]:
    batches = [b.trades for b in src.batches()]
    return {
        "symbol": np.concatenate([b.symbol for b in batches]),
        **{f: np.concatenate([getattr(b, f) for b in batches]) for f in FIELDS},
        "recv_time_us": np.concatenate([b.recv_time_us for b in batches]),
    }


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    for field in FIELDS:
        np.testing.assert_array_equal(a[field], b[field], err_msg=field)


def test_same_seed_same_trades_different_seed_different_trades():
    a = simulate_arrays("BTCUSDT", n_trades=5000, seed=1)
    assert_same(a, simulate_arrays("BTCUSDT", n_trades=5000, seed=1))
    b = simulate_arrays("BTCUSDT", n_trades=5000, seed=2)
    assert not np.array_equal(a["price"], b["price"])
    assert not np.array_equal(a["trade_time_us"], b["trade_time_us"])


def test_source_is_reproducible_and_independent_of_the_other_symbols():
    both = collect(SimulatorSource(["BTCUSDT", "ETHUSDT"], seed=5, duration_s=300))
    again = collect(SimulatorSource(["BTCUSDT", "ETHUSDT"], seed=5, duration_s=300))
    assert_same(both, again)
    alone = collect(SimulatorSource(["ETHUSDT"], seed=5, duration_s=300))
    assert_same({f: v[both["symbol"] == "ETHUSDT"] for f, v in both.items()}, alone)
    other = collect(SimulatorSource(["BTCUSDT", "ETHUSDT"], seed=6, duration_s=300))
    assert len(other["price"]) != len(both["price"]) or (other["price"] != both["price"]).any()


def test_source_stream_equals_simulate_arrays_for_the_same_seed():
    got = collect(SimulatorSource(["BTCUSDT", "SOLUSDT"], seed=3, duration_s=150.5))
    for sym in ("BTCUSDT", "SOLUSDT"):
        want = simulate_arrays(sym, duration_s=150.5, seed=3)
        assert_same({f: v[got["symbol"] == sym] for f, v in got.items()}, want)


def test_ids_consecutive_and_times_ordered_per_symbol_and_across_symbols():
    got = collect(SimulatorSource(["BTCUSDT", "ETHUSDT", "XRPUSDT"], seed=2, duration_s=600))
    assert (np.diff(got["trade_time_us"]) >= 0).all()  # interleaved in time order
    for sym in ("BTCUSDT", "ETHUSDT", "XRPUSDT"):
        mine = got["symbol"] == sym
        assert mine.sum() > 1000
        assert (np.diff(got["trade_id"][mine]) == 1).all()
        assert (np.diff(got["trade_time_us"][mine]) >= 0).all()


def test_times_are_whole_milliseconds_with_event_time_0_to_2_ms_later(hour):
    t, e = hour["trade_time_us"], hour["event_time_us"]
    assert (t % 1000 == 0).all() and (e % 1000 == 0).all()
    assert set(np.unique(e - t).tolist()) <= {0, 1000, 2000}
    assert (np.diff(e) >= 0).all()


def test_prices_positive_on_tick_and_quantities_positive_on_lot():
    for sym, start in [("BTCUSDT", 60_000), ("ETHUSDT", 2_700), ("SOLUSDT", 150), ("ABCUSDT", 0)]:
        a = simulate_arrays(sym, duration_s=1800, seed=4)
        price, qty = a["price"], a["qty"]
        if start:
            assert 0.8 * start < np.median(price) < 1.2 * start
        assert (price > 0).all() and (qty > 0).all()
        tick, lot = tick_size(float(price[0])), lot_size(float(price[0]))
        assert np.allclose(price / tick, np.rint(price / tick), rtol=0, atol=1e-6)
        assert np.allclose(qty / lot, np.rint(qty / lot), rtol=0, atol=1e-6)


def test_sweeps_put_hundreds_of_same_side_trades_in_one_millisecond_walking_the_book(hour):
    times, counts = np.unique(hour["trade_time_us"], return_counts=True)
    swept = times[counts >= 100]
    assert len(swept) >= 1
    for t in swept:
        at = hour["trade_time_us"] == t
        assert len(np.unique(hour["is_buyer_maker"][at])) == 1
        steps = np.diff(hour["price"][at])
        assert (steps >= 0).all() or (steps <= 0).all()
        assert steps.any()  # the sweep moves through several price levels


def test_sizes_are_heavy_tailed_and_both_sides_trade(hour):
    qty = hour["qty"]
    assert qty.max() / np.median(qty) > 50
    assert 0.3 < hour["is_buyer_maker"].mean() < 0.7


def test_arrivals_are_bursty_around_the_requested_rate(hour):
    per_s = np.bincount((hour["trade_time_us"] - DEFAULT_START_US) // US_PER_S, minlength=3600)
    assert 15 < per_s.mean() < 60
    assert per_s.max() > 10 * np.median(per_s)


def test_duration_bounds_event_time_and_makes_the_source_finite():
    src = SimulatorSource(["BTCUSDT"], duration_s=90, start_time_us=1_700_000_000_123_456)
    assert src.finite and src.speed is None and isinstance(src, Source)
    got = collect(src)
    start = 1_700_000_000_123_000
    assert got["trade_time_us"].min() >= start
    assert got["trade_time_us"].max() < start + 90 * US_PER_S
    assert got["trade_time_us"].max() > start + 80 * US_PER_S
    assert not SimulatorSource(["BTCUSDT"]).finite


def test_batches_carry_the_trade_batch_contract():
    src = SimulatorSource(["BTCUSDT", "ETHUSDT"], duration_s=600, batch_size=1000, name="sim")
    batches = list(src.batches())
    assert all(b.rejects == [] and b.ignored == {} for b in batches)
    trades = [b.trades for b in batches]
    assert all(0 < len(t) <= 1000 and t.source == "sim" and t.raw is None for t in trades)
    assert all(t.symbol.dtype == object and (t.status == 0).all() for t in trades)
    offsets = np.concatenate([t.offset for t in trades])
    np.testing.assert_array_equal(offsets, np.arange(len(offsets)))
    assert (np.concatenate([t.recv_time_us for t in trades]) == NO_TIME).all()


def test_clock_sets_receive_time_per_batch():
    ticks = iter(range(1_000, 10**9, 1_000))
    src = SimulatorSource(["BTCUSDT"], duration_s=300, batch_size=500, clock=lambda: next(ticks))
    recv = [np.unique(b.trades.recv_time_us).tolist() for b in src.batches()]
    assert recv[:3] == [[1_000], [2_000], [3_000]]


def test_close_stops_an_endless_source():
    src = SimulatorSource(["BTCUSDT"], speed=1.0)
    it = src.batches()
    first = next(it)
    assert len(first.trades) > 0
    src.close()
    assert list(it) == []
    src.close()  # idempotent


def test_endless_unpaced_source_keeps_producing_until_abandoned():
    src = SimulatorSource(["BTCUSDT"], batch_size=2048)
    it = src.batches()
    sizes = [len(next(it).trades) for _ in range(20)]
    assert sizes == [2048] * 20
    it.close()  # abandoning iteration closes the source


def test_speed_paces_event_time_against_wall_time():
    src = SimulatorSource(["BTCUSDT", "ETHUSDT"], duration_s=60, speed=600)
    assert src.speed == 600
    began = time.monotonic()
    n = sum(len(b.trades) for b in src.batches())
    wall = time.monotonic() - began
    assert n > 0
    assert 0.05 < wall < 2.0  # 60 s of event time at 600x is 0.1 s


def test_trade_csv_matches_the_arrays_and_the_official_layout(tmp_path):
    path = tmp_path / "BTCUSDT-trades.csv"
    seen: list[int] = []
    assert write_trade_csv(path, "BTCUSDT", 20_000, seed=9, progress=seen.append) == 20_000
    assert seen[-1] == 20_000
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    want = simulate_arrays("BTCUSDT", n_trades=20_000, seed=9)
    assert len(rows) == 20_000 and all(len(r) == 7 for r in rows)
    assert rows[0][0].isdigit()  # no header
    assert [int(r[0]) for r in rows] == want["trade_id"].tolist()
    assert [float(r[1]) for r in rows] == want["price"].tolist()
    assert [float(r[2]) for r in rows] == want["qty"].tolist()
    assert [int(r[4]) * 1000 for r in rows] == want["trade_time_us"].tolist()
    assert [r[5] == "True" for r in rows] == want["is_buyer_maker"].tolist()
    assert {r[5] for r in rows} == {"True", "False"} and {r[6] for r in rows} == {"True"}
    for r in rows:
        assert len(r[1].split(".")[1]) == 8 and len(r[3].split(".")[1]) == 8
        assert Decimal(r[3]) == Decimal(r[1]) * Decimal(r[2])


@pytest.mark.parametrize("combined", [True, False])
def test_ws_jsonl_matches_the_arrays_per_symbol(tmp_path, combined):
    path = tmp_path / "trades.jsonl"
    symbols = ["BTCUSDT", "ETHUSDT"]
    assert write_ws_jsonl(path, symbols, 10_000, seed=8, combined=combined) == 10_000
    lines = path.read_text().splitlines()
    msgs = [json.loads(line) for line in lines]
    if combined:
        assert all(m["stream"] == m["data"]["s"].lower() + "@trade" for m in msgs)
        msgs = [m["data"] for m in msgs]
    assert all(m["e"] == "trade" and m["M"] is True for m in msgs)
    assert set(msgs[0]) == set("eEstpqTmM")
    times = [m["T"] for m in msgs]
    assert times == sorted(times)
    for sym in symbols:
        mine = [m for m in msgs if m["s"] == sym]
        want = simulate_arrays(sym, n_trades=len(mine), seed=8)
        assert [m["t"] for m in mine] == want["trade_id"].tolist()
        assert [float(m["p"]) for m in mine] == want["price"].tolist()
        assert [float(m["q"]) for m in mine] == want["qty"].tolist()
        assert [m["T"] * 1000 for m in mine] == want["trade_time_us"].tolist()
        assert [m["E"] * 1000 for m in mine] == want["event_time_us"].tolist()
        assert [m["m"] for m in mine] == want["is_buyer_maker"].tolist()


def test_ws_jsonl_receive_prefix_is_a_nondecreasing_ns_time_after_the_event(tmp_path):
    path = tmp_path / "rec.jsonl"
    write_ws_jsonl(path, ["ETHUSDT"], 3_000, seed=1, recv_prefix=True)
    recv, events = [], []
    for line in path.read_text().splitlines():
        prefix, _, payload = line.partition(" ")
        recv.append(int(prefix))
        events.append(json.loads(payload)["data"]["E"])
    assert recv == sorted(recv)
    assert all(r >= e * 1_000_000 for r, e in zip(recv, events))
