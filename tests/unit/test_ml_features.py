"""Window features and kline inputs: no look-ahead, no train/serve skew, real-file quirks."""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cryptostream.errors import SourceError
from cryptostream.ml.features import (
    FEATURES,
    ROBUST_MIN,
    Bars,
    FeatureState,
    compute,
    next_log_return,
    robust_z,
)
from cryptostream.ml.klines import load_inputs, read_klines, symbol_from_name

KLINES = Path(__file__).parents[1] / "fixtures" / "real" / "klines"
BTC25 = KLINES / "binance-spot-BTCUSDT-1m-2025-08-01_to_2025-08-05.csv.gz"
BTC21 = KLINES / "binance-spot-BTCUSDT-1m-2021-04-24_to_2021-04-27.csv.gz"
ETH_GZ = KLINES / "binance-spot-ETHUSDT-1m-2022-08-14.csv.gz"
ETH_ZIP = KLINES / "ETHUSDT-1m-2022-08-14.original.zip"


@pytest.fixture(scope="module")
def btc() -> Bars:
    return read_klines(str(BTC25)).bars


def test_no_feature_uses_the_future(btc):
    """Row t of the features is the same whether or not the rows after t exist."""
    full = compute(btc)
    for t in (0, 1, 4, 9, 10, 11, 30, 31, 500, 3490, len(btc) - 2):
        cut = compute(btc.take(slice(0, t + 1)))
        for name in FEATURES:
            np.testing.assert_array_equal(cut[name][t], full[name][t], err_msg=f"{name} row {t}")


def test_changing_the_future_leaves_the_past_alone(btc):
    later = btc.take(np.arange(len(btc)))
    later.close[2000:] *= 3.0
    later.volume[2000:] *= 50.0
    a, b = compute(btc), compute(later)
    for name in FEATURES:
        np.testing.assert_array_equal(a[name][:2000], b[name][:2000], err_msg=name)


def test_live_features_equal_the_training_features(btc):
    """The live stage pushes one window at a time into a FeatureState that keeps only a
    short tail; every feature must equal the batch computation over the whole history."""
    part = btc.take(slice(0, 400))
    batch = compute(part)
    state = FeatureState("BTCUSDT")
    for i in range(len(part)):
        ((start, x),) = state.push(part.take(slice(i, i + 1)))
        assert start == part.start_ms[i]
        for name in FEATURES:
            want = batch[name][i]
            if np.isnan(want):
                assert np.isnan(x[name]), (name, i)
            else:
                assert x[name] == pytest.approx(want, rel=1e-12, abs=1e-15), (name, i)
    assert state.push(part.take(slice(10, 11))) == []  # a re-emitted old window is ignored


def test_vwap_and_target_are_quote_volume_over_volume(btc):
    f = compute(btc)
    np.testing.assert_allclose(f["vwap"], btc.quote_volume / btc.volume, rtol=1e-15)
    y = next_log_return(btc)
    assert y[0] == pytest.approx(np.log(f["vwap"][1] / f["vwap"][0]))
    assert np.isnan(y[-1])


def test_robust_z_needs_history_and_survives_flat_minutes():
    flat = np.concatenate([np.full(30, 8.8e-6), [3.26e-2]])
    z = robust_z(np.log(flat), floor=0.05)
    assert np.isnan(z[ROBUST_MIN - 1]) and z[ROBUST_MIN] == 0.0
    assert z[-1] == pytest.approx(100.0)  # clipped, not 1e6
    # the z-score of a volume burst is large and positive, of a drought large and negative
    rng = np.random.default_rng(1)
    vol = rng.lognormal(2.0, 0.3, 200)
    vol[150], vol[170] = vol[150] * 10, vol[170] * 0.02
    z = robust_z(np.log(vol), floor=0.05)
    assert z[150] > 5 and z[170] < -5
    assert np.nanmax(np.abs(np.delete(z, [150, 170]))) < 5


def test_kline_files_plain_gz_zip_header_or_not_give_the_same_bars(tmp_path):
    gz = read_klines(str(ETH_GZ)).bars
    zp = read_klines(str(ETH_ZIP)).bars
    assert gz.symbol == zp.symbol == "ETHUSDT" and len(gz) == len(zp) == 1440
    for col in ("start_ms", "open", "high", "low", "close", "volume", "quote_volume",
                "trade_count", "buy_volume"):
        np.testing.assert_array_equal(getattr(gz, col), getattr(zp, col), err_msg=col)
    plain = tmp_path / "data.csv"
    plain.write_text(gzip.decompress(ETH_GZ.read_bytes()).decode())
    same = read_klines(f"ETHUSDT={plain}").bars
    np.testing.assert_array_equal(same.close, gz.close)
    # 2025+ official files write open_time in microseconds
    lines = gzip.decompress(ETH_GZ.read_bytes()).decode().splitlines()[1:4]
    us = tmp_path / "ETHUSDT-1m-2025-01-01.csv"
    us.write_text("\n".join(",".join([str(int(r.split(",")[0]) * 1000), *r.split(",")[1:]])
                            for r in lines) + "\n")
    np.testing.assert_array_equal(read_klines(str(us)).bars.start_ms, gz.start_ms[:3])


def test_bad_rows_are_counted_and_skipped(tmp_path):
    lines = gzip.decompress(ETH_GZ.read_bytes()).decode().splitlines()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ETHUSDT-1m-2022-08-14.csv",
                    "\n".join([lines[1], "garbage", lines[2] + ",", "1,2", "", lines[3]]) + "\n")
    path = tmp_path / "ETHUSDT-1m-2022-08-14.zip"
    path.write_bytes(buf.getvalue())
    k = read_klines(str(path))
    assert (len(k.bars), k.bad_rows, k.rows) == (3, 2, 5)


def test_the_real_exchange_halt_stays_a_gap():
    b = read_klines(str(BTC21)).bars
    gaps = np.diff(b.start_ms) // 60_000
    assert len(b) == 5476 and gaps.max() == 285 and (gaps > 1).sum() == 1


def test_symbols_come_from_the_name_or_the_spec(tmp_path):
    assert symbol_from_name("binance-spot-BTCUSDT-1m-2025-08-01_to_2025-08-05.csv.gz") == "BTCUSDT"
    assert symbol_from_name("ETHUSDT-1m-2022-08-14.zip") == "ETHUSDT"
    nameless = tmp_path / "history.csv"
    nameless.write_text(gzip.decompress(ETH_GZ.read_bytes()).decode())
    with pytest.raises(SourceError, match="SYMBOL="):
        read_klines(str(nameless))
    merged = load_inputs([str(BTC21), str(BTC25), f"SOLUSDT={nameless}"])
    assert sorted(merged) == ["BTCUSDT", "SOLUSDT"]
    assert len(merged["BTCUSDT"]) == 5476 + 7200
    assert np.all(np.diff(merged["BTCUSDT"].start_ms) > 0)
