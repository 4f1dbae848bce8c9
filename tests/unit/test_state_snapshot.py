"""A processor restored from a snapshot goes on exactly as the uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cs_unit_helpers import assert_same_windows, comparable, counters_of

from cryptostream.model import DEFAULT_WINDOWS, SourceBatch
from cryptostream.processing.engine import EngineConfig, Output, Processor
from cryptostream.processing.state import restore, snapshot
from cryptostream.sources.replay import ReplayFile, ReplaySource

REAL = Path(__file__).parents[1] / "fixtures" / "real"
NOW_US = 1_900_000_000_000_000


def _batches(size: int = 1500) -> list[SourceBatch]:
    """The two recordings cut into batches of ``size`` trades, interleaved by time."""
    src = ReplaySource([ReplayFile.parse(str(REAL / "btcusdt-ws-raw-20240808.hftbacktest.gz")),
                        ReplayFile.parse(str(REAL / "ethusdt-ws-raw-20240808.hftbacktest.gz"))])
    parts = []
    for sb in src.batches():
        tb = sb.trades
        for i in range(0, len(tb), size):
            parts.append(SourceBatch(tb.take(np.arange(i, min(i + size, len(tb))))))
    return sorted(parts, key=lambda sb: int(sb.trades.trade_time_us[0]))


def _config() -> EngineConfig:
    return EngineConfig(windows=DEFAULT_WINDOWS, max_clock_skew_us=5_000_000,
                        gap_wait_us=30_000_000)


@pytest.mark.parametrize("cut", [1, 4, 9])
def test_snapshot_then_restore_gives_the_uninterrupted_result(cut):
    batches = _batches()
    assert len(batches) > cut
    whole = Processor(_config())
    want = Output()
    for sb in batches:
        want.extend(whole.process(sb, NOW_US))
    want.extend(whole.close(NOW_US))

    first = Processor(_config())
    got = Output()
    for sb in batches[:cut]:
        got.extend(first.process(sb, NOW_US))
    second = Processor(_config())
    restore(second, snapshot(first))
    for sb in batches[cut:]:
        got.extend(second.process(sb, NOW_US))
    got.extend(second.close(NOW_US))

    assert_same_windows(got, want, rel=0.0)
    assert comparable(got) == comparable(want)
    assert counters_of(second) == counters_of(whole)
    assert second.open_windows() == 0
