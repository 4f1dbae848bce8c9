"""Malformed input never raises and every line is accounted for with a stable reason.

Fixture: ``tests/fixtures/bad/malformed.jsonl`` (one case per line, see the README there)
plus a 10 MB line generated into ``tmp_path``; ``BTCUSDT-trades-malformed.csv`` for the CSV
reader.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from cs_unit_helpers import NOW_US, assert_reconciled, config, run

from cryptostream.model import RejectReason
from cryptostream.processing.engine import Output, Processor
from cryptostream.sources.binance_messages import decode_lines
from cryptostream.sources.replay import ReplayFile, ReplaySource
from cryptostream.sources.trade_csv import read_trade_csv


@pytest.fixture(autouse=True, params=["msgspec", "columnar"])
def _decoder(request, monkeypatch):
    """Every test here runs with both decoders: msgspec (live) and DuckDB (replay chunks)."""
    if request.param == "columnar":
        from cs_unit_helpers import columnar_decode_lines

        monkeypatch.setitem(globals(), "decode_lines", columnar_decode_lines)
    return request.param


BAD = Path(__file__).resolve().parents[1] / "fixtures" / "bad"
JSONL = BAD / "malformed.jsonl"
CSV = BAD / "BTCUSDT-trades-malformed.csv"

#: line -> expected reject reason (lines not listed are accepted, ignored or duplicates)
EXPECTED_REJECTS = {
    1: "decode_error",
    2: "bad_type",
    4: "non_positive_qty",
    5: "non_positive_price",
    6: "non_finite",
    7: "missing_field",
    8: "missing_field",
    12: "bad_symbol",
    15: "decode_error",
    16: "bad_type",
    17: "non_finite",
    18: "non_positive_price",
    19: "bad_type",
}
ACCEPTED = {"BTCUSDT": [1, 3, 15], "ETHUSDT": [500]}
IGNORED = {"BTCUSDT": 2, "": 3}  # bookTicker + depth; snapshot, {} and [1,2,3]
DUPLICATES = {"BTCUSDT": 1}


def fixture_lines() -> list[bytes]:
    lines = JSONL.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    assert len(lines) == 23
    return lines


def process_lines(lines: list[bytes], max_line_bytes: int | None = None):
    kw = {} if max_line_bytes is None else {"max_line_bytes": max_line_bytes}
    sb = decode_lines(lines, "bad", 0, **kw)
    return run([sb], cfg=config(skew_s=5.0))


def _accepted(out: Output) -> dict[str, list[int]]:
    got: dict[str, list[int]] = {}
    for a in out.trades:
        got.setdefault(a.symbol, []).extend(int(i) for i in a.trade_id.tolist())
    return {k: sorted(v) for k, v in got.items()}


def test_every_line_is_accounted_for():
    proc, _out = process_lines(fixture_lines())
    assert_reconciled(proc)
    total = sum(c.received for c in proc.counters.values())
    assert total == 23
    assert sum(c.accepted for c in proc.counters.values()) == 4
    assert sum(c.ignored for c in proc.counters.values()) == 5
    assert sum(c.duplicates for c in proc.counters.values()) == 1
    assert sum(c.rejected_total for c in proc.counters.values()) == len(EXPECTED_REJECTS)


def test_each_bad_line_has_its_stable_reason_code():
    _proc, out = process_lines(fixture_lines())
    got = {r.source_offset: r.reason.value for r in out.rejects}
    assert got == EXPECTED_REJECTS
    # reason codes are the stable strings of the contract
    assert {r.reason for r in out.rejects} <= set(RejectReason)


def test_good_lines_are_accepted_including_a_convertible_numeric_string():
    proc, out = process_lines(fixture_lines())
    assert _accepted(out) == ACCEPTED
    assert proc.counters["BTCUSDT"].duplicates == 1


def test_counts_per_symbol():
    proc, _out = process_lines(fixture_lines())
    btc = proc.counters["BTCUSDT"]
    # lines 0-10, 16-19, 21, 22 name BTCUSDT: 17 received
    assert (btc.received, btc.accepted, btc.ignored, btc.duplicates) == (17, 3, 2, 1)
    assert btc.rejected == Counter({
        RejectReason.DECODE_ERROR: 1, RejectReason.BAD_TYPE: 3,
        RejectReason.NON_POSITIVE_QTY: 1, RejectReason.NON_POSITIVE_PRICE: 2,
        RejectReason.NON_FINITE: 2, RejectReason.MISSING_FIELD: 2,
    })
    unknown = proc.counters[""]
    # snapshot, {}, [1,2,3] ignored; lowercase symbol and binary garbage rejected
    assert (unknown.received, unknown.ignored) == (5, 3)
    assert unknown.rejected == Counter({RejectReason.BAD_SYMBOL: 1,
                                        RejectReason.DECODE_ERROR: 1})
    eth = proc.counters["ETHUSDT"]
    assert (eth.received, eth.accepted) == (1, 1)


def test_rejects_keep_the_raw_line():
    lines = fixture_lines()
    _proc, out = process_lines(lines)
    assert out.rejects
    for r in out.rejects:
        assert r.raw == lines[r.source_offset].decode("utf-8", "replace"), r.source_offset


def test_bad_lines_do_not_touch_the_windows():
    _proc, out = process_lines(fixture_lines())
    rows = [w for w in out.windows["agg_1m"] if w["symbol"] == "BTCUSDT"]
    assert len(rows) == 1
    w = rows[0]
    # ids 1, 3 at 61837.63 and id 15 at 61840.00, qty 0.02 each
    assert (w["trade_count"], w["first_trade_id"], w["last_trade_id"]) == (3, 1, 15)
    assert (w["high"], w["low"], w["close"]) == (61840.0, 61837.63, 61840.0)
    assert w["volume"] == pytest.approx(0.06, rel=1e-12)


def test_ten_megabyte_line_is_oversize_and_the_rest_still_counts(tmp_path):
    lines = fixture_lines()
    huge = b'{"e":"trade","s":"BTCUSDT","t":99,"pad":"' + b"x" * (10 * 1024 * 1024) + b'"}'
    path = tmp_path / "with-huge-line.jsonl"
    path.write_bytes(b"\n".join(lines[:10] + [huge] + lines[10:]) + b"\n")
    all_lines = path.read_bytes().split(b"\n")[:-1]
    assert len(all_lines) == 24
    proc, out = process_lines(all_lines)
    assert_reconciled(proc)
    assert sum(c.received for c in proc.counters.values()) == 24
    oversize = [r for r in out.rejects if r.reason is RejectReason.OVERSIZE]
    assert [r.source_offset for r in oversize] == [10]
    assert len(oversize[0].raw) <= 4096  # the stored payload is truncated
    # the other lines keep their outcome (offsets after the huge line shift by one)
    shifted = {(k + 1 if k >= 10 else k): v for k, v in EXPECTED_REJECTS.items()}
    shifted[10] = "oversize"
    assert {r.source_offset: r.reason.value for r in out.rejects} == shifted
    assert _accepted(out) == ACCEPTED


def test_replay_source_end_to_end_accounts_for_every_line(tmp_path):
    lines = fixture_lines()
    huge = b'{"e":"trade","s":"BTCUSDT","t":99,"pad":"' + b"y" * (10 * 1024 * 1024) + b'"}'
    path = tmp_path / "replay.jsonl"
    path.write_bytes(b"\n".join(lines + [huge]) + b"\n")
    src = ReplaySource([ReplayFile(path, None)])
    proc = Processor(config(skew_s=5.0))
    out = Output()
    for sb in src.batches():
        out.extend(proc.process(sb, NOW_US))
    out.extend(proc.close(NOW_US))
    assert_reconciled(proc)
    assert sum(c.received for c in proc.counters.values()) == 24
    assert Counter(r.reason.value for r in out.rejects) == Counter(
        [*EXPECTED_REJECTS.values(), "oversize"])
    assert _accepted(out) == ACCEPTED


def test_chunked_decoding_gives_the_same_accounting():
    lines = fixture_lines()
    proc = Processor(config(skew_s=5.0))
    out = Output()
    for i in range(0, len(lines), 4):
        out.extend(proc.process(decode_lines(lines[i:i + 4], "bad", i), NOW_US))
    out.extend(proc.close(NOW_US))
    assert_reconciled(proc)
    assert {r.source_offset: r.reason.value for r in out.rejects} == EXPECTED_REJECTS
    assert _accepted(out) == ACCEPTED


def test_trade_message_without_symbol_does_not_raise():
    lines = [b'{"e":"trade"}',
             b'{"e":"trade","E":1,"t":1,"p":"1","q":"1","T":1723161601000,"m":true}']
    proc, out = process_lines(lines)
    assert [r.reason.value for r in out.rejects] == ["missing_field", "missing_field"]
    assert_reconciled(proc)


def test_malformed_trade_csv():
    sbs = list(read_trade_csv(CSV, "BTCUSDT", "csv"))
    proc, out = run(sbs)
    assert sorted((r.source_offset, r.reason.value) for r in out.rejects) == [
        (2, "bad_type"), (3, "missing_field"), (5, "bad_type")]
    assert _accepted(out) == {"BTCUSDT": [3735683259, 3735683260, 3735683263, 3735683265]}
    c = proc.counters["BTCUSDT"]
    assert (c.received, c.accepted, c.rejected_total) == (7, 4, 3)
    assert_reconciled(proc)
