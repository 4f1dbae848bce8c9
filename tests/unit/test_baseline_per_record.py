"""The benchmark's per-record baseline and the engine agree on a small simulated input.

``benchmarks/baseline_per_record.py`` implements the cleaning and windowing semantics one
record at a time in plain Python (orjson / csv, Welford, a dict of windows); the engine does
it a batch at a time with numpy. Same input, same aggregate data columns: this checks the
benchmark's yardstick and cross-checks the engine. No timing here (benchmarks run on demand).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from cryptostream.model import DEFAULT_WINDOWS, US_PER_S
from cryptostream.processing.engine import EngineConfig, Output, Processor
from cryptostream.sources.binance_messages import decode_lines
from cryptostream.sources.simulator import write_trade_csv, write_ws_jsonl
from cryptostream.sources.trade_csv import read_trade_csv

pytest.importorskip("orjson")

_BASELINE = Path(__file__).resolve().parents[2] / "benchmarks" / "baseline_per_record.py"
NOW_US = 1_800_000_000 * US_PER_S
EXACT = ("trade_count", "first_trade_id", "last_trade_id", "spike_count", "missing_trades")
FLOATS = ("open", "high", "low", "close", "volume", "quote_volume", "vwap", "avg_price",
          "price_stddev", "buy_volume", "sell_volume", "buy_sell_ratio", "trade_intensity",
          "range_pct", "return_pct")


@pytest.fixture(scope="module")
def baseline():
    spec = importlib.util.spec_from_file_location("baseline_per_record", _BASELINE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _engine() -> Processor:
    return Processor(EngineConfig(windows=DEFAULT_WINDOWS, allowed_lateness_us=2 * US_PER_S,
                                  max_clock_skew_us=0, spike_threshold=0.02))


def _edit(line: bytes, **changes) -> bytes:
    msg = json.loads(line)
    msg["data"].update(changes)
    return json.dumps(msg, separators=(",", ":")).encode()


def _with_anomalies(lines: list[bytes]) -> list[bytes]:
    """Simulated messages plus a duplicate, a late trade, a bad price, a price spike, a bad
    symbol, a bookTicker and a broken line, so that every cleaning rule is exercised."""
    out = list(lines)
    late = json.loads(out[6000])["data"]
    out[6000] = _edit(out[6000], T=late["T"] - 180_000)  # 3 minutes behind: its pane is final
    out[7000] = _edit(out[7000], p="0.00000000")
    spiked = json.loads(out[8000])["data"]
    out[8000] = _edit(out[8000], p=f"{float(spiked['p']) * 1.05:.8f}")
    out.insert(5000, out[100])  # a duplicate
    out.insert(3000, _edit(out[2999], s="btc-usdt"))
    out.insert(2000, b'{"u":1,"s":"BTCUSDT","b":"1","B":"1","a":"2","A":"1"}')
    out.insert(1000, b'{"stream":"btcusdt@trade","data":{oops')
    return out


def _by_key(rows: list[dict]) -> dict[tuple, dict]:
    keyed = {(r["symbol"], r["window_start_us"], r["window_end_us"]): r for r in rows}
    assert len(keyed) == len(rows), "a window was emitted twice"
    return keyed


def _assert_same_windows(engine: Output, base_windows: dict[str, list[dict]]) -> None:
    for table in ("agg_1m", "agg_5m_1m"):
        want, got = _by_key(engine.windows[table]), _by_key(base_windows[table])
        assert sorted(got) == sorted(want), table
        for key, e in want.items():
            b = got[key]
            assert {c: b[c] for c in EXACT} == {c: e[c] for c in EXACT}, (table, key)
            for c in FLOATS:
                if e[c] is None or b[c] is None:
                    assert e[c] is b[c] is None, (table, key, c)
                else:
                    assert math.isclose(b[c], e[c], rel_tol=1e-9, abs_tol=1e-9), (table, key, c)


def test_json_lines_same_windows_and_counts_as_engine(tmp_path, baseline):
    path = tmp_path / "trades.jsonl"
    write_ws_jsonl(path, ["BTCUSDT", "ETHUSDT", "SOLUSDT"], 20_000, seed=5, trades_per_s=5.0)
    lines = _with_anomalies(path.read_bytes().splitlines())

    proc, out = _engine(), Output()
    for i in range(0, len(lines), 777):  # odd batch size: results must not depend on it
        out.extend(proc.process(decode_lines(lines[i:i + 777], "test", i), NOW_US))
    out.extend(proc.close(NOW_US))

    base = baseline.PerRecordBaseline()
    base.feed_json_lines(lines, "test")
    base.close()

    _assert_same_windows(out, base.windows)
    assert len(out.windows["agg_1m"]) > 50
    assert sum(r["spike_count"] for r in base.windows["agg_1m"]) >= 2
    cs = proc.counters.values()
    got = base.counters()
    assert got["received"] == sum(c.received for c in cs) == len(lines)
    assert got["accepted"] == sum(c.accepted for c in cs)
    assert got["duplicates"] == sum(c.duplicates for c in cs) == 1
    assert got["late"] == sum(c.late for c in cs) == 1
    assert got["ignored"] == sum(c.ignored for c in cs) == 1
    assert got["rejected"] == sum(c.rejected_total for c in cs) == 4
    assert sorted(r for _, r in base.rejects) == sorted(
        str(r) for c in cs for r in c.rejected.elements())


def test_trade_csv_same_windows_as_engine(tmp_path, baseline):
    path = tmp_path / "ETHUSDT-trades-2024-08-08.csv"
    write_trade_csv(path, "ETHUSDT", 8_000, seed=9, trades_per_s=3.0)

    proc, out = _engine(), Output()
    for sb in read_trade_csv(path, "ETHUSDT", "test", block_size=64 << 10):
        out.extend(proc.process(sb, NOW_US))
    out.extend(proc.close(NOW_US))

    base = baseline.PerRecordBaseline()
    assert base.feed_csv_file(path, "ETHUSDT") == 8_000
    base.close()

    _assert_same_windows(out, base.windows)
    assert sum(r["trade_count"] for r in base.windows["agg_1m"]) == 8_000


def test_store_writes_the_package_schema(tmp_path, baseline):
    import duckdb

    from cryptostream.model import AGG_COLUMNS

    path = tmp_path / "trades.jsonl"
    write_ws_jsonl(path, ["BTCUSDT", "ETHUSDT"], 2_000, seed=1)
    base = baseline.PerRecordBaseline()
    base.feed_json_file(path)
    base.close()
    base.store(tmp_path / "b.duckdb", threads=1)
    con = duckdb.connect(str(tmp_path / "b.duckdb"), read_only=True)
    try:
        cols = [r[0] for r in con.execute("DESCRIBE agg_1m").fetchall()]
        n, total = con.execute("SELECT count(*), sum(trade_count) FROM agg_1m").fetchone()
        trades = con.execute("SELECT count(*) FROM trades").fetchone()[0]
    finally:
        con.close()
    assert cols == [c for c, _ in AGG_COLUMNS]
    assert (n, total, trades) == (len(base.windows["agg_1m"]), 2_000, 2_000)
