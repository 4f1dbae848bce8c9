"""Reading official data.binance.vision trade files: layout, ms vs µs, header, archives,
malformed rows."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cs_unit_helpers import assert_reconciled, run

from cryptostream.errors import SourceError
from cryptostream.model import NO_TIME, RejectReason
from cryptostream.sources.trade_csv import read_trade_csv, symbol_from_filename

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"


def read_all(path, symbol="BTCUSDT", **kw):
    sbs = list(read_trade_csv(path, symbol, "csv", **kw))
    ids = [int(i) for sb in sbs for i in sb.trades.trade_id.tolist()]
    times = [int(t) for sb in sbs for t in sb.trades.trade_time_us.tolist()]
    rejects = [(r.reason.value, r.source_offset) for sb in sbs for r in sb.rejects]
    return sbs, ids, times, rejects


def test_real_ms_file_fields():
    sbs, ids, times, rejects = read_all(REAL / "BTCUSDT-trades-2024-08-08.csv")
    assert len(ids) == 9757 and rejects == []
    assert ids[0] == 3735683259 and ids[-1] == 3735693015
    # first row: 3735683259,61837.63000000,0.02000000,1236.75260000,1723161255342,True,True
    b = sbs[0].trades
    assert times[0] == 1723161255342 * 1000
    assert (b.price[0], b.qty[0], bool(b.is_buyer_maker[0])) == (61837.63, 0.02, True)
    assert b.symbol_at(0) == "BTCUSDT"
    assert b.recv_time_us[0] == NO_TIME
    assert times[-1] == 1723161601271 * 1000  # 2024-08-09T00:00:01.271Z


def test_real_us_file_times_are_not_scaled():
    _sbs, ids, times, rejects = read_all(REAL / "BTCUSDT-trades-2025-01-01-first210.csv")
    assert len(ids) == 210 and rejects == []
    # first row time 1735689600010866 µs = 2025-01-01T00:00:00.010866Z
    assert times[0] == 1735689600010866
    assert times[-1] == 1735689605493431
    # 46 trades share one microsecond: kept as separate trades
    assert times.count(1735689605127888) == 46


@pytest.mark.parametrize(
    ("time_field", "expected_us"),
    [("1723161255342", 1723161255342000), ("1735689600010866", 1735689600010866)],
    ids=["ms", "us"],
)
def test_unit_detection(tmp_path, time_field, expected_us):
    p = tmp_path / "x.csv"
    p.write_text(f"1,100.0,1.0,100.0,{time_field},False,True\n")
    _, _, times, _ = read_all(p)
    assert times == [expected_us]


def test_header_line_is_skipped(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("id,price,qty,quote_qty,time,is_buyer_maker,is_best_match\n"
                 "1,100.0,1.0,100.0,1723161255342,False,True\n"
                 "2,101.0,2.0,202.0,1723161255343,True,True\n")
    sbs, ids, _times, rejects = read_all(p)
    assert ids == [1, 2] and rejects == []
    assert sbs[0].trades.is_buyer_maker.tolist() == [False, True]


@pytest.mark.parametrize("kind", ["zip", "gz"])
def test_archives_are_read(tmp_path, kind):
    src = (REAL / "BTCUSDT-trades-2025-01-01-first210.csv").read_bytes()
    if kind == "zip":
        p = tmp_path / "BTCUSDT-trades-2025-01-01.zip"
        with zipfile.ZipFile(p, "w") as zf:
            zf.writestr("BTCUSDT-trades-2025-01-01.csv", src)
    else:
        p = tmp_path / "BTCUSDT-trades-2025-01-01.csv.gz"
        p.write_bytes(gzip.compress(src))
    _, ids, times, rejects = read_all(p)
    assert len(ids) == 210 and times[0] == 1735689600010866 and rejects == []


def test_symbol_from_official_file_names():
    assert symbol_from_filename("/d/BTCUSDT-trades-2024-08-08.csv") == "BTCUSDT"
    assert symbol_from_filename("ETHUSDT-trades-2025-01.zip") == "ETHUSDT"
    assert symbol_from_filename("trades.csv") is None


def test_missing_file_raises_source_error(tmp_path):
    with pytest.raises(SourceError):
        list(read_trade_csv(tmp_path / "nope.csv", "BTCUSDT", "csv"))


def test_malformed_rows_become_rejects_and_good_rows_are_kept(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text(
        "1,100.0,1.0,100.0,1723161601000,False,True\n"  # 0 good
        "2,abc,1.0,100.0,1723161602000,False,True\n"  # 1 text in price -> bad_type
        "3,100.0,1.0,100.0,1723161603000,True,True\n"  # 2 good
        "4,100.0,1.0\n"  # 3 short row -> missing_field
        "5,100.0,1.0,100.0,1723161605000,maybe,True\n"  # 4 not a boolean -> bad_type
        "6,100.0,1.0,100.0,17231616x6000,False,True\n"  # 5 text in time -> bad_type
        "7,101.0,2.0,202.0,1723161607000,False,True\n"  # 6 good
    )
    sbs, ids, times, rejects = read_all(p)
    assert ids == [1, 3, 7]
    assert times == [1723161601000000, 1723161603000000, 1723161607000000]
    assert sorted(rejects) == [("bad_type", 1), ("bad_type", 4), ("bad_type", 5),
                               ("missing_field", 3)]
    proc, _out = run(sbs)
    c = proc.counters["BTCUSDT"]
    assert (c.received, c.accepted) == (7, 3)
    assert c.rejected == {RejectReason.BAD_TYPE: 3, RejectReason.MISSING_FIELD: 1}
    assert_reconciled(proc)
    # the reject keeps the raw row so it can be inspected
    raw = {r.source_offset: r.raw for sb in sbs for r in sb.rejects}
    assert raw[1].startswith("2,abc,1.0")


def test_values_that_parse_but_are_invalid_are_rejected_by_the_processor(tmp_path):
    p = tmp_path / "vals.csv"
    p.write_text(
        "1,100.0,1.0,100.0,1723161601000,False,True\n"
        "2,0,1.0,0,1723161602000,False,True\n"
        "3,100.0,-1.0,-100.0,1723161603000,False,True\n"
        "4,nan,1.0,0,1723161604000,False,True\n"
        "5,100.0,1.0,100.0,1723161605000,False,True\n"
    )
    proc, out = run(list(read_trade_csv(p, "BTCUSDT", "csv")))
    assert sorted((r.reason.value, r.trade_id) for r in out.rejects) == [
        ("non_finite", 4), ("non_positive_price", 2), ("non_positive_qty", 3)]
    assert proc.counters["BTCUSDT"].accepted == 2


def _rows(n: int) -> list[str]:
    return [f"{i},{100 + i}.5,0.{i:02d},0,{1723161600000 + i * 1000},False,True"
            for i in range(1, n + 1)]


def test_malformed_row_in_a_later_block_loses_and_repeats_nothing(tmp_path):
    rows = _rows(20)
    rows[15] = "16,abc,0.1,0,1723161615000,True,True"
    p = tmp_path / "blocks.csv"
    p.write_text("\n".join(rows) + "\n")
    _, ids, _, rejects = read_all(p, block_size=128)
    assert ids == [i for i in range(1, 21) if i != 16]
    assert rejects == [("bad_type", 15)]


def test_blank_line_before_a_malformed_row_in_a_later_block(tmp_path):
    rows = _rows(20)
    rows[15] = "16,abc,0.1,0,1723161615000,True,True"
    rows.insert(3, "")
    p = tmp_path / "blank.csv"
    p.write_text("\n".join(rows) + "\n")
    _, ids, _, rejects = read_all(p, block_size=128)
    # every good row exactly once, the bad one rejected
    assert ids == [i for i in range(1, 21) if i != 16]
    assert [r for r, _ in rejects] == ["bad_type"]
    proc, _ = run(list(read_trade_csv(p, "BTCUSDT", "csv", block_size=128)))
    c = proc.counters["BTCUSDT"]
    assert (c.received, c.accepted, c.duplicates) == (20, 19, 0)


def test_read_in_many_blocks_equals_one_block():
    path = REAL / "ETHUSDT-trades-2024-08-08.csv"
    one = list(read_trade_csv(path, "ETHUSDT", "csv"))
    many = list(read_trade_csv(path, "ETHUSDT", "csv", block_size=16 << 10))
    assert len(many) > 5
    for col in ("trade_id", "price", "qty", "trade_time_us", "is_buyer_maker", "offset"):
        a = np.concatenate([getattr(sb.trades, col) for sb in one])
        b = np.concatenate([getattr(sb.trades, col) for sb in many])
        assert np.array_equal(a, b), col
    assert len(np.concatenate([sb.trades.trade_id for sb in many])) == 6106


def test_zip_and_gzip_archives_read_like_the_plain_file(tmp_path):
    """Official downloads come as .zip; .csv.gz is common too: both read like the CSV."""
    from cryptostream.sources.replay import ReplayFile, ReplaySource

    plain = Path(__file__).parents[1] / "fixtures" / "real" / "BTCUSDT-trades-2024-08-08.csv"
    zipped = tmp_path / "BTCUSDT-trades-2024-08-08.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(plain, plain.name)
    gz = tmp_path / "BTCUSDT-trades-2024-08-08.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))

    def trades(path):
        src = ReplaySource([ReplayFile.parse(str(path))])  # symbol from the official name
        got = [sb.trades for sb in src.batches()]
        return [(b.symbol, b.trade_id.tolist(), b.price.tolist(), b.trade_time_us.tolist())
                for b in got]

    expected = trades(plain)
    assert sum(len(ids) for _, ids, _, _ in expected) == 9757
    assert trades(zipped) == expected
    assert trades(gz) == expected
