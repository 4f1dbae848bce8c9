"""Every ``Source`` implementation honours the same contract (see sources/base.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryptostream.model import NO_TIME, SourceBatch
from cryptostream.sources.base import Source
from cryptostream.sources.replay import ReplayFile, ReplaySource
from cryptostream.sources.simulator import SimulatorSource

REAL = Path(__file__).parents[1] / "fixtures" / "real"


def _replay_csv() -> Source:
    return ReplaySource([ReplayFile.parse(str(REAL / "BTCUSDT-trades-2024-08-08.csv"))])


def _replay_ws_raw() -> Source:
    return ReplaySource([ReplayFile.parse(str(REAL / "ethusdt-ws-raw-20240808.hftbacktest.gz"))])


def _replay_paced() -> Source:
    return ReplaySource(
        [ReplayFile.parse(str(REAL / "BTCUSDT-trades-2025-01-01-first210.csv"))], speed=1000.0
    )


def _simulator() -> Source:
    return SimulatorSource(["BTCUSDT", "ETHUSDT"], seed=3, duration_s=120)


def _binance_live(fake_binance) -> Source:
    """The live source against a fresh stand-in (its clock starts at the subscription)."""
    from cryptostream.sources.binance import BinanceSource

    fake = fake_binance([REAL / "btcusdt-trade-stream.jsonl", REAL / "ethusdt-trade-stream.jsonl"],
                        speed=20.0)
    return BinanceSource(["BTCUSDT", "ETHUSDT"], ws_url=fake.ws_url, rest_url=fake.rest_url,
                         duration_s=3.0)


SOURCES = {
    "replay-csv": _replay_csv,
    "replay-ws-raw": _replay_ws_raw,
    "replay-paced": _replay_paced,
    "simulator": _simulator,
    "binance-live": _binance_live,
}
#: live sources do not replay the same trades twice: what arrives depends on when
REPRODUCIBLE = {"replay-csv", "replay-ws-raw", "replay-paced", "simulator"}


@pytest.fixture(params=sorted(SOURCES))
def make_source(request):
    factory = SOURCES[request.param]
    if request.param == "binance-live":
        fake_binance = request.getfixturevalue("fake_binance")
        return lambda: factory(fake_binance)
    return factory


def test_is_a_source(make_source):
    src = make_source()
    assert isinstance(src, Source)
    assert isinstance(src.finite, bool)
    assert src.speed is None or src.speed > 0
    st = src.status()
    assert st.state in ("connecting", "replay", "simulated")  # nothing started yet
    assert src.catching_up() in (True, False)


def test_batches_are_well_formed_columns(make_source):
    src = make_source()
    total = 0
    for sb in src.batches():
        assert isinstance(sb, SourceBatch)
        b = sb.trades
        n = len(b)
        for name in ("trade_id", "price", "qty", "trade_time_us", "event_time_us",
                     "recv_time_us", "is_buyer_maker", "offset", "status"):
            col = getattr(b, name)
            assert isinstance(col, np.ndarray) and len(col) == n, name
        assert b.trade_id.dtype == np.int64 and b.trade_time_us.dtype == np.int64
        assert b.price.dtype == np.float64 and b.qty.dtype == np.float64
        assert isinstance(b.symbol, str) or len(b.symbol) == n
        if b.raw is not None:
            assert len(b.raw) == n
        # times are microseconds since the epoch (2010..2100), never milliseconds
        valid = b.status == 0
        assert np.all(b.trade_time_us[valid] > 1_262_304_000_000_000)
        assert np.all((b.recv_time_us == NO_TIME) | (b.recv_time_us > 1_262_304_000_000_000))
        total += n
    assert total > 0
    src.close()


def test_close_is_idempotent_and_stops_iteration(make_source):
    src = make_source()
    it = iter(src.batches())
    first = next(it)
    assert len(first.trades) > 0
    src.close()
    src.close()
    assert sum(1 for _ in it) <= 1  # at most the batch already in flight


@pytest.mark.parametrize("name", sorted(REPRODUCIBLE))
def test_same_source_twice_gives_same_trades(name):
    make_source = SOURCES[name]

    def ids(src):
        return np.concatenate([sb.trades.trade_id for sb in src.batches()])

    assert np.array_equal(ids(make_source()), ids(make_source()))


def test_missing_file_is_a_clear_error(tmp_path):
    from cryptostream.errors import SourceError

    with pytest.raises(SourceError, match="no such file"):
        ReplaySource([ReplayFile.parse(f"BTCUSDT={tmp_path / 'nope.csv'}")])
