"""``cryptostream record`` writes what the stream sent, in a form the replay source reads."""

from __future__ import annotations

import gzip
import re

import pytest

pytestmark = pytest.mark.integration


def test_a_recording_replays_to_the_trades_the_stream_sent(cs, workspace, fake_binance):
    fake = fake_binance([cs.real.btc_jsonl, cs.real.eth_jsonl], speed=60.0)
    out = workspace.root / "capture.jsonl.gz"
    proc = cs.run_cli("record", "--symbols", "BTCUSDT,ETHUSDT", "--out", out,
                      "--binance-url", fake.ws_url, "--duration", "8", cwd=workspace.root, timeout=60)
    assert fake.finished
    assert "wrote" in proc.stderr
    with gzip.open(out, "rb") as f:
        lines = f.read().splitlines()
    # every line is "<receive time ns> <message exactly as sent>"
    assert all(re.match(rb"^\d{19} \{\"stream\":\"(btc|eth)usdt@trade\",\"data\":\{", x) for x in lines)
    assert len(lines) == fake.stats.trade_messages_sent

    # recorded trade times (2024) with today's receive times: the skew check must be off
    cs.run_cli(*cs.replay_args(workspace.db, workspace.lake, out), "--max-clock-skew", "0",
               cwd=workspace.root)
    with cs.connect_ro(workspace.db) as con:
        stored = con.execute("SELECT symbol, count(*), min(trade_id), max(trade_id) FROM trades "
                             "GROUP BY 1 ORDER BY 1").fetchall()
        recv = con.execute("SELECT count(*) FROM trades WHERE recv_time IS NULL").fetchone()[0]
    want = [(s, len(fake.trades(s)), fake.trades(s)[0].id, fake.trades(s)[-1].id)
            for s in ("BTCUSDT", "ETHUSDT")]
    assert stored == want
    assert recv == 0  # the recorded receive times came through
