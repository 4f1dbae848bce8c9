"""Decoding Binance WebSocket lines: shapes, field mapping, recorder prefixes, non-trade
messages, broken lines and the real recordings."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from cs_unit_helpers import T0_US, T, assert_reconciled, at, config, json_line, run

from cryptostream.model import NO_TIME, REASON_INDEX, RejectReason
from cryptostream.sources.binance_messages import decode_lines

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"

@pytest.fixture(autouse=True, params=["msgspec", "columnar"])
def _decoder(request, monkeypatch):
    """Every test here runs with both decoders: msgspec (live) and DuckDB (replay chunks)."""
    if request.param == "columnar":
        from cs_unit_helpers import columnar_decode_lines

        monkeypatch.setitem(globals(), "decode_lines", columnar_decode_lines)
    return request.param


RAW = (b'{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,"p":"61837.63000000",'
       b'"q":"0.02000000","T":1723161255342,"m":true,"M":true}')
COMBINED = b'{"stream":"btcusdt@trade","data":' + RAW + b"}"


def one(line: bytes, **kw):
    return decode_lines([line], "ws", 0, **kw)


@pytest.mark.parametrize("line", [RAW, COMBINED], ids=["raw", "combined"])
def test_trade_fields_are_mapped(line):
    sb = one(line)
    b = sb.trades
    assert len(b) == 1 and sb.rejects == [] and sb.ignored == {}
    assert b.symbol_at(0) == "BTCUSDT"
    assert b.trade_id.tolist() == [3735683259]
    assert b.price.tolist() == [61837.63]
    assert b.qty.tolist() == [0.02]
    assert b.trade_time_us.tolist() == [1723161255342 * 1000]
    assert b.event_time_us.tolist() == [1723161255343 * 1000]
    assert b.recv_time_us.tolist() == [NO_TIME]
    assert b.is_buyer_maker.tolist() == [True]
    assert b.status.tolist() == [0]
    assert b.raw_payload(0) == line.decode()


def test_hftbacktest_nanosecond_prefix_is_the_receive_time():
    sb = one(b"1723161254087891268 " + COMBINED)
    assert sb.trades.recv_time_us.tolist() == [1723161254087891]
    assert sb.trades.trade_id.tolist() == [3735683259]


def test_cryptofeed_seconds_prefix_is_the_receive_time():
    sb = one(b"1723161254.5: " + RAW)
    assert sb.trades.recv_time_us.tolist() == [1723161254500000]


def test_receive_time_argument_stamps_records_and_a_prefix_wins():
    sb = decode_lines([RAW], "ws", 0, recv_time_us=at(3))
    assert (sb.trades.recv_time_us - T0_US).tolist() == [3_000_000]
    sb = decode_lines([b"1723161254087891268 " + RAW], "ws", 0, recv_time_us=at(3))
    assert sb.trades.recv_time_us.tolist() == [1723161254087891]


def test_recorder_receive_time_feeds_the_clock_skew_check():
    # trade time 1723161601.000 s; receive stamps 4.9 s before (ok) and 5.1 s after (skew)
    ok = b"1723161596100000000 " + json_line(T(1, 100.0, 1.0, at(1)))
    skewed = b"1723161606100000000 " + json_line(T(2, 100.0, 1.0, at(1)))
    proc, out = run([decode_lines([ok, skewed], "ws", 0)], cfg=config(skew_s=5.0))
    assert [(r.reason.value, r.trade_id, r.source_offset) for r in out.rejects] == [
        ("clock_skew", 2, 1)]
    assert proc.counters["BTCUSDT"].accepted == 1


def test_numeric_string_for_an_integer_field_is_converted():
    sb = one(RAW.replace(b'"t":3735683259', b'"t":"123"'))
    assert sb.rejects == []
    assert sb.trades.trade_id.tolist() == [123]
    assert sb.trades.status.tolist() == [0]


def test_numbers_instead_of_decimal_strings_are_accepted():
    sb = one(RAW.replace(b'"p":"61837.63000000"', b'"p":61837.63'))
    assert sb.trades.price.tolist() == [61837.63]


@pytest.mark.parametrize(
    ("line", "symbol"),
    [
        (b'{"u":50093239212,"s":"BTCUSDT","b":"61837.63","B":"3.78","a":"61837.64","A":"1.5"}',
         "BTCUSDT"),
        ((b'{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":"1","B":"1",'
         b'"a":"2","A":"1"}}'), "BTCUSDT"),
        ((b'{"stream":"ethusdt@depth@100ms","data":{"e":"depthUpdate","E":1723161255208,'
         b'"s":"ETHUSDT","U":1,"u":2,"b":[["1.0","0.0"]],"a":[]}}'), "ETHUSDT"),
        (b'{"lastUpdateId":50093239218,"bids":[["61837.63","3.7"]],"asks":[["61837.64","1"]]}',
         ""),
        (b'{"result":null,"id":1}', ""),
        ((b'{"e":"aggTrade","E":1,"s":"BNBUSDT","a":5,"p":"1","q":"1","f":1,"l":2,"T":1,'
         b'"m":true,"M":true}'), "BNBUSDT"),
    ],
    ids=["bookTicker", "bookTicker-combined", "depthUpdate", "rest-snapshot", "sub-reply",
         "aggTrade"],
)
def test_valid_non_trade_messages_are_ignored_under_their_symbol(line, symbol):
    sb = one(line)
    assert len(sb.trades) == 0
    assert sb.rejects == []
    assert sb.ignored == {symbol: 1}


def test_mixed_chunk_keeps_offsets_of_each_kind():
    lines = [
        json_line(T(1, 100.0, 1.0, at(1))),
        b'{"u":1,"s":"BTCUSDT","b":"1","B":"1","a":"2","A":"1"}',
        b'{"e":"trade","s":"BTCUSDT","t":',
        json_line(T(2, 100.0, 1.0, at(2))),
    ]
    sb = decode_lines(lines, "ws", 1000)
    assert sb.trades.trade_id.tolist() == [1, 2]
    assert sb.trades.offset.tolist() == [1000, 1003]
    assert [(r.reason.value, r.source_offset, r.symbol) for r in sb.rejects] == [
        ("decode_error", 1002, "BTCUSDT")]
    assert sb.ignored == {"BTCUSDT": 1}


def test_offsets_are_line_positions_even_after_a_blank_line():
    lines = [json_line(T(1, 100.0, 1.0, at(1))), b"", b'{"e":"trade","t":', b"   ",
             json_line(T(2, 100.0, 1.0, at(2)))]
    sb = decode_lines(lines, "ws", 100)
    assert sb.trades.offset.tolist() == [100, 104]
    assert [(r.reason.value, r.source_offset) for r in sb.rejects] == [("decode_error", 102)]
    # blank lines are neither trades, rejects nor ignored messages
    assert sb.ignored == {}


def test_wrong_type_in_a_trade_field_is_bad_type():
    sb = one(RAW.replace(b'"t":3735683259', b'"t":"abc"'))
    assert len(sb.trades) == 0
    assert [(r.reason.value, r.symbol) for r in sb.rejects] == [("bad_type", "BTCUSDT")]
    sb = one(RAW.replace(b'"m":true', b'"m":"yes"'))
    assert [(r.reason.value, r.symbol) for r in sb.rejects] == [("bad_type", "BTCUSDT")]


def test_missing_field_is_marked_for_the_processor():
    line = RAW.replace(b',"q":"0.02000000"', b"")
    sb = one(line)
    assert sb.trades.status.tolist() == [REASON_INDEX[RejectReason.MISSING_FIELD]]
    proc, out = run([sb])
    assert [(r.reason.value, r.symbol, r.source_offset) for r in out.rejects] == [
        ("missing_field", "BTCUSDT", 0)]
    assert proc.counters["BTCUSDT"].rejected == {RejectReason.MISSING_FIELD: 1}
    assert_reconciled(proc)


def test_trade_without_symbol_is_rejected_not_raised():
    line = RAW.replace(b'"s":"BTCUSDT",', b"")
    proc, out = run([one(line)])
    assert [r.reason.value for r in out.rejects] == ["missing_field"]
    assert proc.counters[""].rejected == {RejectReason.MISSING_FIELD: 1}


def test_oversize_line_is_rejected_with_truncated_raw():
    long_line = RAW[:-1] + b',"pad":"' + b"x" * 5000 + b'"}'
    sb = decode_lines([RAW, long_line], "ws", 0, max_line_bytes=2048)
    assert sb.trades.trade_id.tolist() == [3735683259]
    assert [(r.reason.value, r.source_offset) for r in sb.rejects] == [("oversize", 1)]
    assert len(sb.rejects[0].raw) <= 4096


def test_chunking_does_not_change_decoded_trades():
    lines = (REAL / "btcusdt-trade-stream.jsonl").read_bytes().splitlines()[:500]
    whole = decode_lines(lines, "ws", 0).trades
    parts = [decode_lines(lines[i:i + 37], "ws", i).trades for i in range(0, 500, 37)]
    for col in ("trade_id", "price", "qty", "trade_time_us", "event_time_us",
                "is_buyer_maker", "offset"):
        joined = np.concatenate([getattr(p, col) for p in parts])
        assert np.array_equal(joined, getattr(whole, col)), col


def test_real_combined_stream_recording():
    lines = (REAL / "btcusdt-trade-stream.jsonl").read_bytes().splitlines()
    sb = decode_lines(lines, "ws", 0)
    b = sb.trades
    assert len(b) == 9757 and sb.rejects == [] and sb.ignored == {}
    assert b.trade_id[0] == 3735683259 and b.trade_id[-1] == 3735693015
    assert np.all(np.diff(b.trade_id) == 1)
    assert b.trade_time_us[0] == 1723161255342000
    assert b.price[0] == 61837.63 and b.qty[0] == 0.02


def test_real_hftbacktest_recording_counts_every_line():
    lines = gzip.decompress((REAL / "btcusdt-ws-raw-20240808.hftbacktest.gz").read_bytes())
    lines = lines.splitlines()
    assert len(lines) == 41249
    sb = decode_lines(lines, "ws", 0)
    assert len(sb.trades) == 9757
    assert sb.rejects == []
    # 28 040 bookTicker + 3 451 depth under BTCUSDT; the REST snapshot names no symbol
    assert sb.ignored == {"BTCUSDT": 31491, "": 1}
    skew_ms = (sb.trades.recv_time_us - sb.trades.trade_time_us) / 1000
    # the recorder's clock runs ~1.27 s behind the exchange
    assert -1400 < float(np.median(skew_ms)) < -1100
    proc, _out = run([sb], cfg=config(skew_s=5.0))
    c = proc.counters["BTCUSDT"]
    assert (c.received, c.accepted, c.ignored, c.rejected_total) == (41248, 9757, 31491, 0)
    assert_reconciled(proc)


def test_real_cryptofeed_capture_has_no_trades_and_loses_no_message():
    lines = (REAL / "cryptofeed-capture-2021-10-12.txt").read_bytes().splitlines()
    messages = [ln for ln in lines if ln[:1].isdigit()]
    assert len(messages) == 265
    sb = decode_lines(lines, "ws", 0)
    assert len(sb.trades) == 0
    assert sb.rejects == []
    assert sum(sb.ignored.values()) == 265
    assert sb.ignored == {"NKNUSDT": 226, "BLZETH": 11, "LRCBTC": 26, "RUNEEUR": 2}
