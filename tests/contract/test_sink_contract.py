"""Every ``Sink`` honours the same contract: idempotent upserts, flush, close (sinks/base.py)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from cryptostream.model import DEFAULT_WINDOWS
from cryptostream.processing.engine import EngineConfig, Output, Processor
from cryptostream.sinks.base import Sink, stats_rows
from cryptostream.sinks.duckdb_sink import DuckDBSink
from cryptostream.sources.replay import ReplayFile, ReplaySource

REAL = Path(__file__).parents[1] / "fixtures" / "real"
TABLES = ("trades", "agg_1m", "agg_5m_1m", "rejects", "gaps", "pipeline_stats")


def _processed(speed_now: int = 1_900_000_000_000_000) -> tuple[Output, list[dict]]:
    proc = Processor(EngineConfig(windows=DEFAULT_WINDOWS, max_clock_skew_us=5_000_000))
    out = Output()
    src = ReplaySource([ReplayFile.parse(str(REAL / "btcusdt-ws-raw-20240808.hftbacktest.gz"))])
    for sb in src.batches():
        out.extend(proc.process(sb, speed_now))
    out.extend(proc.close(speed_now))
    return out, stats_rows("run-1", speed_now, speed_now, "test", proc.counters)


@pytest.fixture(scope="module")
def processed():
    return _processed()


def _duckdb_sink(tmp_path: Path) -> DuckDBSink:
    return DuckDBSink(tmp_path / "c.duckdb", DEFAULT_WINDOWS)


SINKS = {"duckdb": _duckdb_sink}


@pytest.fixture(params=sorted(SINKS))
def make_sink(request):
    return SINKS[request.param]


def _snapshot(path: Path) -> dict[str, list]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {t: con.sql(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}
    finally:
        con.close()


def test_is_a_sink(make_sink, tmp_path):
    assert isinstance(make_sink(tmp_path), Sink)


def test_write_twice_is_idempotent(make_sink, tmp_path, processed):
    out, stats = processed
    sink = make_sink(tmp_path)
    sink.open()
    sink.write(out, stats, 1)
    sink.flush()
    sink.close()
    first = _snapshot(tmp_path / "c.duckdb")
    assert len(first["trades"]) == 9757
    assert len(first["agg_1m"]) == 7
    sink = make_sink(tmp_path)
    sink.open()
    sink.write(out, stats, 2)
    sink.close()
    assert _snapshot(tmp_path / "c.duckdb") == first


def test_close_is_idempotent(make_sink, tmp_path):
    sink = make_sink(tmp_path)
    sink.open()
    sink.close()
    sink.close()


def test_a_failed_write_leaves_nothing_half_written(make_sink, tmp_path, processed):
    out, stats = processed
    sink = make_sink(tmp_path)
    sink.open()
    broken = Output(trades=out.trades, windows={"agg_1m": out.windows["agg_1m"],
                                                "no_such_table": out.windows["agg_1m"]})
    with pytest.raises(KeyError):
        sink.write(broken, stats, 1)
    sink.close()
    snap = _snapshot(tmp_path / "c.duckdb")
    assert snap["trades"] == [] and snap["agg_1m"] == []
