"""Retention: `--retain-trades-days` prunes raw trades from the store and the lake, never
windows; without it every trade stays."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.integration

SIM = ("--source", "simulate", "--symbols", "BTCUSDT,ETHUSDT", "--seed", "5", "--duration", "3h",
       "--speed", "max", "--no-ml")


def _store(cs, db):
    with cs.connect_ro(db) as con:
        trades = con.execute("SELECT symbol, count(*), epoch_ms(min(trade_time)), "
                             "epoch_ms(max(trade_time)) FROM trades GROUP BY 1 ORDER BY 1"
                             ).fetchall()
        windows = con.execute("SELECT count(*), sum(trade_count) FROM agg_1m").fetchone()
    return trades, windows


def test_old_trades_are_pruned_and_windows_kept(cs, tmp_path):
    keep, full = tmp_path / "keep", tmp_path / "full"
    for ws, extra in ((keep, ("--retain-trades-days", "0.05")), (full, ())):  # 0.05 d = 72 min
        ws.mkdir()
        cs.run_cli("run", *SIM, "--db", ws / "s.duckdb", "--lake", ws / "lake", *extra, cwd=ws)
    trades, windows = _store(cs, keep / "s.duckdb")
    all_trades, all_windows = _store(cs, full / "s.duckdb")
    assert windows == all_windows  # every window stays, with every trade counted
    assert all_windows[1] == sum(n for _, n, _, _ in all_trades)
    for (sym, n, lo, hi), (_, n_all, lo_all, hi_all) in zip(trades, all_trades, strict=True):
        assert hi == hi_all and lo_all < lo, sym
        assert hi - lo <= 72 * 60_000 and hi - lo > 70 * 60_000, sym  # what is kept
        assert n < n_all / 2
    # the lake keeps only the hours still inside the retention, and every window file
    lake_trades = sorted((keep / "lake" / "trades").rglob("*.parquet"))
    all_lake_trades = sorted((full / "lake" / "trades").rglob("*.parquet"))
    assert 0 < len(lake_trades) < len(all_lake_trades)
    assert len(list((keep / "lake" / "agg_1m").rglob("*.parquet"))) == \
        len(list((full / "lake" / "agg_1m").rglob("*.parquet")))
    in_lake = sum(pq.read_metadata(p).num_rows for p in lake_trades)
    assert in_lake == sum(n for _, n, _, _ in trades)
